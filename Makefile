# Set-up and everyday commands. `make demo` and `make test` work on a fresh
# machine with Python 3.11+; both create .venv on first use.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: setup demo test test-fast ui lint clean-data

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv
	$(BIN)/uv pip install --quiet --python $(BIN)/python --compile-bytecode -e ".[dev,ui]"
	touch $(STAMP)

setup: $(STAMP)

## The main job: demo extracts for 2018, then every quarter's figures and annexes.
demo: $(STAMP)
	$(BIN)/credit-etl demo

## The whole test suite.
test: $(STAMP)
	$(BIN)/python -m pytest

## The test suite without the end-to-end tests marked slow.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

## The Dagster UI on the default data directory, at http://127.0.0.1:3000.
ui: $(STAMP)
	$(BIN)/credit-etl ui

lint: $(STAMP)
	$(BIN)/ruff check credit_etl assets sensors tests bench
	$(BIN)/ruff format --check credit_etl assets sensors tests bench

## Remove everything runs wrote under the default data directory var/.
clean-data:
	rm -rf var
