# Two commands on a fresh machine (Python >= 3.10, make; the rest is installed here):
#
#   make quickstart   set up .venv, then run the quickstart on its bundled data
#   make test         set up .venv, then lint and run every test (what .ci/run runs)
#
# Set-up (both): a virtual environment in $(VENV) with `pip install -e '.[dev,docs]'` (the
# library with flax, the harness's extras, pytest, pytest-xdist, ruff, pyink, pre-commit, equinox,
# dm-haiku) and, where root and apt-get are there, the optional Fashion-MNIST package.
# It runs once; it reruns when pyproject.toml changes.
#
# Also: `make test-fast` (the developer's selection, -m "not slow"), `make floors` (the
# lowest declared jax/jaxlib/flax/optax, in their own venv), `make lint`, `make docs` (the
# documentation site, built strictly into site/; `make docs-serve` serves it).

VENV ?= .venv
PYTHON ?= python3
PYTEST_ARGS ?= -n auto --dist loadfile
BIN := $(VENV)/bin

.PHONY: setup quickstart test test-fast floors lint docs docs-serve

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,docs]'
	.ci/optional-data
	touch $@

quickstart: setup
	$(BIN)/python -m experiments.quickstart

lint: setup
	$(BIN)/ruff check .
	$(BIN)/pyink --check .

test: lint
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/python -m pytest -q -m 'not slow' $(PYTEST_ARGS)

floors:
	.ci/floors

docs: setup
	$(BIN)/mkdocs build --strict --site-dir site

docs-serve: setup
	$(BIN)/mkdocs serve --strict
