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

.PHONY: venv bench test test-all coverage example clean-venv

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

# branch coverage of the mining engine (README, "How it is tested"): the tests that run
# its steps, then the numba bodies' tests again as plain Python (NUMBA_DISABLE_JIT=1) so
# that coverage.py sees inside them; one process (no xdist), about 15 minutes on 2 cores
COV_TESTS := tests/test_engine.py tests/test_mining_kernels.py tests/test_numba_kernels.py \
	tests/test_numba_buckets.py tests/test_soft_kernel.py tests/test_fused.py tests/test_transforms.py
COV_RUN := -m coverage run --parallel-mode --branch --source=triplet_ref/mining
coverage: $(STAMP)
	$(PY) -m coverage erase
	$(PY) $(COV_RUN) -m pytest -q $(COV_TESTS)
	NUMBA_DISABLE_JIT=1 $(PY) $(COV_RUN) -m pytest -q tests/test_numba_kernels.py tests/test_numba_buckets.py \
		tests/test_mining_kernels.py tests/test_engine.py -k "numba and not jax and not strict and not split_rows"
	$(PY) -m coverage combine -q
	$(PY) -m coverage report -m

example: $(STAMP)
	$(PY) examples/digits/train.py --all $(ARGS)

clean-venv:
	rm -rf $(VENV)
