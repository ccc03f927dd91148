# Two commands do all set-up on a fresh machine:  make demo  and  make test.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
TEST_STAMP := $(VENV)/.installed-test-stamp
EXTRAS ?= datasets,tune,dev
TEST_EXTRAS ?= tensorboard,mlflow

.PHONY: setup demo test bench lint clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# The CPU build of torch first, pinned: an unpinned torch pulls gigabytes of CUDA packages.
	$(PY) -m pip install --quiet -c constraints.txt torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e ".[$(EXTRAS)]"
	touch $(STAMP)

# The loggers' own packages, so that their tests read back what was written (not needed to train).
$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -c constraints.txt -e ".[$(EXTRAS),$(TEST_EXTRAS)]"
	touch $(TEST_STAMP)

setup: $(STAMP)

demo: setup  ## the quickstart: digits with a small CNN
	$(VENV)/bin/traincraft fit

test: $(TEST_STAMP)  ## the whole test suite
	$(PY) -m pytest

bench: setup  ## benchmarks (not tests): ratios against hand-written loops and peers
	$(PY) -m pip install --quiet -c constraints.txt -e ".[$(EXTRAS),bench]"
	$(PY) bench/overhead.py
	$(PY) bench/startup.py
	$(PY) bench/checkpoint_cost.py
	$(PY) bench/quickstart.py
	$(PY) bench/attribution.py
	$(PY) bench/finetune.py

lint: setup
	$(VENV)/bin/ruff check src tests bench examples

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
