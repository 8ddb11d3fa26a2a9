# The two quick-start commands (see README):
#   make bench   - the cross-backend benchmark against the peers (quick sweep; ARGS=--full for all sizes)
#   make test    - the whole test suite on every installed CPU backend
# Each creates or reuses the project-local virtualenv .venv on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
ARGS   ?=
# the suite runs in this many pytest-xdist workers (CI and the reference machine have 2 cores)
WORKERS ?= 2

.PHONY: venv bench test test-all example clean-venv

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -c constraints.txt -e ".[test,bench,examples]"
	touch $(STAMP)

bench: $(STAMP)
	$(PY) benchmarks/run.py $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -n $(WORKERS) $(ARGS)

test-all: $(STAMP)
	$(PY) -m pytest -n $(WORKERS) --runslow $(ARGS)

example: $(STAMP)
	$(PY) examples/digits/train.py --all $(ARGS)

clean-venv:
	rm -rf $(VENV)
