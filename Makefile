# The single entry point. `make run` and `make test` work from a fresh clone.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.bench-installed

.PHONY: install run test test-unit lint bench compose-test clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

## The peers the throughput benchmark compares with (taskiq-nats, Celery): the bench extra.
$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install -q -e '.[test,bench]'
	touch $(BENCH_STAMP)

## Start the service on embedded defaults: bundled nats-server, SQLite, progress over NATS.
run: install
	$(BIN)/agent-fabric serve

## Install, make sure Postgres and Redis answer (starting them if needed), run every test.
## Tests mostly wait on timers and I/O (a serial run uses ~30 % of one core), so they run in
## TEST_WORKERS processes, each with its own nats-servers and throwaway database.
TEST_WORKERS ?= 4
test: install
	bash scripts/services.sh
	$(BIN)/pytest -n $(TEST_WORKERS)

test-unit: install
	$(BIN)/pytest tests/unit

lint: install
	$(BIN)/ruff check src tests
	$(BIN)/mypy

## Benchmarks print numbers; they are not tests (README keeps the results table).
bench: $(BENCH_STAMP)
	bash scripts/services.sh
	$(BIN)/python scripts/bench/throughput.py
	$(BIN)/python scripts/bench/policy_check.py
	$(BIN)/python scripts/bench/admission.py
	$(BIN)/python scripts/bench/agent_proxy.py
	$(BIN)/python scripts/bench/ws_relay.py
	$(BIN)/python scripts/bench/scheduling.py
	$(BIN)/python scripts/bench/telemetry_overhead.py
	$(BIN)/python scripts/bench/process_agents.py
	$(BIN)/python scripts/bench/agent_config.py
	$(BIN)/python scripts/bench/llm_gateway.py

## Integration suite against docker-compose.test.yml (machines with a Docker engine).
compose-test: install
	bash scripts/compose-test.sh

clean:
	rm -rf $(VENV) .agent-fabric .pytest_cache .mypy_cache .ruff_cache
