"""Soak: four trainers, several epochs each, on one daemon; its memory and descriptors stay flat.

Two trainers keep one stream for every epoch; two open a fresh stream each epoch, so stream set-up and
tear-down run a dozen times. After each epoch the trainers wait at a barrier while the daemon's RSS and open
descriptors are read; epoch 0 fills the epoch cache and the connection pool and is the warm-up. The figures
are printed to the terminal and kept in pytest's cache (`pytest --cache-show prefetchd/soak`).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from prefetchd.testing.daemon_process import DaemonProcess
from prefetchd.testing.embedded_s3 import EmbeddedS3
from tests.daemon_probe import Memory, descriptor_kinds, memory, rings, settled

EPOCHS = 8
MiB = 1 << 20
RSS_GROWTH_BYTES = 24 * MiB  # after the warm-up epoch: allocator noise, not a leak of rings (which are 1-20 MiB each)
FD_GROWTH = 2

TRAINER = """
import json, sys
from prefetchd_client import idx_iter

image, label, socket_path, epochs, batch_size, shuffle, reopen = sys.argv[1:]
stream = None
for epoch in range(int(epochs)):
    if stream is None or reopen == "reopen":
        if stream is not None:
            stream.close()
        stream = idx_iter(image, label, batch_size=int(batch_size), shuffle=shuffle == "shuffle", seed=7,
                          socket_path=socket_path)
    samples = sum(len(label) for _, label in stream)
    print(json.dumps({"epoch": epoch, "samples": samples}), flush=True)
    sys.stdin.readline()  # the barrier: the test reads the daemon's figures, then lets every trainer go on
stream.close()
"""


@dataclass(frozen=True)
class Sample:
    epoch: int
    memory: Memory
    descriptors: int
    tcp: int
    rings: int

    def row(self) -> str:
        m = self.memory
        return (
            f"{self.epoch:>5} {m.rss_bytes / MiB:>8.1f} {m.anon_bytes / MiB:>8.1f} {m.shmem_bytes / MiB:>9.1f} "
            f"{self.descriptors:>4} {self.tcp:>4} {self.rings:>5}"
        )


@pytest.fixture
def soak_daemon(s3_server: EmbeddedS3) -> Iterator[DaemonProcess]:
    with DaemonProcess(env=s3_server.environment()) as process:
        yield process


def sample(daemon: DaemonProcess, epoch: int) -> Sample:
    kinds = settled(lambda: descriptor_kinds(daemon.pid))
    return Sample(epoch, memory(daemon.pid), sum(kinds.values()), kinds["tcp socket"], rings(daemon.pid))


@pytest.mark.slow
def test_four_trainers_for_several_epochs_leave_the_daemons_memory_and_descriptors_flat(
    soak_daemon: DaemonProcess,
    fashion_urls: dict[str, str],
    request: pytest.FixtureRequest,
    capsys: pytest.CaptureFixture[str],
) -> None:
    train = (fashion_urls["train-images-idx3-ubyte"], fashion_urls["train-labels-idx1-ubyte"])
    test = (fashion_urls["t10k-images-idx3-ubyte"], fashion_urls["t10k-labels-idx1-ubyte"])
    trainers = [  # (dataset, samples, batch size, shuffle, a new stream each epoch)
        (train, 60_000, 1000, "shuffle", "keep"),
        (train, 60_000, 500, "in-order", "reopen"),
        (test, 10_000, 100, "shuffle", "reopen"),
        (test, 10_000, 250, "in-order", "keep"),
    ]
    started = time.monotonic()
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", TRAINER, *urls, str(soak_daemon.socket_path), str(EPOCHS), str(batch), order, mode],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for urls, _, batch, order, mode in trainers
    ]
    samples = []
    try:
        for epoch in range(EPOCHS):
            for process, (_, count, *_rest) in zip(processes, trainers, strict=True):
                assert process.stdout is not None
                line = process.stdout.readline()
                assert json.loads(line) == {"epoch": epoch, "samples": count}, line
            samples.append(sample(soak_daemon, epoch))
            for process in processes:
                assert process.stdin is not None
                process.stdin.write("\n")
                process.stdin.flush()
        assert [process.wait(timeout=60) for process in processes] == [0] * len(processes)
    finally:
        for process in processes:
            process.kill()
            process.wait()
    elapsed = time.monotonic() - started
    report(request, capsys, samples, elapsed)
    warm = samples[1]
    for later in samples[2:]:
        assert later.memory.rss_bytes - warm.memory.rss_bytes <= RSS_GROWTH_BYTES, report_text(samples, elapsed)
        assert later.descriptors - warm.descriptors <= FD_GROWTH, report_text(samples, elapsed)
        assert later.rings == 4  # one per trainer, the reopened ones' old rings gone
    assert settled(lambda: rings(soak_daemon.pid)) == 0  # every trainer has gone: no ring is left


def report_text(samples: list[Sample], elapsed_s: float) -> str:
    first, last = samples[1], samples[-1]
    lines = [
        f"soak: 4 trainers x {EPOCHS} epochs of Fashion-MNIST (2 x 60,000 + 2 x 10,000 samples an epoch, "
        f"2 streams reopened every epoch) on one daemon in {elapsed_s:.1f} s",
        "epoch  RSS MiB anon MiB shmem MiB  fds  tcp rings",
        *(s.row() for s in samples),
        f"after the warm-up epoch: RSS {(last.memory.rss_bytes - first.memory.rss_bytes) / MiB:+.1f} MiB, "
        f"descriptors {last.descriptors - first.descriptors:+d} (bounds: +{RSS_GROWTH_BYTES // MiB} MiB, "
        f"+{FD_GROWTH})",
    ]
    return "\n".join(lines)


def report(
    request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str], samples: list[Sample], elapsed_s: float
) -> None:
    text = report_text(samples, elapsed_s)
    with capsys.disabled():
        print("\n" + text)
    cache = getattr(request.config, "cache", None)  # None under -p no:cacheprovider
    if cache is not None:
        cache.set("prefetchd/soak", text.splitlines())
