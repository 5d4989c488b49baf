# The two commands of the README:
#   make run   create the environment, simulate data, train, serve on http://127.0.0.1:8020
#              and show simulated traffic learning live
#   make test  install what the tests need and run lint, types and the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ROWS ?= 100000
PORT ?= 8020
TRAFFIC_SECONDS ?= 60

.PHONY: run test install install-dev simulate train serve lint bench bench-http clean

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

# Serve in the background, show simulated traffic learning live for a minute, then keep
# serving in the foreground until Ctrl-C.
run: train
	@$(BIN)/banditrec serve --model data/linucb_model.npz --port $(PORT) --no-access-log & \
	server=$$!; \
	$(BIN)/banditrec traffic --url http://127.0.0.1:$(PORT) --duration $(TRAFFIC_SECONDS) --wait 120; \
	echo "The server is still running on http://127.0.0.1:$(PORT) (docs: /docs). Ctrl-C stops it."; \
	wait $$server

lint: install-dev
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

test: install-dev lint
	$(BIN)/pytest

bench: install-dev
	$(BIN)/python -m benchmarks.bench_speed

bench-quality: install-dev
	$(BIN)/python -m benchmarks.bench_quality

# Decisions over HTTP on loopback against the app's own /ping (needs wrk: apt-get install wrk).
bench-http: install-dev
	$(BIN)/python -m benchmarks.bench_http

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache .hypothesis
