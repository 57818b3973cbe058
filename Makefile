# xpz: two commands for a fresh clone.
#   make run   set up .venv, bring the dataset (DVC remote, else regenerate), run the pipeline
#   make test  set up .venv (dev + scale extras), run the tests
#   make check ruff (lint + format), mypy on src/, the fast tests (what CI runs before make test)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(CURDIR)/$(VENV)/bin
PYTEST_ARGS ?=

export PATH := $(BIN):$(PATH)
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DVC_NO_ANALYTICS := 1
export GX_ANALYTICS_ENABLED := false
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: run test check lint typecheck test-fast install data pipeline clean help lock check-data

help:
	@echo "make run   - set up .venv and run the main job on the embedded default dataset"
	@echo "make test  - set up .venv (with dev extra) and run the test suite"
	@echo "make check - ruff lint + format check, mypy on src/, the fast tests (-m 'not slow and not integration')"

# The environment is the lock (exact versions, sha256 hashes): requirements.lock, compiled from
# pyproject.toml's lower-bound ranges (for library users) by `make lock`. xpz itself goes in
# editable, without dependencies, so nothing outside the lock is installed.
$(VENV)/.installed: requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --require-hashes --no-deps -r requirements.lock
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	@touch $@

# Refresh the lock: newest versions within pyproject's ranges (UV_ARGS=--upgrade-package NAME for one
# package). Needs uv (pip install uv); commit requirements.lock, then `make install` applies it.
LOCK_PYTHON ?= 3.11.7
UV_ARGS ?=
lock:
	uv pip compile pyproject.toml --extra dev --extra scale --generate-hashes --no-header \
	  --python-version $(LOCK_PYTHON) --python-platform x86_64-manylinux_2_28 $(UV_ARGS) -o requirements.lock

install: $(VENV)/.installed

# The raw dataset: from the DVC cache/remote when it has this version, else regenerated
# deterministically from params.yaml (data section) and added to DVC.
data: install
	@if [ ! -f data/galaxies.parquet ]; then \
	  dvc pull -q data.dvc 2>/dev/null || { \
	    echo "DVC remote has no copy of the dataset: generating it"; \
	    xpz data generate --force && dvc add -q data && dvc push -q data.dvc; }; \
	fi

# dvc repro: validate -> split -> train (the Prefect flow flows/train_pipeline.py: tune, train,
# evaluate, register/promote in MLflow); then the per-bin table, the run id and the champion.
pipeline: data
	dvc repro
	xpz data show
	@cat reports/bin_table.md
	@python -c "import json; r = json.load(open('reports/run.json')); print('MLflow run', r['run_id'], '| model version', r['model_version'], r.get('decision', ''), '| champion version', r['champion_version'])"

run: pipeline

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The quick gate (CI runs it before `make test`; .pre-commit-config.yaml runs the same tools).
check: lint typecheck test-fast

lint: install
	$(BIN)/ruff check src tests benchmarks flows
	$(BIN)/ruff format --check src tests benchmarks flows

typecheck: install
	$(BIN)/mypy

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow and not integration" $(PYTEST_ARGS)

# Fresh-clone check: regenerate the default dataset in a temporary folder and compare its md5
# with the one committed in data.dvc (the lock makes the bytes the same on every host).
check-data: install
	XPZ_CHECK_DATA=1 $(BIN)/python -m pytest -q tests/test_reproducible.py -k data_dvc

clean:
	rm -rf reports splits tuning .pytest_cache
