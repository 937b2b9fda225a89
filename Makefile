# The two commands a newcomer needs:
#   make demo   install, start local Kafka + Neo4j, and run the main job
#   make test   install and run the test suite (what CI runs)
# Python dependencies live in a shared cache keyed by requirements.txt (see scripts/setup-env.sh);
# this clone only gets a small .venv that points at it.

PYTHON ?= python3
VENV := .venv
M2GRL := $(VENV)/bin/m2grl
PYTEST_ARGS ?=
DEMO_ARGS ?=

.PHONY: env demo lint test test-faults services-up services-down clean help

help:
	@echo "make demo           install, start local Kafka and Neo4j, run the main job (DEMO_ARGS='--no-eval')"
	@echo "make test           install and run the tests (PYTEST_ARGS='-k kafka' to narrow)"
	@echo "make lint           only the static checks: ruff and mypy (make test runs them first)"
	@echo "make test-faults    only the fault suite (the whole pipeline under injected failures)"
	@echo "make env            only install (idempotent)"
	@echo "make services-down  stop the local Kafka and Neo4j"
	@echo "make clean          remove this clone's .venv and .m2grl state (the shared caches stay)"

env:
	@scripts/ensure-tools.sh
	@PYTHON=$(PYTHON) scripts/setup-env.sh

demo: env
	$(M2GRL) demo $(DEMO_ARGS)

# ruff over the tree (imports sorted), mypy over the package; the import contract is a test.
lint: env
	$(VENV)/bin/python -m ruff check .
	@PYTHON=$(VENV)/bin/python scripts/typecheck.sh

test: env lint
	@scripts/ensure-tools.sh --test
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

test-faults: env
	@scripts/ensure-tools.sh --test
	$(VENV)/bin/python -m pytest -m faults $(PYTEST_ARGS)

services-up: env
	$(M2GRL) services up

services-down:
	$(M2GRL) services down

clean:
	-$(M2GRL) services down
	rm -rf $(VENV) .m2grl build/typecheck build/mypy-cache
