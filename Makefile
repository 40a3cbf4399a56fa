# upquant: `make run` starts the workstation, `make test` runs the whole suite.
# Both create .venv with Python >= 3.12 and install upquant with its dev extras first.

PYTHON ?= $(shell for p in python3.12 python3.13 $$HOME/.pyenv/versions/3.12*/bin/python3.12 /usr/bin/python3.12 /usr/local/bin/python3.12; do \
	$$p -c 'import sys; assert sys.version_info >= (3, 12)' >/dev/null 2>&1 && { echo $$p; break; }; done)
VENV := .venv
BIN := $(VENV)/bin
ARGS ?=

.PHONY: setup run test check lint bench clean

$(BIN)/.installed: pyproject.toml
	@test -n "$(PYTHON)" || { echo "error: Python >= 3.12 not found; install python3.12 or set PYTHON=/path/to/python3.12" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

setup: $(BIN)/.installed

run: setup
	$(BIN)/upquant tui $(ARGS)

# two workers, one test file each at a time (a file's live-clock tests never race each other):
# the suite is CPU-bound in the CLI subprocesses and takes ~8 min on 2 cores (10 serially).
# The static checks run first, so CI (.ci/run) fails on a lint, layering or type error.
test: check
	$(BIN)/pytest -q -n 2 --dist loadfile $(ARGS)

# ruff; the import contracts of .importlinter (DESIGN.md "Layout"); types of the packages
# below the faces
check: lint
	$(BIN)/lint-imports
	$(BIN)/mypy --ignore-missing-imports engine models store

lint: setup
	$(BIN)/ruff check store models engine tui tests scripts

clean:
	rm -rf $(VENV) .pytest_cache
