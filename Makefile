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
# The demo: simulated users arrive at TRAFFIC_RATE a second, served by a model that has seen
# only the first DEMO_ROWS logged rounds (see `run` below).
TRAFFIC_RATE ?= 50
DEMO_ROWS ?= 20

DATA := data/bandit_simulated.csv
MODEL := data/linucb_model.npz
DEMO_MODEL := data/demo_model.npz
EVENT_LOG := data/events.db
INSTALLED := $(VENV)/.installed

.PHONY: run test install install-dev simulate train serve demo-model lint bench bench-quality \
	bench-http clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Runtime dependencies only: what a fresh machine gets from `make run`.
$(INSTALLED): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	@touch $@

install: $(INSTALLED)

install-dev: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[dev,bench]"

# Real files: made once, reused while they are newer than what they are made from.
$(DATA): | $(INSTALLED)
	$(BIN)/banditrec simulate --rows $(ROWS) --out $@

$(MODEL): $(DATA)
	$(BIN)/banditrec train --data $(DATA) --model $@

simulate: $(DATA)

train: $(MODEL)

# Retrained on every `make run` (a second or two): a new model file starts a new epoch, so
# the demo starts again from what DEMO_ROWS rounds teach, whatever the event log holds.
demo-model: $(DATA)
	$(BIN)/banditrec train --data $(DATA) --model $(DEMO_MODEL) --rows $(DEMO_ROWS)

serve: $(MODEL)
	$(BIN)/banditrec serve --model $(MODEL) --port $(PORT)

# The demo must show a model learning. The model trained on all the logged data serves at
# about 98% of the oracle from its first request, so a minute of traffic against it is a
# flat line. The server therefore serves a model that has seen only the first DEMO_ROWS
# rounds, the users arrive at TRAFFIC_RATE a second, and the display shows the full-data
# model's value on the same users beside it (--reference): the served model climbs
# towards it as it learns online. `make serve` serves the full-data model.
#
# Every phase that fails stops `make run` with a non-zero status, and the background
# server is stopped with it.
run: | $(INSTALLED)
	@$(BIN)/python -c 'import sys; from banditrec.server import port_problem; \
	p = port_problem("127.0.0.1", $(PORT)); \
	p and sys.exit(f"make run: {p} An earlier `make run` may still be serving: stop it \
	(Ctrl-C in its terminal, or `fuser -k $(PORT)/tcp`), or pick another port: \
	make run PORT=$(shell expr $(PORT) + 1).")'
	@if [ -f $(DATA) ]; then echo "Reusing $(DATA) (delete it to simulate again)."; fi
	@if [ -f $(MODEL) ] && $(MAKE) --no-print-directory -q $(MODEL); then \
	  echo "Reusing $(MODEL) (delete it to train again)."; fi
	@$(MAKE) --no-print-directory $(MODEL) demo-model
	@if [ -f $(EVENT_LOG) ]; then \
	  echo "Reusing the event log $(EVENT_LOG): earlier runs' decisions and rewards stay in it."; \
	  echo "The demo model was just retrained: a new model file starts a new epoch, so the"; \
	  echo "learn events already in the log are not applied to it (delete $(EVENT_LOG) to start empty)."; \
	fi
	@echo "Serving $(DEMO_MODEL) ($(DEMO_ROWS) rounds learned) on http://127.0.0.1:$(PORT);" \
	  "$(TRAFFIC_SECONDS) s of simulated users at $(TRAFFIC_RATE)/s, beside $(MODEL)."
	@$(BIN)/banditrec serve --model $(DEMO_MODEL) --port $(PORT) --no-access-log & \
	server=$$!; \
	trap 'kill $$server 2>/dev/null; exit 130' INT TERM; \
	if ! $(BIN)/banditrec traffic --url http://127.0.0.1:$(PORT) --duration $(TRAFFIC_SECONDS) \
	    --rate $(TRAFFIC_RATE) --window 250 --reference $(MODEL) --wait 120 \
	    --server-pid $$server; then \
	  kill $$server 2>/dev/null; wait $$server 2>/dev/null; \
	  echo "make run: the traffic phase failed or was interrupted (see above);" \
	    "the server was stopped." >&2; \
	  exit 1; \
	fi; \
	if ! kill -0 $$server 2>/dev/null; then \
	  echo "make run: the server stopped during the traffic phase (see above)." >&2; \
	  exit 1; \
	fi; \
	echo "The server is still running on http://127.0.0.1:$(PORT) (docs: /docs). Ctrl-C stops it."; \
	wait $$server

lint: install-dev
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

# The suite runs in two phases. First every test not marked serial, on TEST_WORKERS pytest
# processes (pytest-xdist): one per core, as many tests wait on servers and subprocesses
# rather than compute, but at most 4, because many tests start a server with two workers,
# wrk, redis-server or chromium beside them, so more processes than cores would only slow
# each test down, and with more than 4 the phase is bound by its longest test files anyway.
# --dist loadfile keeps a file's tests on one process: they share module fixtures (a
# running server, a Redis) and some run in file order. Then the serial tests (they measure
# time or rate, or assert wall-clock bounds; see the marker in pyproject.toml), alone.
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); echo $$(( n < 4 ? n : 4 )))

test: install-dev lint
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile -m "not serial"
	$(BIN)/pytest -m serial

bench: install-dev
	$(BIN)/python -m benchmarks.bench_speed

bench-quality: install-dev
	$(BIN)/python -m benchmarks.bench_quality

# Decisions over HTTP on loopback against the app's own /ping, SQLite and Redis side by side
# (needs wrk and redis-server: apt-get install wrk redis-server).
bench-http: install-dev
	$(BIN)/python -m benchmarks.bench_http --redis

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache .hypothesis
