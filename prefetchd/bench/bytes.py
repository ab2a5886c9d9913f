"""Raw bytes/s from S3 over a modelled network: prefetchd against the readers a user would pick instead.

nginx holds the objects (a ~1 GB JPEG .rec and Fashion-MNIST's 47 MB IDX); every reader reaches it through
the same relay, which delays each request by the first-byte latency and paces each connection (defaults
30 ms and 90 MB/s). Readers, interleaved round by round (each round starts one reader further on):
- botocore `get_object().read()` of the whole object (what `boto3` does);
- sequential 8 MiB ranged GETs (how MXNet's USE_S3 reader moves data);
- s3fs `cat_file` of the whole object, at its defaults;
- hand-written concurrent readers with aiobotocore, obstore and s3fs, 16, 32 and 64 ranges of 8 MiB in flight;
- prefetchd's `bytes_iter`, drained from the client (8 MiB batches, 8 ahead; the daemon at its defaults
  but for the epoch cache, which is off): a new stream per read, and the steady epochs of one stream kept
  open (`readers.PrefetchdSteady`), as a trainer reads.
The limit for a reader with n connections: min(n × the pace, the best round of the same relay unshaped).
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Config
from ..testing.datasets import fashion_mnist
from . import readers
from .figures import median_mb_per_s
from .images import dataset
from .network import BUCKET, BenchS3, bench_s3, daemon

DAEMON_CONCURRENCY = Config(socket_path=Path("unused")).max_concurrency  # ranged GETs in flight per stream

# what each reader is, for the ratios: the best "peer" is the fastest hand-written concurrent reader
SEQUENTIAL, BASELINE, PEER, PREFETCHD, UNSHAPED = "sequential", "baseline", "peer", "prefetchd", "unshaped"


@dataclass(frozen=True)
class Result:
    latency_ms: float
    megabytes_per_s: float  # the pace of one connection
    obj: str
    reader: str
    kind: str
    connections: int
    size: int
    seconds: list[float] = field(default_factory=list)

    @property
    def mb_per_s(self) -> float:
        return median_mb_per_s(self.size, self.seconds)

    @property
    def best_mb_per_s(self) -> float:
        return self.size / min(self.seconds) / 1e6


def _kind(reader: readers.Reader) -> str:
    if isinstance(reader, readers.SequentialRanges):
        return SEQUENTIAL
    if isinstance(reader, readers.AiobotocoreRanges | readers.ObstoreRanges | readers.S3fsRanges):
        return PEER
    if isinstance(reader, readers.PrefetchdClient | readers.PrefetchdSteady):
        return PREFETCHD
    return BASELINE


def run(
    rounds: int = 3,
    megabytes: int = 1000,
    latencies_ms: Sequence[float] = (30.0,),
    megabytes_per_s: float = 90.0,
    say: Callable[[str], None] = print,
    write_docs: bool = False,
) -> list[Result]:
    """Measure, say the tables; with `write_docs`, rewrite the generated section of docs/benchmarks.md."""
    rec = dataset(megabytes).rec
    mnist = fashion_mnist() / "train-images-idx3-ubyte"
    objects = {f"{rec.stat().st_size / 1e6:,.0f} MB .rec": rec, f"{mnist.stat().st_size / 1e6:,.0f} MB IDX": mnist}
    results: list[Result] = []
    buffers = readers.Buffers()
    with bench_s3(list(objects.values())) as s3, s3.network(0, 0) as unshaped:
        for latency_ms in latencies_ms:
            with contextlib.ExitStack() as stack:
                network = stack.enter_context(s3.network(latency_ms, megabytes_per_s))
                prefetchd = stack.enter_context(daemon(network.endpoint_url, "--cache-size", "0"))
                # a daemon of its own, so that its open stream does not share the target rate with the other's
                steady = stack.enter_context(daemon(network.endpoint_url, "--cache-size", "0"))
                timed: list[readers.Reader] = [
                    *readers.peers(network.endpoint_url, buffers),
                    readers.PrefetchdClient(prefetchd.socket_path, DAEMON_CONCURRENCY),
                    readers.PrefetchdSteady(steady, DAEMON_CONCURRENCY),
                ]
                ceiling: list[readers.Reader] = [
                    readers.AiobotocoreRanges(unshaped.endpoint_url, 32, buffers),
                    readers.ObstoreRanges(unshaped.endpoint_url, 32, buffers),
                ]
                for reader in (*timed, *ceiling):
                    stack.callback(reader.close)
                results += _measure(s3, objects, timed, ceiling, rounds, latency_ms, megabytes_per_s)
    from .bytes_report import report

    latencies = " ".join(f"--latency-ms {latency:g}" for latency in latencies_ms)
    command = (
        f"python -m prefetchd bench --only bytes --megabytes {megabytes} --rounds {rounds} "
        f"{latencies} --mbps {megabytes_per_s:g}"
    )
    report(results, say, command if write_docs else None)
    return results


def _measure(
    s3: BenchS3,
    objects: dict[str, Path],
    timed: list[readers.Reader],
    ceiling: list[readers.Reader],
    rounds: int,
    latency_ms: float,
    megabytes_per_s: float,
) -> list[Result]:
    """Every reader reads every object once per round; round 0 (each reader once, and the ceiling) is a warm-up."""
    from tqdm import tqdm  # type: ignore[import-untyped]

    results: dict[tuple[str, str], Result] = {}
    for name, path in objects.items():
        for reader in timed:
            kind, connections = _kind(reader), reader.connections
            results[name, reader.name] = Result(
                latency_ms, megabytes_per_s, name, reader.name, kind, connections, path.stat().st_size
            )
        for reader in ceiling:
            label = f"unshaped, {reader.name}"
            results[name, label] = Result(latency_ms, 0, name, label, UNSHAPED, reader.connections, path.stat().st_size)
    smallest = min(objects, key=lambda name: objects[name].stat().st_size)
    steps = len(timed) + len(ceiling) * len(objects) + rounds * len(objects) * (len(timed) + len(ceiling))
    with tqdm(total=steps, desc=f"bytes at {latency_ms:g} ms", unit="read", file=sys.stderr, leave=False) as bar:
        for reader in timed:  # connections made, code paths warm; the ceiling readers bring the files into memory
            _timed_read(s3, objects[smallest], reader, bar)
        for path in objects.values():
            for reader in ceiling:
                _timed_read(s3, path, reader, bar)
        everyone = [(reader, reader.name) for reader in timed] + [(r, f"unshaped, {r.name}") for r in ceiling]
        for round_number in range(rounds):
            turn = round_number % len(everyone)
            for name, path in objects.items():
                for reader, label in everyone[turn:] + everyone[:turn]:
                    results[name, label].seconds.append(_timed_read(s3, path, reader, bar))
    return list(results.values())


def _timed_read(s3: BenchS3, path: Path, reader: readers.Reader, bar: Any) -> float:
    size = path.stat().st_size
    bar.set_postfix_str(reader.name, refresh=False)
    if isinstance(reader, readers.PrefetchdSteady):  # times its steady epochs itself
        got, seconds = reader.timed_read(BUCKET, s3.key(path), size)
    else:
        started = time.perf_counter()
        got = reader.read(BUCKET, s3.key(path), size)
        seconds = time.perf_counter() - started
    bar.update()
    if got != size:
        raise RuntimeError(f"{reader.name} read {got} of the {size} bytes of {path.name}")
    return seconds
