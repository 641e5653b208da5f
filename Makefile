# `make demo` and `make test` each create .venv and install what they need, pinned by
# constraints.txt. The stamp files make a second run skip installation.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
CORE_STAMP := $(VENV)/.boxgym-core
FULL_STAMP := $(VENV)/.boxgym-full
DEMO_OUT ?= runs/demo

.PHONY: demo test lint format bench clean-venv

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

demo: $(CORE_STAMP)
	$(BIN)/python -m boxgym.demo --out $(DEMO_OUT)

test: $(FULL_STAMP)
	$(BIN)/python -m pytest -q

lint: $(CORE_STAMP)
	$(BIN)/ruff check boxgym tests benchmarks experiments
	$(BIN)/ruff format --check boxgym tests benchmarks experiments

format: $(CORE_STAMP)
	$(BIN)/ruff check --fix boxgym tests benchmarks experiments
	$(BIN)/ruff format boxgym tests benchmarks experiments

bench: $(FULL_STAMP)
	$(BIN)/python benchmarks/run_all.py

clean-venv:
	rm -rf $(VENV)
