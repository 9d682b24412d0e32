# Tally developer entry points.
#
#   make test [PYTEST_ARGS='tests/integration -x -v']
#   make lint
#   make services        start local Kafka + PostgreSQL, print their env
#   make services-stop
#   make run [RUN_ARGS=...]  services + migrations + example metrics + worker +
#                            synthetic stream + live summary (tally demo)
#   make clean           caches and build output (keeps .venv and .local)
#   make distclean       clean + stop services + remove .local and .venv
#
# `make test` uses TALLY_KAFKA_BOOTSTRAP / TALLY_DATABASE_URL when they are set;
# otherwise it starts the local services (deploy/local/*.sh) and exports what
# they print, in the same shell line as pytest.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := test

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
PYTEST_ARGS ?=
RUN_ARGS ?=
KAFKA := bash deploy/local/kafka.sh
POSTGRES := bash deploy/local/postgres.sh

# Start whichever service is not configured yet and export its settings.
define with_services
if [ -z "$${TALLY_KAFKA_BOOTSTRAP:-}" ]; then line="$$($(KAFKA) start)"; export "$$line"; fi; \
if [ -z "$${TALLY_DATABASE_URL:-}" ]; then line="$$($(POSTGRES) start)"; export "$$line"; fi; \
echo "TALLY_KAFKA_BOOTSTRAP=$$TALLY_KAFKA_BOOTSTRAP TALLY_DATABASE_URL=$$TALLY_DATABASE_URL" >&2
endef

.PHONY: test lint services services-stop run clean distclean install

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

NATIVE := native/Cargo.toml native/Cargo.lock $(wildcard native/src/*.rs)
CARGO := PATH="$$HOME/.cargo/bin:$$PATH" cargo

# Reinstall when the project metadata or the native core changes: the
# editable install builds the Rust extension (maturin, release profile).
$(INSTALLED): pyproject.toml $(NATIVE) | $(BIN)/python
	PATH="$$HOME/.cargo/bin:$$PATH" $(BIN)/python -m pip install -q --disable-pip-version-check -e '.[test]'
	@touch $@

install: $(INSTALLED)

test: $(INSTALLED)
	@$(with_services); \
	$(BIN)/pytest $(PYTEST_ARGS)

lint: $(INSTALLED)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/mypy
	$(CARGO) fmt --manifest-path native/Cargo.toml --check
	$(CARGO) clippy --manifest-path native/Cargo.toml --all-targets --features python -- -D warnings
	$(CARGO) test --manifest-path native/Cargo.toml --release -q

services:
	@$(KAFKA) start
	@$(POSTGRES) start

services-stop:
	@$(KAFKA) stop
	@$(POSTGRES) stop

run: $(INSTALLED)
	@bash deploy/local/run.sh $(RUN_ARGS)

clean:
	rm -rf .mypy_cache .ruff_cache .pytest_cache .hypothesis .coverage build dist native/target
	find src tests -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean services-stop
	rm -rf .local $(VENV)
