# Two commands matter: `make demo` and `make test`. Both create .venv on first use.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
# torchvision's PyPI wheels link torch's CUDA libraries, so torch is the CUDA build that matches
# them (it also runs on CPU-only machines; on this class of machine both come from local disk).
# Users with their own torch install it first and override TORCH_SPEC.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
DEEPSPEED_SPEC ?= deepspeed==0.19.8

SHELL := bash
.SHELLFLAGS := -eo pipefail -c
# pip's index warnings about this machine's local mirrors are noise; errors still show.
QUIET := 2>&1 | { grep -v -e 'is ignored: it is neither' -e 'BuildBackendWarning' || true; }

.PHONY: setup test test-fast demo bench clean

setup: $(VENV)/.done

# torch first (so nothing pulls a CUDA build), then deepspeed without build isolation
# (its setup.py imports torch), then the project with its dev, onnx and trackers extras (the ONNX
# export and the MLflow/W&B tests run in CI; trackers is the full `mlflow`: its SQLite store,
# `mlflow ui` and the `mlflow server` the tests start).
$(VENV)/.done: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel $(QUIET)
	$(BIN)/pip install -q $(TORCH_SPEC) $(QUIET)
	DS_BUILD_OPS=0 $(BIN)/pip install -q --no-build-isolation $(DEEPSPEED_SPEC) "transformers>=4.40" $(QUIET)
	$(BIN)/pip install -q --no-build-isolation -e ".[dev,onnx,trackers]" $(QUIET)
	$(BIN)/python .ci/prebuild_deepspeed_ops.py
	touch $@

# Two workers on two cores (tests/conftest.py gives each one thread). The slow tier goes out
# by file: the Slurm tests, which share one cluster, are one file, so one worker runs them one
# after another. `make test`: the fast tier first, so a broken change fails within minutes,
# then the rest; the 25 slowest tests of both at the end.
PYTEST  := $(BIN)/python -m pytest tests -n $(or $(TEST_WORKERS),2)
FAST    := -m "not slow and not slurm"
REPORTS := .test-reports

test: setup
	@mkdir -p $(REPORTS)
	$(PYTEST) $(FAST) --junitxml=$(REPORTS)/fast.xml $(PYTEST_ARGS)
	$(PYTEST) -m "slow or slurm" --dist loadfile --junitxml=$(REPORTS)/slow.xml $(PYTEST_ARGS) \
	  || status=$$?; $(BIN)/python .ci/slowest.py 25 $(REPORTS)/fast.xml $(REPORTS)/slow.xml; \
	  exit $${status:-0}

# The tier to run while working: no training processes of its own, no Slurm.
test-fast: setup
	$(PYTEST) $(FAST) $(PYTEST_ARGS)

demo: setup
	$(BIN)/shg demo --out runs/demo

bench: setup
	$(BIN)/python bench/data.py

clean:
	rm -rf $(VENV) runs .pytest_cache $(REPORTS)
