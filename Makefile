# The two commands of the README. Both create .venv on first use and reinstall when
# pyproject.toml changes.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test test-fast lint browser-deps clean

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[test]'
	touch $@

run: $(VENV)/.installed
	$(BIN)/sparse-nas quickstart examples/quickstart.yaml

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/lint-imports

# The browser tests (marker browser) drive Debian's Chromium; installed here when missing
# (as root, or through sudo). Playwright's own browser download is never used.
CHROMIUM := /usr/bin/chromium
browser-deps:
	@if [ ! -x $(CHROMIUM) ]; then \
		if [ "$$(id -u)" = 0 ]; then SUDO=; \
		elif command -v sudo >/dev/null 2>&1; then SUDO=sudo; \
		else echo "make: the browser tests need $(CHROMIUM): install Debian's chromium package as root (apt-get install chromium)" >&2; exit 1; fi; \
		$$SUDO apt-get update && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; \
	fi

test: lint browser-deps
	$(BIN)/python -m pytest -n 2 --dist loadgroup

test-fast: lint
	$(BIN)/python -m pytest -n 2 -m "not slow"

clean:
	rm -rf $(VENV) .pytest_cache
