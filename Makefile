# The README's two commands: `make demo` and `make test`. Both create .venv on a fresh machine.
# The development pins (the CPU torch wheel on these machines' disk; the newest tested diffusers,
# transformers and huggingface_hub) live in constraints/dev.txt; pyproject.toml holds the ranges users get.
PY ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

$(STAMP): pyproject.toml constraints/dev.txt
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -c constraints/dev.txt -e '.[dev]'
	touch $(STAMP)

.PHONY: setup demo test test-compat lint fuzz bench
setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/safeloader demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider

# Not in CI: fresh venvs with the oldest and the newest versions the ranges allow (README, Compatibility).
test-compat:
	PY=$(PY) tools/test_compat.sh

lint: $(STAMP)
	$(VENV)/bin/ruff check safeloader tests fuzz bench
	$(VENV)/bin/ruff format --check safeloader tests fuzz bench
	$(VENV)/bin/mypy

fuzz: $(STAMP)
	$(VENV)/bin/python fuzz/run_all.py --seconds 20

bench: $(STAMP)
	$(VENV)/bin/python bench/run.py
