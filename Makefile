# Set-up and main jobs. Everything installs into .venv in this checkout.
#   make serve   install, export the default models if missing, serve them
#   make test    install, lint, type-check, run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
REPOSITORY ?= model_repository
PORT ?= 8001
METRICS_PORT ?= 8002
PYTEST_ARGS ?=

.PHONY: install serve export test lint typecheck protos clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Re-install only when the declared dependencies change.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --progress-bar off -e '.[export,dev]'
	touch $@

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

protos: install
	PATH=$(BIN):$$PATH scripts/generate_protos.sh

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
