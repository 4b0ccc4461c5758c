# Two entry points: `make demo` (set up + run the built-in quickstart) and `make test` (set up + the
# default test tier). `make test-all` runs every tier (what CI runs, `.ci/run`).
PY ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
PYTEST = $(BIN)/python -m pytest -q -n 2

.PHONY: demo test test-slow test-all setup clean

$(BIN)/mdflow: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(BIN)/mdflow

setup: $(BIN)/mdflow

demo: setup
	$(BIN)/mdflow run

# The default tier: unit tests and numerics on the shared fixtures (tests/conftest.py), within its budget
# of compiled solve programs.
test: setup
	$(PYTEST)

# The slow and end-to-end tiers (long references; every test that starts a process).
test-slow: setup
	$(PYTEST) -m "slow or e2e"

# Every tier, the later ones on the compilation cache the default tier filled (one cache for the run).
test-all: setup
	@cache=$$(mktemp -d -t mdflow-test-cache-XXXXXX); \
	MDFLOW_TEST_CACHE_DIR=$$cache $(PYTEST) && MDFLOW_TEST_CACHE_DIR=$$cache $(PYTEST) -m "slow or e2e"; \
	status=$$?; rm -rf $$cache; exit $$status

clean:
	rm -rf $(VENV) results
