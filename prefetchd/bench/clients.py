"""Several trainers on one daemon: 4 clients reading a quarter of the same .rec each, against 1 reading it all.

Data-parallel training splits one dataset between workers (`num_parts`/`part_index`); each worker's stream
has its own ring and fetches its own part. The figure is the aggregate: the object's bytes over the wall time
until every client has its part, against one client reading the whole object through the same daemon, over
the same modelled network, rounds interleaved. Raw bytes (`bytes_iter`, 8 MiB batches, 8 ahead per client),
the epoch cache off so that every round crosses the network.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .figures import median_mb_per_s
from .images import dataset
from .network import bench_s3, daemon

CLIENTS = 4
PREFETCH = 8
BATCH_BYTES = 8 << 20


@dataclass(frozen=True)
class ClientsResult:
    size: int
    one_client_s: list[float]
    all_clients_s: list[float]

    @property
    def one_client_mb_per_s(self) -> float:
        return median_mb_per_s(self.size, self.one_client_s)

    @property
    def aggregate_mb_per_s(self) -> float:
        return median_mb_per_s(self.size, self.all_clients_s)


def _drain(url: str, socket_path: Path, part: int, parts: int, start: threading.Barrier | None = None) -> int:
    from prefetchd_client import bytes_iter

    with bytes_iter(
        url, batch_bytes=BATCH_BYTES, prefetch=PREFETCH, num_parts=parts, part_index=part, socket_path=socket_path
    ) as batches:
        if start is not None:
            start.wait()  # every stream open before any is read: the clients start together
        return sum(len(batch.data) for batch in batches)


def _together(url: str, socket_path: Path, pool: ThreadPoolExecutor) -> tuple[float, int]:
    start = threading.Barrier(CLIENTS + 1)
    parts = [pool.submit(_drain, url, socket_path, part, CLIENTS, start) for part in range(CLIENTS)]
    start.wait()
    began = time.perf_counter()
    got = sum(part.result() for part in parts)
    return time.perf_counter() - began, got


def run(
    rounds: int = 3,
    megabytes: int = 1000,
    latency_ms: float = 30.0,
    megabytes_per_s: float = 90.0,
    say: Callable[[str], None] = print,
) -> ClientsResult:
    rec = dataset(megabytes).rec
    size = rec.stat().st_size
    result = ClientsResult(size, [], [])
    with (
        bench_s3([rec]) as s3,
        s3.network(latency_ms, megabytes_per_s) as network,
        daemon(network.endpoint_url, "--cache-size", "0") as serve,
        ThreadPoolExecutor(CLIENTS) as pool,
    ):
        url = s3.urls[rec]
        _drain(url, serve.socket_path, 0, 1)  # warm-up: nginx has the file in memory, the daemon its code paths
        for _ in range(rounds):
            began = time.perf_counter()
            got = _drain(url, serve.socket_path, 0, 1)
            result.one_client_s.append(time.perf_counter() - began)
            seconds, got_together = _together(url, serve.socket_path, pool)
            result.all_clients_s.append(seconds)
            if (got, got_together) != (size, size):
                raise RuntimeError(f"read {got} bytes with one client and {got_together} with {CLIENTS}, of {size}")
    say(
        f"\n{CLIENTS} clients on one daemon, a quarter of the {size / 1e6:,.0f} MB .rec each, {PREFETCH} batches of "
        f"8 MiB ahead, at {latency_ms:g} ms and {megabytes_per_s:g} MB/s per connection, median of {rounds} rounds"
    )
    say(f"  1 client, the whole object:  {result.one_client_mb_per_s:7,.0f} MB/s")
    say(
        f"  {CLIENTS} clients together:         {result.aggregate_mb_per_s:7,.0f} MB/s aggregate, "
        f"{result.aggregate_mb_per_s / result.one_client_mb_per_s:.2f}x the single client"
    )
    return result
