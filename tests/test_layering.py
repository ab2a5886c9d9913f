"""The architecture's rules, checked on the source: what may import what, and where I/O may live."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DAEMON = ROOT / "prefetchd"
CLIENT = ROOT / "client" / "prefetchd_client"

DAEMON_DEPENDENCIES = {"aiobotocore", "aiohttp", "botocore", "boto3", "uvloop", "prometheus_client", "click"}
IO_MODULES = {"socket", "asyncio", "time", "logging", "subprocess", "threading", "mmap", "select", "uvloop"}
PURE = [
    *sorted((DAEMON / "formats").glob("*.py")),
    *sorted((DAEMON / "plan").glob("*.py")),
    DAEMON / "fetch" / "policy.py",
    DAEMON / "fetch" / "aimd.py",
    DAEMON / "fetch" / "window.py",
    DAEMON / "fetch" / "hedge.py",
    DAEMON / "decode" / "mnist.py",
    DAEMON / "testing" / "fault_plan.py",
    CLIENT / "protocol.py",
    CLIENT / "layout.py",
    CLIENT / "errors.py",
    CLIENT / "resume.py",
]


def _imports(path: Path) -> set[str]:
    """Top-level names of every module `path` imports (relative imports excluded)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _sources(root: Path) -> list[Path]:
    return sorted(root.rglob("*.py"))


@pytest.mark.parametrize("path", PURE, ids=lambda p: str(p.relative_to(ROOT)))
def test_pure_modules_do_no_io(path: Path) -> None:
    assert not _imports(path) & (IO_MODULES | DAEMON_DEPENDENCIES)


@pytest.mark.parametrize("path", _sources(CLIENT), ids=lambda p: str(p.relative_to(ROOT)))
def test_client_imports_only_numpy_and_the_standard_library(path: Path) -> None:
    allowed = set(sys.stdlib_module_names) | {"numpy", "prefetchd_client"}
    if path.name in ("mxnet.py", "mxnet_s3.py"):
        allowed.add("mxnet")  # the adapters, imported lazily
    if path.name == "torch.py":
        allowed.add("torch")  # the PyTorch adapter, imported lazily
    assert _imports(path) <= allowed, _imports(path) - allowed


def test_mxnet_loads_only_when_an_adapter_is_asked_for() -> None:
    eager = [p for p in _sources(CLIENT) if "mxnet" in _imports(p)]
    assert sorted(p.name for p in eager) == ["mxnet.py", "mxnet_s3.py"]
    init = (CLIENT / "__init__.py").read_text()
    assert "from .adapters import mxnet" in init.split("def __getattr__")[1], "imported inside __getattr__ only"


def test_torch_loads_only_when_its_adapter_is_asked_for() -> None:
    eager = [p.relative_to(CLIENT).as_posix() for p in _sources(CLIENT) if "torch" in _imports(p)]
    assert eager == ["adapters/torch.py"]
    init = (CLIENT / "__init__.py").read_text()
    assert "from .adapters import torch" in init.split("def __getattr__")[1], "imported inside __getattr__ only"


def test_botocore_is_seen_by_the_s3_modules_only() -> None:
    offenders = [
        str(p.relative_to(ROOT))
        for p in _sources(DAEMON)
        # testing/ runs S3 servers and proxies; bench/'s peer readers are the botocore readers we compare with
        if _imports(p) & {"botocore", "aiobotocore"} and p.parent.name not in ("testing", "bench")
    ]
    assert offenders == ["prefetchd/fetch/s3.py", "prefetchd/fetch/s3_errors.py"]  # the source, its error boundary


def test_aiohttp_serves_the_metrics_and_is_otherwise_aiobotocores() -> None:
    users = [
        str(p.relative_to(ROOT))
        for p in _sources(DAEMON)
        if "aiohttp" in _imports(p) and p.parent.name not in ("testing", "bench")
    ]
    # s3_errors.py sorts aiobotocore's transport errors; the bulk bytes take fetch/range_get.py, not aiohttp
    assert users == ["prefetchd/fetch/s3_errors.py", "prefetchd/observe/http.py"]


def test_only_config_reads_the_environment() -> None:
    readers = [
        str(p.relative_to(ROOT))
        for p in [*_sources(DAEMON), *_sources(CLIENT)]
        if "os.environ" in p.read_text() and p.parent.name != "testing"
    ]
    # partition.py reads RANK and WORLD_SIZE only inside partition_from_env(), when the trainer asks
    assert sorted(readers) == [
        "client/prefetchd_client/autostart.py",
        "client/prefetchd_client/partition.py",
        "prefetchd/config.py",
    ]


def test_no_fire_and_forget_tasks() -> None:
    for path in _sources(DAEMON):
        text = path.read_text()
        assert "asyncio.create_task" not in text and "ensure_future" not in text, path


def test_no_shared_memory_habits_that_leak_or_hang() -> None:
    for path in [*_sources(DAEMON), *_sources(CLIENT)]:
        text = path.read_text()
        for habit in ("shared_memory", "SharedMemory(", "atexit", "resource_tracker"):
            assert habit not in text, f"{path}: {habit}"
    for path in [*_sources(DAEMON / "ring"), CLIENT / "ring.py", CLIENT / "layout.py"]:
        assert "sleep(" not in path.read_text(), path
