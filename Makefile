# medflow — two set-up commands: `make demo` and `make test` (both create .venv/ first).
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PY ?= python3.11
# pip prints one 'Location ... is ignored' line per package on machines with a local mirror config
QUIET_PIP := { grep -v "is ignored" || true; }
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_LOGGING_LEVEL ?= WARNING

.PHONY: venv casebase demo test bench lint typecheck clean

venv: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip 2>&1 | $(QUIET_PIP)
	$(BIN)/python -m pip install --quiet -r requirements.lock 2>&1 | $(QUIET_PIP)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# the stored case base the demo places its patients against (sample/sts_casebase/README.md)
SHARED ?= ../shared/data
casebase: venv
	$(BIN)/medflow casebase build $(SHARED)/sts_cohort --out sample/sts_casebase --config docs/sts_cohort.yaml

demo: venv
	$(BIN)/medflow demo --workspace $(or $(WORKSPACE),medflow-demo)

test: venv
	$(BIN)/python -m pytest tests

# BENCH selects benchmarks by name substring (e.g. make bench BENCH="voxel cohort"); peers installed first
bench: venv
	bash scripts/bench-peers.sh $(VENV)
	$(BIN)/python -m bench.run $(BENCH)

lint: venv
	$(BIN)/ruff check medflow imaging knowledge storage tasks flows tests bench

typecheck: venv
	$(BIN)/mypy

clean:
	rm -rf $(VENV) medflow-demo
