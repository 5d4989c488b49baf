# The two commands of the README:
#   make run   create the environment, simulate data, train, serve on http://127.0.0.1:8020
#   make test  install what the tests need and run lint, types and the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ROWS ?= 100000
PORT ?= 8020

.PHONY: run test install install-dev simulate train serve lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .

install-dev: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[dev,bench]"

simulate: install
	$(BIN)/banditrec simulate --rows $(ROWS) --out data/bandit_simulated.csv

train: simulate
	$(BIN)/banditrec train --data data/bandit_simulated.csv --model data/linucb_model.npz

serve:
	$(BIN)/banditrec serve --model data/linucb_model.npz --port $(PORT)

run: train
	$(MAKE) serve

lint: install-dev
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

test: install-dev lint
	$(BIN)/pytest

bench: install-dev
	$(BIN)/python -m benchmarks.bench_speed

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache .hypothesis
