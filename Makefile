# coregraph: `make run` starts the server on the embedded defaults, `make test` runs everything.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
NODE_DEPS := tests/node/node_modules/.package-lock.json

.PHONY: run test lint typecheck pytest bench schema migrate clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.dev-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
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

clean:
	rm -rf $(VENV) var tests/node/node_modules .pytest_cache .mypy_cache .ruff_cache
