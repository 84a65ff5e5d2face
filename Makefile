# The commands in the README. `make demo` runs the system; `make test` runs the tests.
# Both create the virtual environment on a fresh machine first.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test unit integration lint format bench soak check-deploy clean venv

# Extras: dev (test and lint tools) and demo (the sandbox: testcontainers, which
# `make demo` and the integration tests' broker need; production installs leave it out).
$(STAMP): pyproject.toml
	@command -v $(PY) >/dev/null 2>&1 || { echo "needs $(PY) (Python 3.11)"; exit 1; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,demo]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)  ## broker, simulated fleet, trainer, detector; alerts and metrics shown
	$(BIN)/anomalyd demo

test: $(STAMP)  ## every test: unit, integration (needs Docker), deployment checks
	$(BIN)/pytest -q -ra --durations=15  # the slowest tests, to watch CI's time

unit: $(STAMP)
	$(BIN)/pytest -q -ra tests/unit

integration: $(STAMP)
	$(BIN)/pytest -q -ra -m integration

lint: $(STAMP)
	$(BIN)/ruff check detector training tests bench
	$(BIN)/ruff format --check detector training tests bench
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format detector training tests bench
	$(BIN)/ruff check --fix detector training tests bench

check-deploy: $(STAMP)  ## deployment artefacts through their real validators; image smoke run
	.ci/deploy-tools.sh
	.ci/build-app-image.sh
	ANOMALYD_TEST_REQUIRE_TOOLS=1 $(BIN)/pytest -q -ra -m deploy tests/deploy

bench: $(STAMP)
	$(BIN)/python bench/engine.py --streams 100000 --json

soak: $(STAMP)  ## 30 minutes of churn; JSON slopes and docs/img/soak.png (docs/reliability.md)
	$(BIN)/python bench/soak.py --minutes 30 --json --out docs/img/soak.png

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .demo
