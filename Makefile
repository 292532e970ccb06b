# Set-up and everyday commands. Everything runs inside .venv, created on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
CHAOS_SECONDS ?= 120

.PHONY: help venv demo run test bench chaos lint format typecheck check clean

help:
	@echo "make demo       offline demo: Redis (private if none), exchange simulator, feeders of six exchanges, live md watch"
	@echo "make run        the same against the real exchanges (needs internet)"
	@echo "make bench      run every benchmark (private redis-server, simulator, feeders, cryptofeed as the peer) and print tables"
	@echo "make test       create .venv, install the project with test extras, run the whole suite"
	@echo "make chaos      faults of every kind for CHAOS_SECONDS (default 120) while 4 engines read; 0 violations or exit 1"
	@echo "make lint       ruff check + ruff format --check + mypy"
	@echo "make format     ruff format + ruff check --fix"
	@echo "make clean      remove .venv and caches"

$(STAMP): pyproject.toml setup.py feeder/exchanges/_units.c
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is needed (set PYTHON=...)")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) -m launch.demo

run: $(STAMP)
	$(PY) -m launch.demo --live

test: $(STAMP)
	$(PY) -m pytest

bench: $(STAMP)
	@$(PY) -m pip install --quiet -e '.[bench-peer]' || echo "make bench: the bench-peer extra (cryptofeed) did not install: its rows are skipped"
	$(PY) -m bench

chaos: $(STAMP)
	$(PY) -m launch.chaos --seconds $(CHAOS_SECONDS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

typecheck: $(STAMP)
	$(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

check: lint test

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis *.egg-info
