# The README's commands. Each creates the virtual environment first if it is missing or stale.
#   make demo   embedded S3 server + Fashion-MNIST + daemon + MXNet training from s3://, prints accuracy
#   make test   lint, types, and the whole test suite
#   make bench  the benchmark (figures and ratios, docs/benchmarks.md); e.g. BENCH_ARGS="--latency-ms 30 --latency-ms 100"
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
UV_VERSION := 0.13.9
STAMP := $(VENV)/.installed
# A second environment with numpy 2 and no MXNet: the client and the daemon must run there too.
VENV2 ?= .venv-numpy2
STAMP2 := $(VENV2)/.installed
# PyTorch's CPU build (the second environment's torch) is a wheel on the machines' disk, not on PyPI.
TORCH_WHEELS ?= /opt/wheels

.PHONY: demo test lint typecheck pytest pytest-numpy2 bench lock clean

$(STAMP): requirements/lock.txt pyproject.toml client/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(VENV)/bin/uv pip sync --quiet --python $(PY) requirements/lock.txt
	$(VENV)/bin/uv pip install --quiet --python $(PY) --no-deps -e ./client -e .
	touch $(STAMP)

$(STAMP2): requirements/lock-numpy2.txt pyproject.toml client/pyproject.toml
	$(PYTHON) -m venv $(VENV2)
	$(VENV2)/bin/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(VENV2)/bin/uv pip sync --quiet --python $(VENV2)/bin/python --find-links $(TORCH_WHEELS) requirements/lock-numpy2.txt
	$(VENV2)/bin/uv pip install --quiet --python $(VENV2)/bin/python --no-deps -e ./client -e .
	touch $(STAMP2)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) -m prefetchd demo

test: lint typecheck pytest pytest-numpy2

lint: $(STAMP)
	$(VENV)/bin/ruff check prefetchd client tests
	$(VENV)/bin/ruff format --check prefetchd client tests

typecheck: $(STAMP)
	$(VENV)/bin/mypy

# torch is in the numpy-2 environment only: its tests carry the torch mark and run in pytest-numpy2.
TORCH_MODULES := tests/e2e/test_torch_dataset.py
pytest: $(STAMP)
	$(PY) -m pytest -m "not torch" $(TORCH_MODULES:%=--ignore=%) $(PYTEST_ARGS)

# Everything that does not need MXNet, again on numpy 2 (tests that need MXNet carry the mxnet mark;
# these modules import it at the top, so they are not even collected there).
MXNET_MODULES := tests/e2e/test_mnist_iter.py tests/e2e/test_training.py tests/deploy/test_compose_services.py \
	tests/e2e/test_resume_mxnet.py tests/client/test_mxnet_host_buffers.py
# The HTTP and fetch layers, the daemon's settings and the test servers touch no numpy: once, in the first
# environment, is enough.
NO_NUMPY_MODULES := tests/testing tests/fetch/test_http11.py tests/fetch/test_range_get.py tests/fetch/test_lean_s3.py \
	tests/fetch/test_s3_retries.py tests/fetch/test_s3_faults.py tests/fetch/test_aimd.py tests/fetch/test_admission.py \
	tests/fetch/test_hedge.py tests/fetch/test_hedging.py \
	tests/deploy/test_compose.py tests/deploy/test_dockerfile.py tests/deploy/test_observability.py \
	tests/fetch/test_policy.py tests/fetch/test_window.py tests/fetch/test_scheduler.py tests/fetch/test_sources.py \
	tests/serve tests/test_config.py tests/test_redaction.py
# The control protocol is JSON frames and the daemon's handling of them: no array crosses them either.
NO_NUMPY_MODULES += tests/client/test_protocol.py tests/client/test_golden.py tests/e2e/test_control_fuzz.py \
	tests/e2e/test_logging.py tests/tools/test_status.py
# The daemon's life and its operations (crashes, security, soak, caches, metrics, faults, uploads) read and
# decode through the same code the iterator and reader modules run on numpy 2 below: once is enough.
NO_NUMPY_MODULES += tests/e2e/test_crashes.py tests/e2e/test_security.py tests/e2e/test_soak.py \
	tests/e2e/test_checkpoints.py tests/e2e/test_disk_cache.py tests/e2e/test_epoch_cache.py tests/e2e/test_metrics.py \
	tests/e2e/test_autostart.py tests/e2e/test_ring_release.py tests/faults tests/tools/test_sync.py
pytest-numpy2: $(STAMP2)
	$(VENV2)/bin/python -m pytest -m "not mxnet" $(MXNET_MODULES:%=--ignore=%) $(NO_NUMPY_MODULES:%=--ignore=%) \
		$(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) -m prefetchd bench $(BENCH_ARGS)

# Re-pin every dependency (needs the registry); commit requirements/lock.txt afterwards.
# The images' locks (docker/Dockerfile) take their pins from the first two: they never disagree with the suite's.
lock: $(STAMP)
	$(VENV)/bin/uv pip compile --quiet --python-version 3.11 --no-header requirements/dev.in -o requirements/lock.txt
	$(VENV)/bin/uv pip compile --quiet --python-version 3.11 --no-header --find-links $(TORCH_WHEELS) requirements/numpy2.in \
		-o requirements/lock-numpy2.txt
	$(VENV)/bin/uv pip compile --quiet --python-version 3.11 --no-header requirements/daemon.in \
		-c requirements/lock-numpy2.txt -o requirements/lock-daemon.txt
	$(VENV)/bin/uv pip compile --quiet --python-version 3.11 --no-header requirements/trainer.in \
		-c requirements/lock.txt -o requirements/lock-trainer.txt

clean:
	rm -rf $(VENV) $(VENV2) .pytest_cache .mypy_cache .ruff_cache
