# Two commands do all set-up on a fresh machine:  make demo  and  make test.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
TEST_STAMP := $(VENV)/.installed-test-stamp
EXTRAS ?= datasets,tune,images,dev
TEST_EXTRAS ?= tensorboard,mlflow,notebook,notebook-test,postgres

# The vision tests need torchvision and timm, which need the registry's full torch build (it runs
# on a CPU too, ~5 GB): a separate environment, so that the main one keeps the small CPU build.
VISION_VENV ?= .venv-vision
VISION_STAMP := $(VISION_VENV)/.installed-stamp

.PHONY: setup demo test test-vision bench lint clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# The CPU build of torch first, pinned: an unpinned torch pulls gigabytes of CUDA packages.
	$(PY) -m pip install --quiet -c constraints.txt torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e ".[$(EXTRAS)]"
	touch $(STAMP)

# The loggers' own packages, so that their tests read back what was written, and a Jupyter kernel
# with ipywidgets for the notebook tests (not needed to train).
$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -c constraints.txt -e ".[$(EXTRAS),$(TEST_EXTRAS)]"
	touch $(TEST_STAMP)

setup: $(STAMP)

demo: setup  ## the quickstart: digits with a small CNN
	$(VENV)/bin/traincraft fit

test: $(TEST_STAMP)  ## the whole test suite
	$(PY) -m pytest

$(VISION_STAMP): pyproject.toml
	test -x $(VISION_VENV)/bin/python || $(PYTHON) -m venv $(VISION_VENV)
	$(VISION_VENV)/bin/python -m pip install --quiet -e ".[datasets,dev,vision]"
	touch $(VISION_STAMP)

test-vision: $(VISION_STAMP)  ## torchvision and timm for real (their own environment)
	$(VISION_VENV)/bin/python -m pytest tests/vision -p no:cacheprovider

bench: setup  ## benchmarks (not tests): ratios against hand-written loops and peers
	$(PY) -m pip install --quiet -c constraints.txt -e ".[$(EXTRAS),bench]"
	$(PY) bench/overhead.py
	$(PY) bench/startup.py
	$(PY) bench/checkpoint_cost.py
	$(PY) bench/quickstart.py
	$(PY) bench/attribution.py
	$(PY) bench/finetune.py
	$(PY) bench/images.py
	$(PY) bench/diabetes.py
	$(PY) bench/mapped_memory.py

lint: setup
	$(VENV)/bin/ruff check src tests bench examples

clean:
	rm -rf $(VENV) $(VISION_VENV) build dist src/*.egg-info .pytest_cache
