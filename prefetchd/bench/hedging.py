"""Tail latency: an epoch of raw bytes when 1% of the GETs wait 2 s more, with hedging and without.

nginx holds the object behind two relays that model S3's network (first-byte latency, a pace per
connection, as in the bytes benchmark); one of them also holds back `PAUSE_SHARE` of the requests for
`PAUSE_MS` more before they reach nginx (their first byte comes 2 s late: S3's slow tail, made 100x worse).
The relay moves the bytes in the kernel, so the slow GETs cost the machine nothing; the Python fault proxy
would have been the bottleneck. Three ways, interleaved round by round (each round starts one further on):
- clean: the plain relay, a daemon at its defaults (hedging on);
- paused, hedging: the pausing relay, another daemon at its defaults;
- paused, no hedging: the pausing relay, a daemon started with `--no-hedge`.
Each way keeps one stream open (`bytes_iter`, 8 MiB batches, 8 ahead, the epoch cache off), as a trainer
does, and is timed on its steady epochs: each turn drains one epoch untimed (the daemon filled its window
while the other ways ran) and times the next, which follows without a break. A new stream per epoch would
time the ring's first page faults and the open, not the tail.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..testing.daemon_process import DaemonProcess
from ..testing.network_proxy import NetworkProxy
from .docs import rewrite_section
from .network import bench_s3, daemon

PAUSE_SHARE = 0.01
PAUSE_MS = 2000.0
CLEAN, HEDGED, UNHEDGED = "clean, hedging on", "1% paused 2 s, hedging on", "1% paused 2 s, hedging off"
BATCH_BYTES = 8 << 20
PREFETCH = 8
SECTION = "## Tail latency: 1% of GETs paused for 2 s, with and without hedging (generated)"
BEGIN = "<!-- begin: written by `prefetchd bench --only hedging`, rewritten on every run -->"
END = "<!-- end: written by `prefetchd bench --only hedging` -->"


@dataclass
class Way:
    name: str
    seconds: list[float] = field(default_factory=list)
    pauses: list[int] = field(default_factory=list)  # requests the relay held back in each epoch
    requests: list[int] = field(default_factory=list)  # S3 requests the daemon sent in each epoch
    hedges_started: list[int] = field(default_factory=list)
    hedges_won: list[int] = field(default_factory=list)

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds)


def _object(megabytes: int, directory: Path) -> Path:
    path = directory / f"hedging-{megabytes}MB.bin"
    rng = np.random.default_rng(0)
    with open(path, "wb") as f:
        for _ in range(megabytes):
            f.write(rng.integers(0, 256, 1_000_000, dtype=np.uint8).tobytes())
    return path


def _stream(url: str, socket_path: Path) -> Any:
    """The stream a way keeps open for the whole run."""
    from prefetchd_client import bytes_iter

    return bytes_iter(url, batch_bytes=BATCH_BYTES, prefetch=PREFETCH, socket_path=socket_path)


def _drain(batches: Iterable[Any]) -> int:
    """One epoch of a stream, to its end."""
    return sum(len(batch.data) for batch in batches)


def _counters(process: DaemonProcess) -> tuple[int, int, int]:
    """The daemon's requests, hedges started and hedges won so far (from /metrics)."""
    samples = process.metrics()
    requests = samples.get(("prefetchd_s3_requests_total", ()), 0.0)
    started = samples.get(("prefetchd_hedges_started_total", ()), 0.0)
    won = samples.get(("prefetchd_hedges_total", (("outcome", "won"),)), 0.0)
    return int(requests), int(started), int(won)


def _relay(upstream: str, latency_ms: float, megabytes_per_s: float, *, pause: float) -> NetworkProxy:
    return NetworkProxy(
        upstream, latency_ms=latency_ms, megabytes_per_s=megabytes_per_s, relay=True, pause=pause, pause_ms=PAUSE_MS
    )


def _epoch(way: Way, stream: Iterable[Any], size: int, process: DaemonProcess, relay: NetworkProxy) -> None:
    _drain(stream)  # its first batches were ready before the turn began: not a steady epoch
    paused, before = relay.paused(), _counters(process)
    began = time.perf_counter()
    got = _drain(stream)
    way.seconds.append(time.perf_counter() - began)
    if got != size:
        raise RuntimeError(f"{way.name}: read {got} of {size} bytes")
    after = _counters(process)
    way.pauses.append(relay.paused() - paused)
    way.requests.append(after[0] - before[0])
    way.hedges_started.append(after[1] - before[1])
    way.hedges_won.append(after[2] - before[2])


def run(
    rounds: int = 5,
    megabytes: int = 1000,
    latency_ms: float = 30.0,
    megabytes_per_s: float = 90.0,
    say: Callable[[str], None] = print,
    write_docs: bool = False,
) -> list[Way]:
    from tqdm import tqdm  # type: ignore[import-untyped]

    ways = [Way(CLEAN), Way(HEDGED), Way(UNHEDGED)]
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="pfd-hedging-") as scratch:
        path = _object(megabytes, Path(scratch))
        size = path.stat().st_size
        with (
            bench_s3([path]) as s3,
            _relay(s3.nginx.endpoint_url, latency_ms, megabytes_per_s, pause=0.0) as clean_net,
            _relay(s3.nginx.endpoint_url, latency_ms, megabytes_per_s, pause=PAUSE_SHARE) as slow_net,
            daemon(clean_net.endpoint_url, "--cache-size", "0") as clean,
            daemon(slow_net.endpoint_url, "--cache-size", "0") as hedging,
            daemon(slow_net.endpoint_url, "--cache-size", "0", "--no-hedge") as plain,
            contextlib.ExitStack() as stack,  # the streams, closed before their daemons stop
        ):
            on = {CLEAN: (clean, clean_net), HEDGED: (hedging, slow_net), UNHEDGED: (plain, slow_net)}
            streams = {
                name: stack.enter_context(_stream(s3.urls[path], process.socket_path))
                for name, (process, _) in on.items()
            }
            for stream in streams.values():  # warm-up: nginx has the file in memory, the rings their pages
                _drain(stream)
            with tqdm(total=rounds * len(ways), desc="hedging", unit="epoch", file=sys.stderr, leave=False) as bar:
                for round_number in range(rounds):
                    turn = round_number % len(ways)
                    for way in ways[turn:] + ways[:turn]:
                        bar.set_postfix_str(way.name, refresh=False)
                        _epoch(way, streams[way.name], size, *on[way.name])
                        bar.update()
    load = f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    lines = _table(ways, size, rounds, latency_ms, megabytes_per_s, load)
    for line in lines:
        say(line)
    if write_docs:
        command = (
            f"python -m prefetchd bench --only hedging --rounds {rounds} --hedging-megabytes {megabytes} "
            f"--latency-ms {latency_ms:g} --mbps {megabytes_per_s:g}"
        )
        rewrite_section(SECTION, BEGIN, END, "\n".join([*lines, "", f"Made with `{command}`."]))
        say("\nwrote its section of docs/benchmarks.md")
    return ways


def _table(ways: list[Way], size: int, rounds: int, latency_ms: float, megabytes_per_s: float, load: str) -> list[str]:
    clean = ways[0].median_s
    lines = [
        f"Measured {datetime.date.today()} on {len(os.sched_getaffinity(0))} cores (Python "
        f"{platform.python_version()}; {load}). One steady epoch of a stream kept open, a {size / 1e6:,.0f} MB "
        f"object as raw bytes (8 MiB batches), {latency_ms:g} ms first byte, {megabytes_per_s:g} MB/s per connection; "
        f"median of {rounds} rounds, interleaved.",
        "",
        "| way | epoch, median | × clean | epochs (s) | requests per epoch | held back 2 s | hedges started / won |",
        "|---|---:|---:|---|---:|---|---|",
    ]
    for way in ways:
        each = ", ".join(f"{s:.2f}" for s in way.seconds)
        hedges = ", ".join(f"{s}/{w}" for s, w in zip(way.hedges_started, way.hedges_won, strict=True))
        lines.append(
            f"| {way.name} | {way.median_s:.2f} s | {way.median_s / clean:.2f}× | {each} | "
            f"{statistics.median(way.requests):.0f} | {', '.join(map(str, way.pauses))} | {hedges} |"
        )
    return lines
