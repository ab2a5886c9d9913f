"""One Fashion-MNIST training epoch (60,000 images, decoded), drained with the trainer doing nothing.

Readers, interleaved round by round so that machine noise hits them alike:
- `mx.io.MNISTIter` on the local files (the reference a user would compare with);
- prefetchd from the local files (`file://`): the pipeline's own ceiling;
- prefetchd from the embedded S3 server (moto, in a child process): bounded by that server.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..testing.daemon_process import DaemonProcess
from ..testing.datasets import FILES, fashion_mnist
from ..testing.embedded_s3 import EmbeddedS3

SAMPLES = 60_000


@dataclass(frozen=True)
class Result:
    reader: str
    seconds: list[float]

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds)

    @property
    def samples_per_s(self) -> float:
        return SAMPLES / self.median_s


def _drain_mxnet(directory: Path, batch_size: int) -> Callable[[], int]:
    import mxnet as mx

    it = mx.io.MNISTIter(
        image=str(directory / "train-images-idx3-ubyte"),
        label=str(directory / "train-labels-idx1-ubyte"),
        batch_size=batch_size,
        shuffle=False,
        silent=True,
    )

    def epoch() -> int:
        it.reset()
        return sum(batch.data[0].shape[0] for batch in it)

    return epoch


def _drain_prefetchd(image: str, label: str, socket: Path, batch_size: int) -> Callable[[], int]:
    from prefetchd_client import idx_iter

    it = idx_iter(image, label, batch_size=batch_size, socket_path=socket)

    def epoch() -> int:
        return sum(len(label) for _, label in it)

    return epoch


def next_latency_us(image: str, label: str, socket: Path, batch_size: int) -> tuple[float, float]:
    """Median and p99 of `next()` when the batch is already in the ring: the client's own cost per batch."""
    import numpy as np

    from prefetchd_client import idx_iter

    timings = []
    with idx_iter(image, label, batch_size=batch_size, socket_path=socket, prefetch=16) as it:
        batches = iter(it)
        for _ in range(40):
            time.sleep(0.05)  # the daemon fills the ring meanwhile (18 slots)
            for _ in range(14):
                started = time.perf_counter()
                try:
                    next(batches)
                except StopIteration:
                    batches = iter(it)
                    break
                timings.append(time.perf_counter() - started)
    micros = np.array(timings) * 1e6
    return float(np.median(micros)), float(np.percentile(micros, 99))


def run(rounds: int = 5, batch_size: int = 100, say: Callable[[str], None] = print) -> list[Result]:
    directory = fashion_mnist()
    with EmbeddedS3() as s3:
        s3_urls = s3.upload_files("bucket-name", "training-data", [directory / name for name in FILES])
        urls = {url.rsplit("/", 1)[1]: url for url in s3_urls}
        with DaemonProcess(env=s3.environment()) as daemon:
            readers: dict[str, Callable[[], int]] = {
                "mx.io.MNISTIter, local files": _drain_mxnet(directory, batch_size),
                "prefetchd, local files": _drain_prefetchd(
                    str(directory / "train-images-idx3-ubyte"),
                    str(directory / "train-labels-idx1-ubyte"),
                    daemon.socket_path,
                    batch_size,
                ),
                "prefetchd, s3:// (moto server)": _drain_prefetchd(
                    urls["train-images-idx3-ubyte"], urls["train-labels-idx1-ubyte"], daemon.socket_path, batch_size
                ),
            }
            times: dict[str, list[float]] = {name: [] for name in readers}
            for round_number in range(1, rounds + 1):
                for name, epoch in readers.items():
                    started = time.perf_counter()
                    count = epoch()
                    times[name].append(time.perf_counter() - started)
                    assert count == SAMPLES - SAMPLES % batch_size, f"{name} gave {count} samples"
                say(f"round {round_number}/{rounds} done")
            median, p99 = next_latency_us(
                str(directory / "train-images-idx3-ubyte"),
                str(directory / "train-labels-idx1-ubyte"),
                daemon.socket_path,
                batch_size,
            )
    results = [Result(name, seconds) for name, seconds in times.items()]
    report(results, batch_size, say)
    say(f"client next() when the batch is ready (batch {batch_size}): median {median:.0f} µs, p99 {p99:.0f} µs")
    return results


def report(results: list[Result], batch_size: int, say: Callable[[str], None]) -> None:
    reference = results[0]
    say(f"\nOne Fashion-MNIST epoch (60,000 images, batch {batch_size}), median of {len(reference.seconds)} rounds")
    say(f"{'reader':34} {'epoch s':>8} {'samples/s':>12} {'vs MXNet local':>15}")
    for result in results:
        ratio = reference.median_s / result.median_s
        say(f"{result.reader:34} {result.median_s:8.3f} {result.samples_per_s:12,.0f} {ratio:14.2f}x")
