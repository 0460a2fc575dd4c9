# Set-up and main jobs. Everything installs into .venv in this checkout.
#   make serve   install, export the default models if missing, serve them
#   make test    install, lint, type-check, run the test suite
#   make compose-test  build the images, run docker compose up and check it
#   make lock    re-resolve the lock files in requirements/ (UPGRADE=1 to move every pin)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
REPOSITORY ?= model_repository
PORT ?= 8001
METRICS_PORT ?= 8002
PYTEST_ARGS ?=

.PHONY: install lock serve export test lint typecheck protos compose-test clean

LOCK := requirements/dev.txt

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Exactly the locked versions (hash-checked, nothing resolved here), then the project itself,
# editable, with no dependencies of its own to fetch. Re-runs when the lock changes.
$(VENV)/.installed: $(LOCK) pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --progress-bar off --require-hashes --no-deps -r $(LOCK)
	$(BIN)/python -m pip install --progress-bar off --no-deps --no-build-isolation -e .
	$(BIN)/python -m pip check
	touch $@

# The one deliberate way to move versions: re-resolve pyproject.toml into requirements/*.txt.
# UPGRADE=1 moves every pin to the newest release that fits.
lock: install
	UV=$(BIN)/uv scripts/lock.sh

install: $(VENV)/.installed

export: install
	$(BIN)/python -m export --defaults --skip-existing --repository $(REPOSITORY)

serve: export
	$(BIN)/python -m server --repository $(REPOSITORY) --port $(PORT) --metrics-port $(METRICS_PORT)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Builds the images and runs `docker compose up` for real on a container engine (started here
# when none runs, and stopped again); see scripts/compose_test.py.
compose-test: install
	$(BIN)/python scripts/compose_test.py

protos: install
	PATH=$(BIN):$$PATH scripts/generate_protos.sh

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
