# Set-up, tests and the example pipeline. Everything the project needs is installed from here.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
BASE   := $(VENV)/.installed-base
STAMP  := $(VENV)/.installed

.PHONY: setup core engine test test-real-nodes demo lint bench clean

# Everything the tests need: dstack, the test extras (app servers, moto, linters), the engine
# and the GCS emulator.
setup: $(STAMP) core
	bash scripts/gcs-emulator.sh install

# What running dstack needs, and no more (`make demo`): dstack and the engine.
core: $(BASE) engine
	@# Byte-code for the editable sources, so that start-up does not compile them even where
	@# PYTHONDONTWRITEBYTECODE is set (every dstack command and engine plugin imports them).
	$(BIN)/python -m compileall -q dstack stacks providers cli

$(BASE): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $(BASE)

$(STAMP): $(BASE)
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# The Pulumi engine at the SDK's version, under the dstack home (idempotent).
engine: $(BASE)
	$(BIN)/python -m dstack.stacks.engine_install

test: setup
	bash scripts/system-deps.sh
	bash scripts/kube-tools.sh install
	$(BIN)/ruff check .
	bash scripts/typecheck.sh
	$(BIN)/pytest

# Tier B of the Kubernetes tests: real containers (containerd, runc, a kubelet), as root.
test-real-nodes: setup
	bash scripts/kube-tools.sh install-kubelet
	bash scripts/system-deps.sh real-nodes
	$(BIN)/pytest --real-nodes tests/integration/test_kubernetes_real.py

demo: core
	bash scripts/demo.sh

lint: $(STAMP)
	$(BIN)/ruff check .
	bash scripts/typecheck.sh

bench: setup
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache .typecheck
