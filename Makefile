# The two commands of the README. Both create .venv on first use and reinstall when
# pyproject.toml changes.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test test-fast lint clean

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[test]'
	touch $@

run: $(VENV)/.installed
	$(BIN)/sparse-nas quickstart examples/quickstart.yaml

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/lint-imports

test: lint
	$(BIN)/python -m pytest -n 2 --dist loadgroup

test-fast: lint
	$(BIN)/python -m pytest -n 2 -m "not slow"

clean:
	rm -rf $(VENV) .pytest_cache
