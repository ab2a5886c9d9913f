"""The measurement behind `--fetch-path`: the daemon's two ways of reading bulk bytes, side by side.

Both read the same object through the same modelled network into the same preallocated buffer, as the
daemon does (ranges of 8 MiB, 32 in flight, each into its own slice): `S3Source` with the lean path
(`fetch/range_get.py`) and with aiobotocore's streaming body. Rounds alternate between the two. CPU is this
process's own time (nginx and the network relay run in processes of their own), per GB moved: on 2 cores,
CPU spent on moving bytes is CPU the decode workers and the trainer do not get.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import uvloop

from ..config import S3Settings
from ..fetch.s3 import S3Source
from ..testing.embedded_s3 import CREDENTIALS
from .figures import median_mb_per_s
from .images import dataset
from .network import bench_s3

RANGE_BYTES = 8 << 20
IN_FLIGHT = 32


@dataclass(frozen=True)
class PathResult:
    path: str
    size: int
    seconds: list[float]
    cpu_seconds: list[float]

    @property
    def mb_per_s(self) -> float:
        return median_mb_per_s(self.size, self.seconds)

    @property
    def cpu_s_per_gb(self) -> float:
        return statistics.median(self.cpu_seconds) / (self.size / 1e9)


async def _read_rounds(endpoint: str, url: str, *, lean: bool, rounds: int) -> tuple[int, list[tuple[float, float]]]:
    settings = S3Settings(
        endpoint_url=endpoint,
        region=CREDENTIALS["AWS_REGION"],
        addressing_style="path",
        access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    )
    async with S3Source(settings, max_connections=IN_FLIGHT, lean=lean) as source:
        info = await source.stat(url)
        out = np.empty(info.size, dtype=np.uint8)
        out.fill(0)  # faulted in before the clock starts, as ring slots are after their first use
        gate = asyncio.Semaphore(IN_FLIGHT)

        async def one(start: int) -> None:
            async with gate:
                await source.read_range(info, start, out[start : start + RANGE_BYTES].data)

        timings = []
        for _ in range(rounds):
            wall, cpu = time.perf_counter(), time.process_time()
            await asyncio.gather(*(one(start) for start in range(0, info.size, RANGE_BYTES)))
            timings.append((time.perf_counter() - wall, time.process_time() - cpu))
        if lean:
            assert source.lean is not None and source.fallbacks == 0, "the lean path fell back: not measured"
        return info.size, timings


def run(
    rounds: int = 3,
    megabytes: int = 1000,
    latency_ms: float = 30.0,
    megabytes_per_s: float = 90.0,
    say: Callable[[str], None] = print,
) -> list[PathResult]:
    rec = dataset(megabytes).rec
    with bench_s3([rec]) as s3, s3.network(latency_ms, megabytes_per_s) as network:
        url = s3.urls[rec]
        found: dict[str, tuple[int, list[float], list[float]]] = {}
        for round_number in range(1, rounds + 1):
            for lean in (True, False):
                name = "lean (range_get.py)" if lean else "aiobotocore streaming body"
                size, timings = uvloop.run(_read_rounds(network.endpoint_url, url, lean=lean, rounds=1))
                _, walls, cpus = found.setdefault(name, (size, [], []))
                walls.append(timings[0][0])
                cpus.append(timings[0][1])
            say(f"fetch path: round {round_number}/{rounds} done")
    results = [PathResult(name, size, walls, cpus) for name, (size, walls, cpus) in found.items()]
    report(results, latency_ms, megabytes_per_s, say)
    return results


def report(results: list[PathResult], latency_ms: float, megabytes_per_s: float, say: Callable[[str], None]) -> None:
    lean = results[0]
    say(
        f"\nBulk bytes into memory, {lean.size / 1e6:,.0f} MB in {RANGE_BYTES >> 20} MiB ranges, "
        f"{IN_FLIGHT} in flight, {latency_ms:g} ms first byte, {megabytes_per_s:g} MB/s per connection; "
        "median of rounds"
    )
    say(f"{'path':32} {'MB/s':>8} {'CPU-s/GB':>9} {'vs lean':>8}")
    for r in results:
        say(f"{r.path:32} {r.mb_per_s:8,.0f} {r.cpu_s_per_gb:9.2f} {r.mb_per_s / lean.mb_per_s:7.2f}x")
