"""The trainer's view: the seed's conv net, one epoch from s3:// over an emulated network vs local files.

Each round trains one epoch with `Module.fit` from fresh iterators, alternating local `mx.io.MNISTIter` and
prefetchd over S3 (nginx behind the shaping relay, as for the bytes) with 30 ms first-byte latency and
90 MB/s per connection (and 100 ms), through one warm
daemon per latency with its epoch cache off, so that every epoch really crosses the network. Also: time to first batch,
from opening a stream to holding its first batch, against 3 × the first-byte latency + one batch's decode.

Where a gap comes from: the median time `Module.fit` spends in the iterator's `next()` per batch (MXNet's own
iterator included), and the daemon's CPU seconds per epoch (on 2 cores, taken from MXNet's compute).
"""

from __future__ import annotations

import contextlib
import functools
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..testing.datasets import FILES, fashion_mnist
from .network import bench_s3, daemon
from .procfs import cpu_seconds

LATENCIES_MS = (30.0, 100.0)


@dataclass(frozen=True)
class TrainingResult:
    reader: str
    seconds: list[float]
    next_us: list[float] = field(default_factory=list)  # each epoch's median next()
    daemon_cpu_s: list[float] = field(default_factory=list)  # each epoch's daemon CPU (prefetchd only)

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds)


@dataclass(frozen=True)
class _Epoch:
    seconds: float
    next_us: float  # median time in next() per batch


@functools.cache
def _timed_iterator() -> Any:
    """A DataIter class that records how long each `next()` of the iterator it wraps takes.

    Made once: a class made per call is in a reference cycle (as every class is), and a closure over the
    iterator would keep its stream open until the collector runs.
    """
    import mxnet as mx

    class TimedIterator(mx.io.DataIter):  # type: ignore[misc]
        def __init__(self, inner: Any) -> None:
            super().__init__(inner.batch_size)
            self.inner = inner
            self.provide_data, self.provide_label = inner.provide_data, inner.provide_label
            self.waits: list[float] = []

        def reset(self) -> None:
            self.inner.reset()

        def next(self) -> Any:
            started = time.perf_counter()
            try:
                return self.inner.next()
            finally:
                self.waits.append(time.perf_counter() - started)

    return TimedIterator


def _train_epoch(root: str, socket: Path | None) -> _Epoch:
    """One `Module.fit` epoch of the seed's conv net (no validation pass)."""
    import mxnet as mx

    from ..testing.mnist_net import conv_net

    common = {"batch_size": 100, "shuffle": False, "silent": True}
    images, labels = f"{root}train-images-idx3-ubyte", f"{root}train-labels-idx1-ubyte"
    if socket is None:
        train = mx.io.MNISTIter(image=images, label=labels, **common)
    else:
        from prefetchd_client import MNISTIter

        train = MNISTIter(image=images, label=labels, socket_path=str(socket), **common)
    train = _timed_iterator()(train)
    mx.random.seed(42)
    module = mx.mod.Module(conv_net(mx), context=mx.cpu())
    started = time.perf_counter()
    module.fit(
        train, optimizer="sgd", optimizer_params={"learning_rate": 0.1}, initializer=mx.init.Xavier(), num_epoch=1
    )
    seconds = time.perf_counter() - started
    return _Epoch(seconds, statistics.median(train.waits) * 1e6)


def _first_batch_s(image: str, label: str, socket: Path) -> float:
    from prefetchd_client import idx_iter

    started = time.perf_counter()
    with idx_iter(image, label, batch_size=100, socket_path=socket) as batches:
        next(iter(batches))
        return time.perf_counter() - started


def _name(latency_ms: float) -> str:
    return f"prefetchd, s3:// over {latency_ms:.0f} ms, 90 MB/s"


def _record(result: TrainingResult, epoch: _Epoch, daemon_cpu_s: float | None = None) -> None:
    result.seconds.append(epoch.seconds)
    result.next_us.append(epoch.next_us)
    if daemon_cpu_s is not None:
        result.daemon_cpu_s.append(daemon_cpu_s)


def run(rounds: int = 3, say: Callable[[str], None] = print) -> list[TrainingResult]:
    directory = fashion_mnist()
    local = "mx.io.MNISTIter, local files"
    results: dict[str, TrainingResult] = {local: TrainingResult(local, [])}
    first_batch: dict[float, list[float]] = {latency: [] for latency in LATENCIES_MS}
    with bench_s3([directory / name for name in FILES]) as s3:
        root = s3.urls[directory / "train-images-idx3-ubyte"].rsplit("/", 1)[0] + "/"
        train = (root + "train-images-idx3-ubyte", root + "train-labels-idx1-ubyte")
        for latency in LATENCIES_MS:
            name = _name(latency)
            results[name] = TrainingResult(name, [])
        with contextlib.ExitStack() as stack:
            daemons = {}
            for latency in LATENCIES_MS:
                network = stack.enter_context(s3.network(latency, 90))
                # the cache off: every epoch crosses the emulated network; a warm daemon, as a long-lived one is
                daemons[latency] = stack.enter_context(daemon(network.endpoint_url, "--cache-size", "0"))
                _first_batch_s(*train, daemons[latency].socket_path)  # also brings the files into the page cache
            for round_number in range(1, rounds + 1):
                _record(results[local], _train_epoch(f"{directory}/", None))
                for latency, serve in daemons.items():
                    first_batch[latency].append(_first_batch_s(*train, serve.socket_path))
                    serve.until_no_streams()  # that stream's fills end before the epoch's are counted
                    cpu_before = cpu_seconds(serve.pid)
                    epoch = _train_epoch(root, serve.socket_path)
                    _record(results[_name(latency)], epoch, cpu_seconds(serve.pid) - cpu_before)
                say(f"round {round_number}/{rounds} done")
    out = list(results.values())
    reference = out[0].median_s
    say(f"\nThe seed's conv net, one Module.fit epoch of Fashion-MNIST (60,000 images, batch 100), median of {rounds}")
    say(f"{'reader':38} {'epoch s':>8} {'vs local':>9} {'next() µs':>10} {'daemon CPU s':>13}")
    for result in out:
        cpu = f"{statistics.median(result.daemon_cpu_s):13.2f}" if result.daemon_cpu_s else f"{'-':>13}"
        say(
            f"{result.reader:38} {result.median_s:8.2f} {result.median_s / reference:8.3f}x "
            f"{statistics.median(result.next_us):10.0f} {cpu}"
        )
    for latency, waits in first_batch.items():
        say(f"time to first batch at {latency:.0f} ms first-byte latency: {statistics.median(waits) * 1000:.0f} ms")
    return out
