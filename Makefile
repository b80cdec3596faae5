# coregraph: `make run` starts the server on the embedded defaults, `make test` runs everything.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
NODE_DEPS := tests/node/node_modules/.package-lock.json

.PHONY: run test lint typecheck pytest bench bench-ingest bench-usage bench-scale bench-approvals bench-support bench-executor bench-typename bench-instructions schema migrate lock clean

# Installs take exactly what the lock files name, each download checked against its hash; the
# package itself goes on top without resolving anything (`make lock` writes the locks).
$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --require-hashes -r requirements.lock
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $@

$(VENV)/.dev-installed: pyproject.toml requirements-dev.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --require-hashes -r requirements-dev.lock
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(VENV)/.installed $@

$(NODE_DEPS): tests/node/package.json tests/node/package-lock.json
	npm ci --prefix tests/node --no-audit --no-fund --loglevel=error

run: $(VENV)/.installed
	$(BIN)/coregraph serve

migrate: $(VENV)/.installed
	$(BIN)/coregraph migrate

schema: $(VENV)/.installed
	@$(BIN)/coregraph export-schema

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check coregraph tests bench
	$(BIN)/ruff format --check coregraph tests bench

typecheck: $(VENV)/.dev-installed
	$(BIN)/mypy coregraph

pytest: $(VENV)/.dev-installed $(NODE_DEPS)
	$(BIN)/pytest

test: lint typecheck pytest

bench: $(VENV)/.dev-installed
	$(BIN)/python -m bench
	$(BIN)/python -m bench --database postgresql

# Issue 13: the executor alone (compiled plans) against stock graphql-core, 1,000 items x 5 fields.
bench-executor: $(VENV)/.dev-installed
	$(BIN)/python -m bench.executor

# Instructions per members request, coregraph and plain, under valgrind (steady on a busy machine).
bench-instructions: $(VENV)/.dev-installed
	$(BIN)/python -m bench.instructions

# Event ingest on the local PostgreSQL (a database it creates and drops); skipped without one.
bench-ingest: $(VENV)/.dev-installed
	$(BIN)/python -m bench.ingest

# Usage ingest (recordUsageBatch, /usage/bulk vs COPY) and the usage query over 1M records.
bench-usage: $(VENV)/.dev-installed
	$(BIN)/python -m bench.usage

# Issue 11: supportTimeline's first page over a tenant with 1M audit entries and events, against
# the raw SQL of the page (a local PostgreSQL; skipped without one).
bench-support: $(VENV)/.dev-installed
	$(BIN)/python -m bench.support

# Issue 12: dashboard throughput with 1/2/4 API processes, outbox lag at 1,000 events/s, and the
# overhead of metrics + tracing (PostgreSQL + Redis on 127.0.0.1).
bench-scale: $(VENV)/.dev-installed
	$(BIN)/python -m bench.scale

bench-approvals: $(VENV)/.dev-installed
	$(BIN)/python -m bench.approvals

# Issue 13: `{ __typename }` under wrk (POST, and the persisted GET) against a plain FastAPI
# endpoint; says so and exits 0 without wrk (apt-get install -y wrk).
bench-typename: $(VENV)/.dev-installed
	$(BIN)/python -m bench.typename

# Resolve pyproject.toml's ranges for every platform and Python 3.11+, keeping the versions the
# locks already name where they still fit; `make lock LOCK_FLAGS=--upgrade` takes the newest.
LOCK := $(BIN)/uv pip compile pyproject.toml --universal --python-version 3.11 --generate-hashes \
	--quiet $(LOCK_FLAGS)
lock: $(VENV)/.dev-installed
	UV_CUSTOM_COMPILE_COMMAND="make lock" $(LOCK) -o requirements.lock
	UV_CUSTOM_COMPILE_COMMAND="make lock" $(LOCK) --extra dev -o requirements-dev.lock

clean:
	rm -rf $(VENV) var tests/node/node_modules .pytest_cache .mypy_cache .ruff_cache
