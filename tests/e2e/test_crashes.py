"""A crash on either side never hangs the other."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from prefetchd.testing.daemon_process import DaemonProcess
from prefetchd_client import DaemonUnavailable, idx_iter


def test_killed_daemon_is_a_clear_error_in_the_trainer_within_two_seconds(
    fresh_daemon: DaemonProcess, fashion_urls: dict[str, str]
) -> None:
    it = idx_iter(
        fashion_urls["train-images-idx3-ubyte"],
        fashion_urls["train-labels-idx1-ubyte"],
        batch_size=100,
        socket_path=fresh_daemon.socket_path,
    )
    next(it)
    fresh_daemon.stop(signal.SIGKILL)
    started = time.monotonic()
    with pytest.raises(DaemonUnavailable, match=r"closed the connection|went away|reset the connection"):
        for _ in it:  # batches already in the ring may still come; then the EOF
            pass
    assert time.monotonic() - started < 2.0
    it.close()


CLIENT = """
import sys
from prefetchd_client import idx_iter
it = idx_iter(sys.argv[1], sys.argv[2], batch_size=10, socket_path=sys.argv[3])
next(it)
print("reading", flush=True)
sys.stdin.read()
"""


def test_killed_trainer_leaves_the_daemon_serving_others(
    fresh_daemon: DaemonProcess, fashion_urls: dict[str, str]
) -> None:
    image, label = fashion_urls["train-images-idx3-ubyte"], fashion_urls["train-labels-idx1-ubyte"]
    trainer = subprocess.Popen(
        [sys.executable, "-c", CLIENT, image, label, str(fresh_daemon.socket_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert trainer.stdout is not None and trainer.stdout.readline() == "reading\n"
    trainer.kill()
    trainer.wait()
    with idx_iter(image, label, batch_size=1000, socket_path=fresh_daemon.socket_path) as it:
        assert sum(len(lb) for _, lb in it) == 60_000
    assert "stream 1 closed" in fresh_daemon.log()
