# Set-up and main jobs. Everything installs into .venv in this checkout.
#   make serve   install, export the default models if missing, serve them
#   make test    install, lint, type-check, run the test suite
#   make compose-test  build the images, run docker compose up and check it
#   make perf-analyzer-test  run Triton's perf_analyzer against the server over gRPC and HTTP
#   make browser-test  drive the model page in headless Chromium (installed when missing)
#   make http-benchmark  HTTP (binary, JSON) against gRPC at c=16; writes docs/http_benchmark.md
#   make lock    re-resolve the lock files in requirements/ (UPGRADE=1 to move every pin)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
REPOSITORY ?= model_repository
PORT ?= 8001
METRICS_PORT ?= 8002
PYTEST_ARGS ?=

.PHONY: install lock serve export test lint typecheck protos compose-test perf-analyzer perf-analyzer-test browser-test http-benchmark clean

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

# Triton's perf_analyzer in an environment of its own (its wheel, --no-deps), plus the one system
# library its binary links that no wheel ships (Debian's libb64-0d; installed here when missing).
PERF_VENV := .venv-perf-analyzer
$(PERF_VENV)/.installed: requirements/perf-analyzer.txt
	$(PYTHON) -m venv $(PERF_VENV)
	$(PERF_VENV)/bin/python -m pip install --progress-bar off --require-hashes --no-deps -r requirements/perf-analyzer.txt
	dpkg -s libb64-0d >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq --no-install-recommends libb64-0d)
	touch $@

perf-analyzer: $(PERF_VENV)/.installed

perf-analyzer-test: install perf-analyzer
	CNNSERVE_PERF_ANALYZER=$(PERF_VENV)/bin/perf_analyzer $(BIN)/python -m pytest -q tests/server/test_statistics.py -k perf_analyzer

# HTTP against gRPC on one LeNet server, a few minutes (scripts/http_benchmark.py): perf_analyzer
# -i grpc and -i http, tritonclient JSON and binary, interleaved rounds; writes docs/http_benchmark.md.
http-benchmark: install perf-analyzer
	CNNSERVE_PERF_ANALYZER=$(PERF_VENV)/bin/perf_analyzer $(BIN)/python scripts/http_benchmark.py

# The model page (GET /) in Debian's headless Chromium, driven by Selenium (installed here when
# missing); CNNSERVE_REQUIRE_BROWSER=1 turns the test's skip without a browser into a failure.
browser-test: install
	dpkg -s chromium chromium-driver >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium chromium-driver)
	CNNSERVE_REQUIRE_BROWSER=1 $(BIN)/python -m pytest -q -m browser tests/server/test_model_page_browser.py

protos: install
	PATH=$(BIN):$$PATH scripts/generate_protos.sh

clean:
	rm -rf $(VENV) $(PERF_VENV) .mypy_cache .ruff_cache .pytest_cache
