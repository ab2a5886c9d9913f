"""Raw bytes/s from S3 over an emulated network: prefetchd against the readers a user would write instead.

Every reader reads the same objects through the same `NetworkProxy` (first byte after `latency_ms`, each
connection paced to 90 MB/s) in front of moto, interleaved round by round:
- botocore `get_object().read()` of the whole object (what `boto3` does);
- sequential 8 MiB ranged GETs (how MXNet's USE_S3 reader moves data);
- hand-written aiobotocore readers with 16, 32 and 64 ranged GETs of 8 MiB in flight;
- prefetchd's `bytes_iter`, drained from the client (8 MiB batches, 32 ahead).
The limit is min(32 × 90 MB/s, what this machine moves through the same proxy with no shaping).
Not measured here (not in the lock): s3fs and obstore.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..testing.daemon_process import DaemonProcess
from ..testing.datasets import fashion_mnist
from ..testing.embedded_s3 import CREDENTIALS, EmbeddedS3
from ..testing.network_proxy import NetworkProxy
from .images import dataset

RANGE_BYTES = 8 << 20


@dataclass(frozen=True)
class Result:
    obj: str
    reader: str
    size: int
    seconds: list[float]

    @property
    def mb_per_s(self) -> float:
        return self.size / statistics.median(self.seconds) / 1e6


def _sync_client(endpoint: str) -> Any:
    import botocore.config
    import botocore.session

    return botocore.session.get_session().create_client(
        "s3",
        endpoint_url=endpoint,
        region_name=CREDENTIALS["AWS_REGION"],
        aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        config=botocore.config.Config(max_pool_connections=70),
    )


def _whole(client: Any, bucket: str, key: str, size: int) -> int:
    return len(client.get_object(Bucket=bucket, Key=key)["Body"].read())


def _sequential(client: Any, bucket: str, key: str, size: int) -> int:
    done = 0
    for start in range(0, size, RANGE_BYTES):
        last = min(size, start + RANGE_BYTES) - 1
        done += len(client.get_object(Bucket=bucket, Key=key, Range=f"bytes={start}-{last}")["Body"].read())
    return done


class _AioReader:
    """A hand-written concurrent reader: one aiobotocore client, `in_flight` ranged GETs of 8 MiB at a time.

    The client lives in its own event loop for the whole run, so its set-up is not timed.
    """

    def __init__(self, endpoint: str, in_flight: int) -> None:
        self.in_flight = in_flight
        self._runner = asyncio.Runner()
        self._stack = contextlib.AsyncExitStack()
        self._client = self._runner.run(self._connect(endpoint))

    async def _connect(self, endpoint: str) -> Any:
        from aiobotocore.config import AioConfig
        from aiobotocore.session import get_session

        return await self._stack.enter_async_context(
            get_session().create_client(
                "s3",
                endpoint_url=endpoint,
                region_name=CREDENTIALS["AWS_REGION"],
                aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                config=AioConfig(max_pool_connections=self.in_flight),
            )
        )

    def __call__(self, _client: Any, bucket: str, key: str, size: int) -> int:
        return self._runner.run(self._read(bucket, key, size))

    async def _read(self, bucket: str, key: str, size: int) -> int:
        buffer = bytearray(size)
        gate = asyncio.Semaphore(self.in_flight)

        async def one(start: int) -> None:
            last = min(size, start + RANGE_BYTES) - 1
            async with gate:
                response = await self._client.get_object(Bucket=bucket, Key=key, Range=f"bytes={start}-{last}")
                async with response["Body"] as body:
                    buffer[start : last + 1] = await body.read()

        await asyncio.gather(*(one(start) for start in range(0, size, RANGE_BYTES)))
        return len(buffer)

    def close(self) -> None:
        self._runner.run(self._stack.aclose())
        self._runner.close()


def _prefetchd(socket: Path) -> Callable[[Any, str, str, int], int]:
    def read(_client: Any, bucket: str, key: str, size: int) -> int:
        from prefetchd_client import bytes_iter

        with bytes_iter(f"s3://{bucket}/{key}", batch_bytes=RANGE_BYTES, prefetch=32, socket_path=socket) as batches:
            return sum(len(batch.data) for batch in batches)

    return read


def run(
    rounds: int = 3, megabytes: int = 1000, latency_ms: float = 30.0, say: Callable[[str], None] = print
) -> list[Result]:
    rec = dataset(megabytes).rec
    mnist = fashion_mnist() / "train-images-idx3-ubyte"
    objects = {f"{rec.stat().st_size / 1e6:,.0f} MB .rec": rec, f"{mnist.stat().st_size / 1e6:,.0f} MB IDX": mnist}
    with EmbeddedS3() as s3:
        urls = s3.upload_files("bucket-name", "bench", list(objects.values()))
        keys = {name: url.split("/", 3)[3] for name, url in zip(objects, urls, strict=True)}
        with (
            NetworkProxy(s3.endpoint_url, latency_ms=latency_ms, megabytes_per_s=90) as network,
            NetworkProxy(s3.endpoint_url, latency_ms=0, megabytes_per_s=1e6) as unshaped,
            DaemonProcess(
                env={**s3.environment(), "AWS_ENDPOINT_URL_S3": network.endpoint_url},
                args=("--cache-size", "0", "--ring-size", "512MiB"),
            ) as daemon,
            contextlib.ExitStack() as stack,
        ):
            client = _sync_client(network.endpoint_url)
            peers = {
                n: stack.enter_context(contextlib.closing(_AioReader(network.endpoint_url, n))) for n in (16, 32, 64)
            }
            readers: dict[str, Callable[[Any, str, str, int], int]] = {
                "botocore get_object().read(), whole object": _whole,
                "sequential 8 MiB ranged GETs": _sequential,
                **{f"aiobotocore, {n} x 8 MiB in flight": peer for n, peer in peers.items()},
                "prefetchd bytes_iter, through the client": _prefetchd(daemon.socket_path),
            }
            limit_reader = stack.enter_context(contextlib.closing(_AioReader(unshaped.endpoint_url, 32)))
            for name, key in keys.items():  # warm-up: the proxies copy each object from moto once
                size = objects[name].stat().st_size
                limit_reader(None, "bucket-name", key, size)
                peers[32](None, "bucket-name", key, size)
            times: dict[tuple[str, str], list[float]] = {}
            for round_number in range(1, rounds + 1):
                for name, key in keys.items():
                    size = objects[name].stat().st_size
                    timed: dict[str, Callable[[Any, str, str, int], int]] = {
                        **readers,
                        "unshaped, aiobotocore 32 in flight": limit_reader,
                    }
                    for reader, read in timed.items():
                        started = time.perf_counter()
                        got = read(client, "bucket-name", key, size)
                        times.setdefault((name, reader), []).append(time.perf_counter() - started)
                        assert got == size, f"{reader} read {got} of {size} bytes"
                say(f"round {round_number}/{rounds} done")
    results = [Result(name, reader, objects[name].stat().st_size, t) for (name, reader), t in times.items()]
    report(results, latency_ms, say)
    return results


def report(results: list[Result], latency_ms: float, say: Callable[[str], None]) -> None:
    say(f"\nRaw bytes over {latency_ms:.0f} ms first-byte latency, 90 MB/s per connection, median of rounds")
    for name in dict.fromkeys(r.obj for r in results):
        rows = [r for r in results if r.obj == name]
        unshaped = next(r for r in rows if r.reader.startswith("unshaped"))
        unshaped_best = unshaped.size / min(unshaped.seconds) / 1e6  # a ceiling: its best round, not its median
        limit = min(32 * 90.0, unshaped_best)
        peers = [r for r in rows if r.reader.startswith("aiobotocore")]
        best = max(peers, key=lambda r: r.mb_per_s)
        sequential = next(r for r in rows if r.reader.startswith("sequential"))
        say(
            f"\n{name}: limit {limit:,.0f} MB/s "
            f"(min of 32 x 90 MB/s and {unshaped_best:,.0f} MB/s unshaped, best round)"
        )
        say(f"{'reader':44} {'MB/s':>8} {'vs best peer':>13} {'vs sequential':>14} {'vs limit':>9}")
        for r in rows:
            if r is unshaped:
                continue
            say(
                f"{r.reader:44} {r.mb_per_s:8,.0f} {r.mb_per_s / best.mb_per_s:12.2f}x "
                f"{r.mb_per_s / sequential.mb_per_s:13.1f}x {r.mb_per_s / limit:8.2f}x"
            )
