"""A crash on either side never hangs the other, leaks nothing, and leaves no file behind; neither does a shutdown."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from prefetchd.testing.daemon_process import DaemonProcess
from prefetchd.testing.embedded_s3 import EmbeddedS3
from prefetchd_client import BatchIterator, DaemonUnavailable, idx_iter, recordio_iter
from tests.daemon_probe import (
    decode_workers,
    descriptor_kinds,
    held_apart_from_connections,
    rings,
    settled,
    shm_names,
    within,
)


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


# --- a killed trainer gives back everything within a second ---------------------------------------------------

FORKING_CLIENT = """
import os, sys
from prefetchd_client import idx_iter
it = idx_iter(sys.argv[1], sys.argv[2], batch_size=10, socket_path=sys.argv[3])
next(it)
if sys.argv[4] == "fork" and os.fork() == 0:  # a DataLoader-style child holds the socket after its parent dies
    sys.stdin.read()
    os._exit(0)
print("reading", flush=True)
sys.stdin.read()
"""
CONCURRENCY = 8


@pytest.fixture
def uncached_daemon(s3_server: EmbeddedS3) -> Iterator[DaemonProcess]:
    """No epoch cache: a stream always has ranged GETs in flight, which a kill must cancel too."""
    args = ("--cache-size", "0", "--concurrency", str(CONCURRENCY))
    with DaemonProcess(env=s3_server.environment(), args=args) as process:
        yield process


@pytest.mark.parametrize("trainer", ["plain", "fork"])
def test_killed_trainer_frees_its_stream_ring_and_fetches_within_a_second(
    uncached_daemon: DaemonProcess, fashion_urls: dict[str, str], trainer: str
) -> None:
    shm_before = shm_names()
    image, label = fashion_urls["train-images-idx3-ubyte"], fashion_urls["train-labels-idx1-ubyte"]
    with idx_iter(image, label, batch_size=1000, socket_path=uncached_daemon.socket_path) as it:
        next(it)  # a stream opened and closed: what the daemon keeps between streams is the baseline
    assert within(1.0, lambda: rings(uncached_daemon.pid) == 0)
    baseline = settled(lambda: held_apart_from_connections(uncached_daemon.pid))
    killed = subprocess.Popen(
        [sys.executable, "-c", FORKING_CLIENT, image, label, str(uncached_daemon.socket_path), trainer],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert killed.stdout is not None and killed.stdout.readline() == "reading\n"
        assert rings(uncached_daemon.pid) == 1
        killed.kill()
        killed.wait()
        freed = within(
            1.0,
            lambda: rings(uncached_daemon.pid) == 0 and held_apart_from_connections(uncached_daemon.pid) == baseline,
        )
        assert freed, (
            f"1 s after the kill the daemon holds {rings(uncached_daemon.pid)} rings and "
            f"{held_apart_from_connections(uncached_daemon.pid)}, not {baseline}"
        )
        assert descriptor_kinds(uncached_daemon.pid)["tcp socket"] <= CONCURRENCY  # only the kept-alive pool
    finally:
        assert killed.stdin is not None
        killed.stdin.close()  # the forked child, if any, reads EOF and exits
    assert shm_names() == shm_before  # rings are memfds: nothing was ever named in /dev/shm
    with idx_iter(
        fashion_urls["t10k-images-idx3-ubyte"],
        fashion_urls["t10k-labels-idx1-ubyte"],
        batch_size=1000,
        socket_path=uncached_daemon.socket_path,
    ) as it:
        assert sum(len(lb) for _, lb in it) == 10_000


# --- a killed decode worker: its batch is decoded again, the stream goes on --------------------------------------

IMAGE_OPTIONS: dict[str, Any] = {"batch_size": 2, "data_shape": (3, 32, 32), "resize": 40, "prefetch": 2}


def _epochs(it: BatchIterator, count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    epochs = []
    for _ in range(count):
        batches = [(data.copy(), label.copy()) for data, label in it]
        epochs.append((np.concatenate([d for d, _ in batches]), np.concatenate([lb for _, lb in batches])))
    return epochs


@pytest.mark.mxnet  # the image records are written with MXNet's own writer
def test_killed_decode_workers_are_replaced_and_their_batches_decoded_again(
    s3_server: EmbeddedS3, caltech_rec: str
) -> None:
    with DaemonProcess(env=s3_server.environment(), args=("--decode-processes", "2")) as daemon:
        with recordio_iter(caltech_rec, socket_path=daemon.socket_path, **IMAGE_OPTIONS) as it:
            expected = _epochs(it, 3)
        with recordio_iter(caltech_rec, socket_path=daemon.socket_path, **IMAGE_OPTIONS) as it:
            first, _ = next(it)
            first = first.copy()
            workers = decode_workers(daemon.pid)
            assert len(workers) == 2
            os.kill(workers[0], signal.SIGKILL)  # one left holding the ring: it takes the jobs
            rest = _epochs(it, 1)[0]
            assert np.array_equal(np.concatenate([first, rest[0]]), expected[0][0])
            os.kill(workers[1], signal.SIGKILL)  # none left: the daemon's own threads decode into the ring
            for got, want in zip(_epochs(it, 2), expected[1:], strict=True):
                assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
        # a new stream gets new workers
        with recordio_iter(caltech_rec, socket_path=daemon.socket_path, **IMAGE_OPTIONS) as it:
            assert np.array_equal(_epochs(it, 1)[0][0], expected[0][0])
        assert len(set(decode_workers(daemon.pid)) - set(workers)) == 2
        assert daemon.log().count("decode worker") >= 2 + 2 + 2  # started, died (twice), started again


# --- start-up after a crash, and a clean shutdown ---------------------------------------------------------------


def test_a_daemon_starting_where_one_was_killed_removes_its_socket_and_serves(
    s3_server: EmbeddedS3, fashion_urls: dict[str, str], tmp_path: Path
) -> None:
    socket_path = tmp_path / "run" / "control.sock"
    killed = DaemonProcess(env=s3_server.environment(), socket_path=socket_path, log_path=tmp_path / "first.log")
    killed.start()
    killed.stop(signal.SIGKILL)
    assert socket_path.is_socket() and socket_path.with_name("control.sock.lock").exists()  # left behind
    with DaemonProcess(env=s3_server.environment(), socket_path=socket_path, log_path=tmp_path / "second.log"):
        images, labels = fashion_urls["t10k-images-idx3-ubyte"], fashion_urls["t10k-labels-idx1-ubyte"]
        with idx_iter(images, labels, batch_size=1000, socket_path=socket_path) as it:
            assert sum(len(lb) for _, lb in it) == 10_000
    assert list((tmp_path / "run").iterdir()) == []  # its socket and lock file are gone; the directory was not its


@pytest.mark.mxnet  # the image records are written with MXNet's own writer
def test_sigterm_tells_clients_then_removes_everything_the_daemon_created(
    s3_server: EmbeddedS3, fashion_urls: dict[str, str], caltech_rec: str, tmp_path: Path
) -> None:
    shm_before = shm_names()
    socket_path = tmp_path / "run" / "prefetchd" / "control.sock"  # neither directory exists yet
    daemon = DaemonProcess(env=s3_server.environment(), socket_path=socket_path, log_path=tmp_path / "daemon.log")
    daemon.start()
    try:
        assert stat.S_IMODE(socket_path.parent.stat().st_mode) == 0o700
        numbers = idx_iter(
            fashion_urls["train-images-idx3-ubyte"],
            fashion_urls["train-labels-idx1-ubyte"],
            batch_size=100,
            socket_path=socket_path,
        )
        images = recordio_iter(caltech_rec, socket_path=socket_path, **IMAGE_OPTIONS)
        next(numbers), next(images)
        workers = decode_workers(daemon.pid)
        assert workers
        assert daemon.stop(signal.SIGTERM, timeout_s=10.0) == 0
        for it in (numbers, images):
            with pytest.raises(DaemonUnavailable, match="is shutting down"):
                for _ in it:
                    pass
            it.close()
    finally:
        daemon.stop(signal.SIGKILL)
    assert not (tmp_path / "run").exists()  # socket, lock file (the pid file) and both directories
    assert all(not Path(f"/proc/{pid}").exists() for pid in workers)
    assert shm_names() == shm_before
    assert "Traceback" not in (tmp_path / "daemon.log").read_text()
