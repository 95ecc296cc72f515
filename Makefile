# Passback: `make run` starts the gateway on its embedded default; `make test` runs the whole suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check -q

.DEFAULT_GOAL := help
.PHONY: help run test bench lint lock install install-test clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

# The server install takes the locked versions, hashes checked (requirements.lock, made by `make lock`), then
# Passback itself without resolving anything again.
$(VENV)/.installed-run: pyproject.toml requirements.lock | $(BIN)/python
	$(PIP) install --require-hashes -r requirements.lock
	$(PIP) install --no-deps -e .
	@touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(PIP) install -e '.[test]'
	@touch $@

# Browser tests drive Debian's chromium package (never a Playwright browser download).
CHROMIUM ?= /usr/bin/chromium
$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null \
	  || echo "could not install Debian's chromium; the browser tests will be skipped" >&2

install: $(VENV)/.installed-run ## Create .venv and install Passback

install-test: $(VENV)/.installed-test ## Create .venv and install Passback with test extras

run: install ## Migrate, seed the sandbox district, serve on 127.0.0.1:8000 with the embedded worker (GATEWAY_DEMO_TOKEN_FILE keeps the demo token)
	$(BIN)/gateway run --host 127.0.0.1 --port 8000

test: install-test $(CHROMIUM) ## Run the whole suite (SQLite; also PostgreSQL when GATEWAY_TEST_DATABASE_URL is set)
	$(BIN)/python -m pytest

bench: install-test ## Benchmarks: intake vs a bare insert (C), Schoology batching, backfill (A), direct pylti1p3 (B), faults (D), Canvas 403 throughput, webhook fan-out
	$(BIN)/python -m bench.grade_throughput
	$(BIN)/python -m bench.schoology_batching --json bench/results/schoology_batching.json
	$(BIN)/python -m bench.backfill
	$(BIN)/python -m bench.canvas_throttle --json bench/results/canvas_throttle.json
	$(BIN)/python -m bench.webhook_fanout --json bench/results/webhook_fanout.json

lint: install-test ## ruff (checks and formatting), mypy --strict on adapters/, schemas/ and gateway/services/, import-linter's layering contracts
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy adapters schemas gateway/services
	$(BIN)/lint-imports --no-cache --no-logo

UV_VERSION ?= 0.13.10
lock: | $(BIN)/python ## Lock the server install (base, server, postgres, celery) with hashes into requirements.lock
	$(PIP) install 'uv==$(UV_VERSION)'
	$(BIN)/uv pip compile pyproject.toml --extra server --extra postgres --extra celery --universal \
	  --python-version 3.11 --generate-hashes --index-url https://pypi.org/simple --no-header --quiet -o requirements.lock.body
	{ echo '# Passback: the server install, locked with hashes. Made by `make lock` (uv pip compile, pyproject.toml'; \
	  echo '# extras server, postgres, celery); installed by `make run` and the Dockerfile with pip --require-hashes.'; \
	  cat requirements.lock.body; } > requirements.lock && rm requirements.lock.body

clean: ## Remove .venv, the local database and caches
	rm -rf $(VENV) instance .pytest_cache .ruff_cache .mypy_cache .import_linter_cache tests/artifacts
