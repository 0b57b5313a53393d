# Two commands on a fresh machine: `make demo` (the editor) and `make test` (the suite).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export GRADIO_ANALYTICS_ENABLED := False
export HF_HUB_OFFLINE := 1

.PHONY: setup demo test bench

# The pinned requirements, then this checkout's packages (flow_model, app, experiments) as an editable install, in one
# stamped step: a change to either file re-runs it.
$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q -e . --no-deps
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(PY) app.py

test: setup
	$(PY) -m pytest -q tests

bench: setup
	$(PY) bench/throughput.py
