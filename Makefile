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

.PHONY: help venv test-deps demo test test-fast lint bench bench-huge up down ui-shots clean-state

help:
	@echo "make demo   - bootstrap, then run the pipelines on embedded defaults and print summaries"
	@echo "make test   - bootstrap, then the whole test suite (real Prefect server, PostgreSQL, HTTP, files)"
	@echo "make lint   - ruff"
	@echo "make bench  - benchmarks against plain baselines (ratios, peak RSS)"
	@echo "make bench-huge - 10M and 10^8 generator items through batch_map (adaptive): time, flat RSS, task runs (~10 min)"
	@echo "make profile - where an item's microseconds go in the engine (cProfile of a batch_map run)"

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check uv==0.13.9

$(STAMP): $(UV) uv.lock pyproject.toml
	$(UV) sync --frozen --quiet --compile-bytecode
	@touch $(STAMP)

venv: $(STAMP)

demo: venv
	$(PY) -m deployments.demo

# MariaDB server binaries for the MySQL/MariaDB tests (tests/fixtures/mariadb.py starts its own server; the
# Debian service is never used). Installed as root with apt-get where missing; otherwise those tests are skipped.
test-deps:
	@if [ -x /usr/sbin/mariadbd ] || command -v mariadbd >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing mariadb-server (binaries for the throwaway test server)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    mariadb-server >/dev/null) || echo "SKIPPING MariaDB tests: apt-get install mariadb-server failed"; \
	else echo "SKIPPING MariaDB tests: mariadbd not found and cannot apt-get install it (not root); install mariadb-server"; fi

test: venv test-deps
	$(PY) -m pytest

test-fast: venv test-deps
	$(PY) -m pytest -m "not slow"

lint: venv
	$(VENV)/bin/ruff check .

bench: venv test-deps
	$(PY) -m bench.engine
	$(PY) -m bench.api_bulk
	$(PY) -m bench.db_migrate
	$(PY) -m bench.incremental
	$(PY) -m bench.file_transform
	$(PY) -m bench.scale
	$(PY) -m bench.startup

# minutes: not part of `make bench`
bench-huge: venv
	$(PY) -m bench.huge

RUN := .run
UP_PORT ?= 4200
up: venv
	@mkdir -p $(RUN) .batchflows/prefect-home
	@if [ -f $(RUN)/server.pid ] && kill -0 $$(cat $(RUN)/server.pid) 2>/dev/null; then echo "server already running (pid $$(cat $(RUN)/server.pid))"; \
	else PREFECT_HOME=$(CURDIR)/.batchflows/prefect-home PREFECT_SERVER_ANALYTICS_ENABLED=false \
	  setsid nohup $(VENV)/bin/prefect server start --host 127.0.0.1 --port $(UP_PORT) > $(RUN)/server.log 2>&1 & echo $$! > $(RUN)/server.pid; fi
	@for i in $$(seq 1 120); do curl -sf http://127.0.0.1:$(UP_PORT)/api/health >/dev/null && break; sleep 1; done
	@curl -sf http://127.0.0.1:$(UP_PORT)/api/health >/dev/null || (echo "server did not start; see $(RUN)/server.log"; exit 1)
	PREFECT_API_URL=http://127.0.0.1:$(UP_PORT)/api $(PY) -m deployments.setup
	@if [ -f $(RUN)/demo-api.pid ] && kill -0 $$(cat $(RUN)/demo-api.pid) 2>/dev/null; then echo "demo API already running (pid $$(cat $(RUN)/demo-api.pid))"; \
	else setsid nohup $(PY) -m deployments.demo_api --port 8765 > $(RUN)/demo-api.log 2>&1 & echo $$! > $(RUN)/demo-api.pid; fi
	PREFECT_API_URL=http://127.0.0.1:$(UP_PORT)/api BATCHFLOWS_PROJECT_DIR=$(CURDIR) $(VENV)/bin/prefect --no-prompt deploy --all
	@if [ -f $(RUN)/worker.pid ] && kill -0 $$(cat $(RUN)/worker.pid) 2>/dev/null; then echo "worker already running (pid $$(cat $(RUN)/worker.pid))"; \
	else PREFECT_API_URL=http://127.0.0.1:$(UP_PORT)/api BATCHFLOWS_PROJECT_DIR=$(CURDIR) BATCHFLOWS_STATE_DIR=$(CURDIR)/.batchflows \
	  setsid nohup $(VENV)/bin/prefect worker start --pool batchflows-process > $(RUN)/worker.log 2>&1 & echo $$! > $(RUN)/worker.pid; fi
	@echo "UI: http://127.0.0.1:$(UP_PORT)   try: PREFECT_API_URL=http://127.0.0.1:$(UP_PORT)/api $(VENV)/bin/prefect deployment run 'batch-map/hourly' --watch"

down:
	@for p in worker demo-api server; do if [ -f $(RUN)/$$p.pid ]; then pid=$$(cat $(RUN)/$$p.pid); \
	  if kill -- -$$pid 2>/dev/null; then for i in $$(seq 1 20); do kill -0 $$pid 2>/dev/null || break; sleep 0.5; done; \
	    kill -9 -- -$$pid 2>/dev/null || true; echo "stopped $$p (pid $$pid)"; fi; rm -f $(RUN)/$$p.pid; fi; done

ui-shots: up
	@command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)
	$(PY) -m bench.ui_screenshots

clean-state:
	rm -rf .batchflows

.PHONY: profile
profile: venv
	$(PY) -m bench.profile_engine --case io
	$(PY) -m bench.profile_engine --case trivial
	$(PY) -m bench.profile_engine --case batch
