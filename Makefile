# The two commands of the README: `make demo` and `make test`. Both set everything up first and
# are idempotent: the virtual environment is rebuilt only when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The CPU build of torch when no NVIDIA GPU is present (it lies on local disk on our machines);
# otherwise the default build from the package index. Override with `make TORCH=... test`.
TORCH ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo torch || echo torch==2.13.0)
FMNIST_DIR := /usr/share/datasets/fashion-mnist

DOCS_DIR := build/docs
# The public modules: the package, its core modules and every subpackage (pdoc follows __all__, so
# submodules that a package does not re-export must be named here to get a page).
DOC_MODULES := stablerank stablerank.linalg stablerank.srn stablerank.apply stablerank.layers \
	stablerank.data stablerank.metrics stablerank.models stablerank.train stablerank.repro \
	stablerank.config stablerank.cli \
	stablerank.config.classify stablerank.config.gan stablerank.config.reproduce \
	stablerank.data.cifar stablerank.data.datasets stablerank.data.labels stablerank.data.loader \
	stablerank.data.splits stablerank.metrics.complexity stablerank.metrics.divergence \
	stablerank.metrics.ema stablerank.metrics.features stablerank.metrics.gan \
	stablerank.metrics.lipschitz stablerank.models.alexnet stablerank.models.classifiers \
	stablerank.models.densenet stablerank.models.gan stablerank.models.resnet \
	stablerank.models.small stablerank.models.vgg

.PHONY: help test test-oldest demo setup data docs lint bench clean

# The first target, so that a bare `make` says what there is instead of installing.
help:
	@echo "make demo    set up, then run the main job (stablerank reproduce --preset quick)"
	@echo "make test    set up, then run every test"
	@echo "make test-oldest  the fast tests on the oldest torch pyproject.toml admits (downloads GB)"
	@echo "make setup   the virtual environment .venv (torch, the package, its extras)"
	@echo "make data    Fashion-MNIST from Debian's package when missing (root and apt)"
	@echo "make docs    the API reference in $(DOCS_DIR)"
	@echo "make lint    ruff check and format check"
	@echo "make bench   SRN against SN, timed (benchmarks/bench_srn.py)"
	@echo "make clean   remove .venv, caches, build outputs"

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null
	@$(PY) -m pip install -q --disable-pip-version-check "$(TORCH)"
	@$(PY) -m pip install -q --disable-pip-version-check -e ".[experiments,dev]"
	@touch $(STAMP)

# Fashion-MNIST from Debian's package when missing (needs root and apt); otherwise say how to get it.
data:
	@test -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz \
	 || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] \
	      && { apt-get update -qq >/dev/null && apt-get install -y -qq dataset-fashion-mnist >/dev/null; } ; } ; \
	 test -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz \
	 || echo "note: Fashion-MNIST is not in $(FMNIST_DIR): the tests that read it are skipped, and make demo stops before any run; run 'sudo apt-get install dataset-fashion-mnist', or pass --data-dir" >&2

# API reference from the docstrings (pdoc, Google style, maths rendered). `make test` checks that
# it builds: tests/test_packaging.py runs this recipe's pdoc command on DOC_MODULES.
docs: setup
	@rm -rf $(DOCS_DIR)
	@$(PY) -m pdoc --docformat google --math -o $(DOCS_DIR) $(DOC_MODULES)
	@echo "API docs: $(DOCS_DIR)/index.html" >&2

test: setup data
	@$(PY) -m pytest

# The oldest torch that pyproject.toml admits, in its own environment: a CUDA build from the package
# index (several GB; torch before 2.4 needs numpy 1.x). The fast tests only: the floor is checked
# by hand before a release, not by `make test` (docs/testing.md has the last result).
OLDEST_VENV := .venv-oldest
OLDEST_TORCH := torch==2.3.1
test-oldest: data
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] > (3, 12))' || { echo \
	 "$(OLDEST_TORCH) has wheels for Python 3.8-3.12 only: make PYTHON=python3.12 test-oldest" >&2; \
	 exit 2; }
	@test -x $(OLDEST_VENV)/bin/python || $(PYTHON) -m venv $(OLDEST_VENV)
	@$(OLDEST_VENV)/bin/python -m pip install -q --disable-pip-version-check "$(OLDEST_TORCH)" \
	 "numpy<2" -e ".[experiments,dev]"
	@$(OLDEST_VENV)/bin/python -m pytest -m "not slow"

demo: setup data
	@$(PY) -m stablerank reproduce --preset quick

lint: setup
	@$(PY) -m ruff check src tests benchmarks scripts
	@$(PY) -m ruff format --check src tests benchmarks scripts

bench: setup
	@$(PY) benchmarks/bench_srn.py

clean:
	rm -rf $(VENV) $(OLDEST_VENV) .pytest_cache .ruff_cache .hypothesis build src/*.egg-info
	find src tests benchmarks scripts -name __pycache__ -type d -prune -exec rm -rf {} +
