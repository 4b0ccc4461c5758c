# Two entry points: `make demo` (set up + run the built-in quickstart) and `make test`.
PY ?= python3
VENV ?= .venv
BIN = $(VENV)/bin

.PHONY: demo test setup clean

$(BIN)/mdflow: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(BIN)/mdflow

setup: $(BIN)/mdflow

demo: setup
	$(BIN)/mdflow run

test: setup
	$(BIN)/python -m pytest -q -n 2

clean:
	rm -rf $(VENV) results
