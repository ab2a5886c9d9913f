"""The readers measured side by side: those a user would write instead of prefetchd, and prefetchd's client.

Every reader is built once per endpoint (clients, pools and event loops are not timed) and then asked to
read an object again and again: `read(bucket, key, size)` returns how many bytes it got. The concurrent
peers put each 8 MiB range straight into one preallocated buffer, as a careful hand-written reader would;
prefetchd's client reads each batch where the daemon put it, in shared memory, once with a new stream per
read and once as a trainer does, epoch after epoch of one stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from ..testing.daemon_process import DaemonProcess
from ..testing.embedded_s3 import CREDENTIALS

RANGE_BYTES = 8 << 20  # MXNet's USE_S3 reader and the hand-written ones ask for 8 MiB at a time
REGION = CREDENTIALS["AWS_REGION"]


class Reader(Protocol):
    name: str
    connections: int  # how many ranges it has in flight at most: its bound is this × the per-connection pace

    def read(self, bucket: str, key: str, size: int) -> int: ...

    def close(self) -> None: ...


def botocore_client(endpoint_url: str, connections: int = 10) -> Any:
    import botocore.config
    import botocore.session

    return botocore.session.get_session().create_client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=REGION,
        aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        config=botocore.config.Config(max_pool_connections=connections, s3={"addressing_style": "path"}),
    )


class WholeObject:
    """`get_object()["Body"].read()`: what boto3 users write first."""

    connections = 1

    def __init__(self, endpoint_url: str) -> None:
        self.name = "botocore get_object().read(), whole object"
        self._client = botocore_client(endpoint_url)

    def read(self, bucket: str, key: str, size: int) -> int:
        return len(self._client.get_object(Bucket=bucket, Key=key)["Body"].read())

    def close(self) -> None:
        self._client.close()


class SequentialRanges:
    """One 8 MiB ranged GET after another: how MXNet's USE_S3 reader (dmlc-core) moves data."""

    connections = 1

    def __init__(self, endpoint_url: str) -> None:
        self.name = "sequential 8 MiB ranged GETs"
        self._client = botocore_client(endpoint_url)

    def read(self, bucket: str, key: str, size: int) -> int:
        done = 0
        for start in range(0, size, RANGE_BYTES):
            last = min(size, start + RANGE_BYTES) - 1
            done += len(self._client.get_object(Bucket=bucket, Key=key, Range=f"bytes={start}-{last}")["Body"].read())
        return done

    def close(self) -> None:
        self._client.close()


class Buffers:
    """One buffer per object size, reused by every concurrent reader (they take turns, never run at once).

    A careful reader keeps its memory: a fresh 1 GB buffer per read costs each reader a page fault per 4 KiB,
    which prefetchd, whose ring is mapped once, does not pay.
    """

    def __init__(self) -> None:
        self._by_size: dict[int, memoryview] = {}

    def get(self, size: int) -> memoryview:
        if size not in self._by_size:
            self._by_size[size] = memoryview(bytearray(size))
        return self._by_size[size]


async def read_ranges(buffer: memoryview, in_flight: int, fetch: Callable[[int, int], Awaitable[Any]]) -> int:
    """`fetch(start, stop)` for every 8 MiB range of `buffer`, `in_flight` at a time, each into its place."""
    size = len(buffer)
    gate = asyncio.Semaphore(in_flight)

    async def one(start: int) -> None:
        stop = min(size, start + RANGE_BYTES)
        async with gate:
            buffer[start:stop] = await fetch(start, stop)  # a short answer does not fit: ValueError

    async with asyncio.TaskGroup() as ranges:
        for start in range(0, size, RANGE_BYTES):
            ranges.create_task(one(start))
    return size


class _LoopReader:
    """A reader whose client lives in an event loop of its own for the whole run, so set-up is not timed."""

    name: str
    connections: int

    def __init__(self, buffers: Buffers) -> None:
        self._runner = asyncio.Runner()
        self._stack = contextlib.AsyncExitStack()
        self._buffers = buffers

    def read(self, bucket: str, key: str, size: int) -> int:
        return self._runner.run(self._read(bucket, key, size))

    async def _read(self, bucket: str, key: str, size: int) -> int:
        raise NotImplementedError

    def close(self) -> None:
        self._runner.run(self._stack.aclose())
        self._runner.close()


class AiobotocoreRanges(_LoopReader):
    """One aiobotocore client, `in_flight` ranged GETs of 8 MiB at a time, each body read whole."""

    def __init__(self, endpoint_url: str, in_flight: int, buffers: Buffers) -> None:
        super().__init__(buffers)
        self.name = f"aiobotocore, {in_flight} x 8 MiB in flight"
        self.connections = in_flight
        self._client = self._runner.run(self._connect(endpoint_url))

    async def _connect(self, endpoint_url: str) -> Any:
        from aiobotocore.config import AioConfig
        from aiobotocore.session import get_session

        config = AioConfig(max_pool_connections=self.connections, s3={"addressing_style": "path"})
        return await self._stack.enter_async_context(
            get_session().create_client(
                "s3",
                endpoint_url=endpoint_url,
                region_name=REGION,
                aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                config=config,
            )
        )

    async def _read(self, bucket: str, key: str, size: int) -> int:
        async def fetch(start: int, stop: int) -> bytes:
            response = await self._client.get_object(Bucket=bucket, Key=key, Range=f"bytes={start}-{stop - 1}")
            async with response["Body"] as body:
                data: bytes = await body.read()
                return data

        return await read_ranges(self._buffers.get(size), self.connections, fetch)


def _s3fs(endpoint_url: str, connections: int | None) -> Any:
    import s3fs  # type: ignore[import-untyped]

    config: dict[str, Any] = {"s3": {"addressing_style": "path"}}
    if connections is not None:
        config["max_pool_connections"] = connections
    return s3fs.S3FileSystem(
        key=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        secret=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        endpoint_url=endpoint_url,
        client_kwargs={"region_name": REGION},
        config_kwargs=config,
        asynchronous=True,
        skip_instance_cache=True,
    )


class _S3fsReader(_LoopReader):
    """An s3fs `S3FileSystem` in async mode, its aiobotocore session opened once."""

    def __init__(self, endpoint_url: str, pool: int | None, buffers: Buffers) -> None:
        super().__init__(buffers)
        self._fs = self._runner.run(self._connect(endpoint_url, pool))

    async def _connect(self, endpoint_url: str, pool: int | None) -> Any:
        fs = _s3fs(endpoint_url, pool)
        await fs.set_session()
        self._stack.push_async_callback(fs._s3.close)
        return fs


class S3fsDefaults(_S3fsReader):
    """`S3FileSystem.cat_file(path)` as it comes: a HEAD, then 50 MiB ranges 10 at a time on 10 connections."""

    connections = 10

    def __init__(self, endpoint_url: str, buffers: Buffers) -> None:
        super().__init__(endpoint_url, None, buffers)
        self.name = "s3fs cat_file, whole object (its defaults)"

    async def _read(self, bucket: str, key: str, size: int) -> int:
        return len(await self._fs._cat_file(f"{bucket}/{key}"))


class S3fsRanges(_S3fsReader):
    """s3fs's `_cat_file(path, start, end)`, `in_flight` ranges of 8 MiB at a time."""

    def __init__(self, endpoint_url: str, in_flight: int, buffers: Buffers) -> None:
        super().__init__(endpoint_url, in_flight, buffers)
        self.name = f"s3fs, {in_flight} x 8 MiB in flight"
        self.connections = in_flight

    async def _read(self, bucket: str, key: str, size: int) -> int:
        path = f"{bucket}/{key}"

        async def fetch(start: int, stop: int) -> bytes:
            return await self._fs._cat_file(path, start=start, end=stop)  # type: ignore[no-any-return]

        return await read_ranges(self._buffers.get(size), self.connections, fetch)


class ObstoreRanges(_LoopReader):
    """obstore (Rust's object_store): `get_range_async` for `in_flight` ranges of 8 MiB at a time."""

    def __init__(self, endpoint_url: str, in_flight: int, buffers: Buffers) -> None:
        super().__init__(buffers)
        self.name = f"obstore, {in_flight} x 8 MiB in flight"
        self.connections = in_flight
        self._endpoint_url = endpoint_url
        self._stores: dict[str, Any] = {}

    def _store(self, bucket: str) -> Any:
        from obstore.store import S3Store

        if bucket not in self._stores:
            self._stores[bucket] = S3Store(
                bucket,
                endpoint=self._endpoint_url,
                region=REGION,
                access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                virtual_hosted_style_request=False,
                client_options={"allow_http": True},
            )
        return self._stores[bucket]

    async def _read(self, bucket: str, key: str, size: int) -> int:
        import obstore

        store = self._store(bucket)

        async def fetch(start: int, stop: int) -> Any:
            return await obstore.get_range_async(store, key, start=start, end=stop)

        return await read_ranges(self._buffers.get(size), self.connections, fetch)


class PrefetchdClient:
    """prefetchd's `bytes_iter` at its defaults, drained from the client: a new stream per read, its batches
    left in the ring. The daemon sizes each stream's ring from the latency it measures at open (a client's
    `prefetch` is the least it gets): a fixed deep ring costs fresh shared memory's page faults for nothing
    on a near endpoint (512 MiB and 32 ahead read 439-480 MB/s here at 30 ms, 64 MiB and 8 ahead 598-703)."""

    def __init__(self, socket_path: Path, connections: int, prefetch: int = 8) -> None:
        self.name = "prefetchd bytes_iter, through the client"
        self.connections = connections  # the daemon's --concurrency
        self.socket_path = socket_path
        self.prefetch = prefetch

    def read(self, bucket: str, key: str, size: int) -> int:
        from prefetchd_client import bytes_iter

        url = f"s3://{bucket}/{key}"
        with bytes_iter(url, batch_bytes=RANGE_BYTES, prefetch=self.prefetch, socket_path=self.socket_path) as batches:
            return sum(len(batch.data) for batch in batches)

    def close(self) -> None:
        pass


class PrefetchdSteady:
    """prefetchd's `bytes_iter` as a trainer reads it, timed on a stream's steady epochs. The stream stays open
    while its object is read and is reopened, untimed, when the other object's turn came between (two open
    at once would share the daemon's target rate). Each turn drains one epoch untimed, which also faults the
    ring's pages in and pays the open, as the peers' buffers and clients are before they are timed (and the
    daemon filled the ring while the other readers ran, which would flatter the figure), then times the
    epochs that follow without a break, at least `STEADY_BYTES` of them. Epochs back to back are what a
    trainer reads, and the daemon starts an epoch's GETs while the last ones of the one before are still
    coming; a peer called once an epoch does not.
    """

    STEADY_BYTES = 400_000_000

    def __init__(self, daemon: DaemonProcess, connections: int, prefetch: int = 8) -> None:
        self.name = "prefetchd bytes_iter, one stream's steady epochs"
        self.connections = connections
        self.daemon = daemon
        self.prefetch = prefetch
        self._streams: dict[str, Any] = {}

    def read(self, bucket: str, key: str, size: int) -> int:
        return self.timed_read(bucket, key, size)[0]

    def timed_read(self, bucket: str, key: str, size: int) -> tuple[int, float]:
        """(bytes an epoch brought, seconds an epoch took), over the epochs after the untimed one."""
        from prefetchd_client import bytes_iter

        url = f"s3://{bucket}/{key}"
        if url not in self._streams:
            self.close()  # one stream open at a time: bytes streams open together share the daemon's target rate
            self.daemon.until_no_streams()
            self._streams[url] = bytes_iter(
                url, batch_bytes=RANGE_BYTES, prefetch=self.prefetch, socket_path=self.daemon.socket_path
            )
        stream = self._streams[url]
        sum(len(batch.data) for batch in stream)
        epochs = max(1, -(-self.STEADY_BYTES // max(1, size)))
        started = time.perf_counter()
        got = [sum(len(batch.data) for batch in stream) for _ in range(epochs)]
        seconds = (time.perf_counter() - started) / epochs
        if len(set(got)) != 1:
            raise RuntimeError(f"{self.name}: epochs of {url} brought {got} bytes")
        return got[0], seconds

    def close(self) -> None:
        for stream in self._streams.values():
            stream.close()
        self._streams.clear()


def peers(endpoint_url: str, buffers: Buffers) -> list[Reader]:
    """Every reader measured against prefetchd, in the order the table lists them."""
    readers: list[Reader] = [
        WholeObject(endpoint_url),
        SequentialRanges(endpoint_url),
        S3fsDefaults(endpoint_url, buffers),
    ]
    for make in (AiobotocoreRanges, ObstoreRanges, S3fsRanges):
        readers.extend(make(endpoint_url, in_flight, buffers) for in_flight in (16, 32, 64))
    return readers
