# Quick start: `make demo` (train + compress + report on the built-in default) and `make test`.
PYTHON ?= python3
VENV ?= .venv
# Here a CPU wheel of torch 2.13.0 lies on local disk; elsewhere override, e.g. TORCH_SPEC="torch>=2.4".
TORCH_SPEC ?= torch==2.13.0
SHARED_DATA := $(abspath ../shared/data)
export LMSHRINK_DATA ?= $(if $(wildcard $(SHARED_DATA)/ptb),$(SHARED_DATA),)

BIN := $(VENV)/bin

.PHONY: demo test install install-test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: $(VENV)/.installed
	$(BIN)/lmshrink demo --out demo-out

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) demo-out
