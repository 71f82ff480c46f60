# One entry point for users and CI. `make help` lists the targets.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# This machine's pip configuration may list extra local indexes; their "is ignored" lines are noise.
PIP_QUIET := grep -v "is ignored: it is neither a file nor a directory" || true

# Pipeline stages call `lic` and `dvc`: put the project environment first on PATH.
export PATH := $(abspath $(VENV))/bin:$(PATH)
export DVC_NO_ANALYTICS := 1
export MLFLOW_DISABLE_TELEMETRY := true
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: help setup test test-all test-fast pipeline lint format lock bench bench-scale clean stack-up stack-down

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

setup: $(STAMP) ## Install system packages, the locked Python dependencies and the project into .venv (idempotent)

$(STAMP): requirements.lock pyproject.toml infra/setup/system-deps.sh
	bash infra/setup/system-deps.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.lock 2>&1 | $(PIP_QUIET)
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e . 2>&1 | $(PIP_QUIET)
	$(PY) -m pip check
	touch $(STAMP)

test: setup ## Run the test suite (unit, integration, slow), except the whole-pipeline and multinode runs of test-all
	$(PY) -m pytest -m "not pipeline and not multinode" || test $$? -eq 5  # exit 5 = no tests collected

test-all: setup ## Run every test, also `make pipeline` in temporary clones and the no-shared-data two-node run
	$(PY) -m pytest || test $$? -eq 5

test-fast: setup ## Run the tests that are neither slow nor need local servers
	$(PY) -m pytest -m "not slow and not integration" || test $$? -eq 5

pipeline: setup ## Run the DVC pipeline (dvc.yaml) on the embedded default (offline, CPU); push to $LIC_DVC_REMOTE
	mkdir -p outputs
	lic data ensure-datasets  # a fresh clone lacks the (empty) datasets/ that datasets.dvc records
	if [ -n "$${LIC_DVC_REMOTE:-}" ]; then dvc remote add --local --default --force team "$$LIC_DVC_REMOTE"; fi
	dvc repro
	if [ -n "$${LIC_DVC_REMOTE:-}" ]; then dvc push; fi
	lic summary

lint: setup ## ruff check and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup ## Apply ruff fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

lock: setup ## Re-resolve requirements.lock from pyproject.toml and constraints.txt
	$(VENV)/bin/uv pip compile pyproject.toml --extra pipeline --extra test --extra dev -c constraints.txt \
		--python-version 3.11 --python-platform x86_64-manylinux_2_28 --quiet -o requirements.lock

bench: setup ## Run the benchmarks and write docs/benchmarks.md
	$(PY) -m bench

SCALE_IMAGES ?= 10000

bench-scale: setup ## The data stages on a synthetic corpus of SCALE_IMAGES images (docs/benchmarks.md, "Data stages at scale")
	$(PY) -m bench.scale --images $(SCALE_IMAGES)
	$(PY) -m bench.scale --search 1000000

# Where the local stack keeps env.sh and run/, and more `lic stack up` options (e.g. --s3-port 9100).
STACK_DIR ?= infra/local
STACK_ARGS ?=

stack-up: setup ## Start S3 (moto), an MLflow server and a 2-node Ray here; writes infra/local/env.sh
	lic stack up --dir $(STACK_DIR) $(STACK_ARGS)

stack-down: ## Stop everything stack-up started (by PID) and remove infra/local/env.sh
	lic stack down --dir $(STACK_DIR)

clean: ## Remove caches and build outputs (keeps .venv and DVC-tracked data)
	rm -rf .pytest_cache .ruff_cache build *.egg-info
	find . -name __pycache__ -type d -not -path "./$(VENV)/*" -prune -exec rm -rf {} +
