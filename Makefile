# The README's two commands: `make demo` and `make test`. Both create .venv on a fresh machine.
PY ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $(STAMP)

.PHONY: setup demo test lint fuzz bench
setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/safeloader demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider

lint: $(STAMP)
	$(VENV)/bin/ruff check safeloader tests fuzz bench
	$(VENV)/bin/ruff format --check safeloader tests fuzz bench
	$(VENV)/bin/mypy

fuzz: $(STAMP)
	$(VENV)/bin/python fuzz/run_all.py --seconds 20

bench: $(STAMP)
	$(VENV)/bin/python bench/run.py
