"""A bytes stream's first epochs with the epoch cache off and on: MB/s, the daemon's CPU, and GETs per epoch.

One stream per daemon reads the ~1 GB .rec three epochs in a row from S3 (nginx behind the modelled
network), once from a daemon with `--cache-size 0` and once from one at its defaults (2 GiB: the object
fits), rounds alternating. The GETs are counted by nginx in its access log, so "epoch 2 reads nothing from
S3" is the endpoint's word. The cache's price is epoch 1's: every batch is also copied into memory the
cache holds, memory the daemon touches for the first time.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .images import dataset
from .network import BUCKET, BenchS3, bench_s3, daemon
from .procfs import cpu_seconds

EPOCHS = 3
_BATCH_BYTES = 8 << 20


@dataclass(frozen=True)
class EpochFigures:
    mb_per_s: list[float] = field(default_factory=list)
    daemon_cpu_s: list[float] = field(default_factory=list)
    gets: list[int] = field(default_factory=list)


def _gets(s3: BenchS3, key: str) -> int:
    """GETs of `key` in nginx's access log so far. nginx writes a line when it has sent a reply, before the
    relay has paced it to the daemon: an epoch's last GET is in the log before its last batch reaches the client."""
    asked = (f"GET /{BUCKET}/{key} ", f"GET /{BUCKET}/{key}?")  # the lean path's GETs are presigned
    return sum(1 for line in s3.nginx.requests() if any(request in line for request in asked))


def run(
    rounds: int = 3,
    megabytes: int = 1000,
    latency_ms: float = 30.0,
    megabytes_per_s: float = 90.0,
    say: Callable[[str], None] = print,
) -> dict[tuple[str, int], EpochFigures]:
    from prefetchd_client import bytes_iter

    rec = dataset(megabytes).rec
    size = rec.stat().st_size
    settings = {"cache off": ("--cache-size", "0"), "cache on (2 GiB)": ()}
    figures = {(name, epoch): EpochFigures() for name in settings for epoch in range(EPOCHS)}
    with bench_s3([rec]) as s3, s3.network(latency_ms, megabytes_per_s) as network:
        url, key = s3.urls[rec], s3.key(rec)
        for round_number in range(1, rounds + 1):
            for name, args in settings.items():
                with (
                    daemon(network.endpoint_url, *args) as serve,
                    bytes_iter(url, batch_bytes=_BATCH_BYTES, prefetch=8, socket_path=serve.socket_path) as batches,
                ):
                    for epoch in range(EPOCHS):
                        gets_before, cpu_before = _gets(s3, key), cpu_seconds(serve.pid)
                        started = time.perf_counter()
                        got = sum(len(batch.data) for batch in batches)
                        seconds = time.perf_counter() - started
                        if got != size:
                            raise RuntimeError(f"{name}: epoch {epoch + 1} brought {got} bytes of {size}")
                        one = figures[name, epoch]
                        one.mb_per_s.append(size / seconds / 1e6)
                        one.daemon_cpu_s.append(cpu_seconds(serve.pid) - cpu_before)
                        one.gets.append(_gets(s3, key) - gets_before)
            say(f"round {round_number}/{rounds} done")
    say(
        f"\nA bytes stream (8 MiB batches) over the {size / 1e6:,.0f} MB .rec, {EPOCHS} epochs in a row, at "
        f"{latency_ms:g} ms and {megabytes_per_s:g} MB/s per connection, median of {rounds} rounds"
    )
    say(f"{'daemon':18} {'epoch':>5} {'MB/s':>8} {'daemon CPU s':>13} {'GETs (nginx)':>13}")
    for (name, epoch), one in figures.items():
        say(
            f"{name:18} {epoch + 1:5} {statistics.median(one.mb_per_s):8,.0f} "
            f"{statistics.median(one.daemon_cpu_s):13.2f} {max(one.gets):13}"
        )
    return figures
