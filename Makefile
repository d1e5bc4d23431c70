# batchflows: every target bootstraps the locked environment first (nothing needs to be installed).
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.synced
export UV_PYTHON := $(PYTHON)
export PYTHONPATH := $(CURDIR)

.PHONY: help venv demo test test-fast lint bench up down clean-state

help:
	@echo "make demo   - bootstrap, then run the pipelines on embedded defaults and print summaries"
	@echo "make test   - bootstrap, then the whole test suite (real Prefect server, PostgreSQL, HTTP, files)"
	@echo "make lint   - ruff"
	@echo "make bench  - benchmarks against plain baselines (ratios, peak RSS)"

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check uv==0.13.9

$(STAMP): $(UV) uv.lock pyproject.toml
	$(UV) sync --frozen --quiet
	@touch $(STAMP)

venv: $(STAMP)

demo: venv
	$(PY) -m deployments.demo

test: venv
	$(PY) -m pytest

test-fast: venv
	$(PY) -m pytest -m "not slow"

lint: venv
	$(VENV)/bin/ruff check .

bench: venv
	$(PY) -m bench.engine

clean-state:
	rm -rf .batchflows
