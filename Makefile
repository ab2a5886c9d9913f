# The README's commands. Each creates the virtual environment first if it is missing or stale.
#   make demo   embedded S3 server + Fashion-MNIST + daemon + MXNet training from s3://, prints accuracy
#   make test   lint, types, and the whole test suite
#   make bench  the benchmark (figures and ratios, docs/benchmarks.md)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
UV_VERSION := 0.13.9
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck pytest bench lock clean

$(STAMP): requirements/lock.txt pyproject.toml client/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(VENV)/bin/uv pip sync --quiet --python $(PY) requirements/lock.txt
	$(VENV)/bin/uv pip install --quiet --python $(PY) --no-deps -e ./client -e .
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) -m prefetchd demo

test: lint typecheck pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check prefetchd client tests
	$(VENV)/bin/ruff format --check prefetchd client tests

typecheck: $(STAMP)
	$(VENV)/bin/mypy

pytest: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) -m prefetchd bench

# Re-pin every dependency (needs the registry); commit requirements/lock.txt afterwards.
lock: $(STAMP)
	$(VENV)/bin/uv pip compile --quiet --python-version 3.11 --no-header requirements/dev.in -o requirements/lock.txt

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
