# xpz: two commands for a fresh clone.
#   make run   set up .venv, bring the dataset (DVC remote, else regenerate), run the pipeline
#   make test  set up .venv (dev + scale extras), run the tests
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

.PHONY: run test install data pipeline clean help

help:
	@echo "make run   - set up .venv and run the main job on the embedded default dataset"
	@echo "make test  - set up .venv (with dev extra) and run the test suite"

$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,scale]'
	@touch $@

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

clean:
	rm -rf reports splits tuning .pytest_cache
