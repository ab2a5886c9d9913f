"""With no daemon listening, a client starts one for the session (and says so); a running one is used first."""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from prefetchd_client import DaemonUnavailable, idx_iter


@pytest.fixture
def socket_path() -> Iterator[Path]:
    """A socket path nobody serves yet; any daemon started on it is stopped afterwards."""
    directory = Path(tempfile.mkdtemp(prefix="pfd-auto-"))
    path = directory / "control.sock"
    yield path
    lock = directory / "control.sock.lock"
    if lock.exists() and lock.read_text().strip():
        _stop(int(lock.read_text()))
    shutil.rmtree(directory, ignore_errors=True)


def _stop(pid: int) -> None:
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        os.kill(pid, signal.SIGTERM)
        assert select.select([pidfd], [], [], 20)[0], f"autostarted daemon {pid} did not exit on SIGTERM"
    finally:
        os.close(pidfd)


def _count(socket_path: Path, fashion_dir: Path, *, autostart: bool | None = None) -> int:
    with idx_iter(
        str(fashion_dir / "t10k-images-idx3-ubyte"),
        str(fashion_dir / "t10k-labels-idx1-ubyte"),
        batch_size=500,
        socket_path=socket_path,
        autostart=autostart,
    ) as it:
        return sum(len(label) for _, label in it)


def test_client_starts_a_daemon_when_none_listens_and_says_so(
    socket_path: Path, fashion_dir: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PREFETCHD_AUTOSTART", "1")
    assert _count(socket_path, fashion_dir) == 10_000
    assert re.search(r"no daemon was listening at .*control\.sock, so this process started one", caplog.text)
    assert "PREFETCHD_AUTOSTART=0" in caplog.text
    caplog.clear()
    assert _count(socket_path, fashion_dir) == 10_000
    assert "started one" not in caplog.text, "a running daemon is always used first"


def test_autostart_is_off_with_the_environment_variable(
    socket_path: Path, fashion_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PREFETCHD_AUTOSTART", "0")
    with pytest.raises(DaemonUnavailable, match="no prefetchd daemon is listening"):
        _count(socket_path, fashion_dir)
    assert not socket_path.exists()


def test_two_trainers_starting_at_once_share_one_daemon(socket_path: Path, fashion_dir: Path) -> None:
    program = (
        "import sys; from pathlib import Path; from tests.e2e.test_autostart import _count; "
        "print(_count(Path(sys.argv[1]), Path(sys.argv[2]), autostart=True))"
    )
    env = {**os.environ, "PREFETCHD_AUTOSTART": "1", "PYTHONPATH": os.getcwd()}
    trainers = [
        subprocess.Popen(
            [sys.executable, "-c", program, str(socket_path), str(fashion_dir)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(2)
    ]
    outputs = [trainer.communicate(timeout=120) for trainer in trainers]
    assert [trainer.returncode for trainer in trainers] == [0, 0], outputs
    assert [out.strip() for out, _ in outputs] == ["10000", "10000"]
    starts = sum("so this process started one" in err for _, err in outputs)
    assert starts == 1, outputs
