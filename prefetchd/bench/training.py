"""The trainer's view: the seed's conv net, one epoch from s3:// over an emulated network vs local files.

Each round trains one epoch with `Module.fit` from fresh iterators, alternating local `mx.io.MNISTIter` and
prefetchd over S3 behind 30 ms first-byte latency and 90 MB/s per connection (and 100 ms), through one warm
daemon per latency with its epoch cache off, so that every epoch really crosses the network. Also: time to first batch,
from opening a stream to holding its first batch, against 3 × the first-byte latency + one batch's decode.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..testing.daemon_process import DaemonProcess
from ..testing.datasets import FILES, fashion_mnist
from ..testing.embedded_s3 import EmbeddedS3
from ..testing.network_proxy import NetworkProxy

LATENCIES_MS = (30.0, 100.0)


@dataclass(frozen=True)
class TrainingResult:
    reader: str
    seconds: list[float]

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds)


def _train_epoch(root: str, socket: Path | None) -> float:
    """Seconds for one `Module.fit` epoch of the seed's conv net (no validation pass)."""
    import mxnet as mx

    from ..testing.mnist_net import conv_net

    common = {"batch_size": 100, "shuffle": False, "silent": True}
    images, labels = f"{root}train-images-idx3-ubyte", f"{root}train-labels-idx1-ubyte"
    if socket is None:
        train = mx.io.MNISTIter(image=images, label=labels, **common)
    else:
        from prefetchd_client import MNISTIter

        train = MNISTIter(image=images, label=labels, socket_path=str(socket), **common)
    mx.random.seed(42)
    module = mx.mod.Module(conv_net(mx), context=mx.cpu())
    started = time.perf_counter()
    module.fit(
        train, optimizer="sgd", optimizer_params={"learning_rate": 0.1}, initializer=mx.init.Xavier(), num_epoch=1
    )
    return time.perf_counter() - started


def _first_batch_s(image: str, label: str, socket: Path) -> float:
    from prefetchd_client import idx_iter

    started = time.perf_counter()
    with idx_iter(image, label, batch_size=100, socket_path=socket) as batches:
        next(iter(batches))
        return time.perf_counter() - started


def run(rounds: int = 3, say: Callable[[str], None] = print) -> list[TrainingResult]:
    directory = fashion_mnist()
    results: dict[str, list[float]] = {"mx.io.MNISTIter, local files": []}
    first_batch: dict[float, list[float]] = {latency: [] for latency in LATENCIES_MS}
    with EmbeddedS3() as s3:
        urls = s3.upload_files("bucket-name", "training-data", [directory / name for name in FILES])
        root = urls[0].rsplit("/", 1)[0] + "/"
        train = (root + "train-images-idx3-ubyte", root + "train-labels-idx1-ubyte")
        for latency in LATENCIES_MS:
            results[f"prefetchd, s3:// over {latency:.0f} ms, 90 MB/s"] = []
        with contextlib.ExitStack() as stack:
            daemons = {}
            for latency in LATENCIES_MS:
                network = stack.enter_context(NetworkProxy(s3.endpoint_url, latency_ms=latency, megabytes_per_s=90))
                env = {**s3.environment(), "AWS_ENDPOINT_URL_S3": network.endpoint_url}
                # the cache off: every epoch crosses the emulated network; a warm daemon, as a long-lived one is
                daemons[latency] = stack.enter_context(DaemonProcess(env=env, args=("--cache-size", "0")))
                _first_batch_s(*train, daemons[latency].socket_path)  # also makes the proxy copy the objects
            for round_number in range(1, rounds + 1):
                results["mx.io.MNISTIter, local files"].append(_train_epoch(f"{directory}/", None))
                for latency, daemon in daemons.items():
                    first_batch[latency].append(_first_batch_s(*train, daemon.socket_path))
                    seconds = _train_epoch(root, daemon.socket_path)
                    results[f"prefetchd, s3:// over {latency:.0f} ms, 90 MB/s"].append(seconds)
                say(f"round {round_number}/{rounds} done")
    out = [TrainingResult(name, times) for name, times in results.items()]
    reference = out[0].median_s
    say(f"\nThe seed's conv net, one Module.fit epoch of Fashion-MNIST (60,000 images, batch 100), median of {rounds}")
    say(f"{'reader':38} {'epoch s':>8} {'vs local':>9}")
    for result in out:
        say(f"{result.reader:38} {result.median_s:8.2f} {result.median_s / reference:8.3f}x")
    for latency, waits in first_batch.items():
        say(f"time to first batch at {latency:.0f} ms first-byte latency: {statistics.median(waits) * 1000:.0f} ms")
    return out
