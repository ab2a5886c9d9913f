"""The epoch cache, over a real local file: hits serve identical bytes, new versions and budgets are honoured."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest

from prefetchd.fetch.admission import AdmissionGate
from prefetchd.fetch.aimd import AimdLimit
from prefetchd.fetch.cache import ChunkCache
from prefetchd.fetch.flow import Flow, current_flow
from prefetchd.fetch.local import LocalSource
from prefetchd.fetch.source import ObjectInfo

T = TypeVar("T")


class CountingSource:
    """A real local file source that counts the reads that reach it."""

    def __init__(self) -> None:
        self.source = LocalSource()
        self.reads: list[tuple[int, int]] = []

    async def read_range(self, info: ObjectInfo, start: int, out: memoryview) -> None:
        self.reads.append((start, len(out)))
        await self.source.read_range(info, start, out)


def _write(path: Path, data: bytes) -> ObjectInfo:
    path.write_bytes(data)
    return asyncio.run(LocalSource().stat(str(path)))


def test_a_hit_serves_the_same_bytes_without_reading_again(tmp_path: Path) -> None:
    data = np.random.default_rng(0).integers(0, 256, 10_000, dtype=np.uint8).tobytes()
    info = _write(tmp_path / "object", data)
    cache, source = ChunkCache(1 << 20), CountingSource()

    async def twice() -> tuple[bytes, bytes]:
        first = await cache.fetch(info, 1000, 3000, source.read_range)
        second = await cache.fetch(info, 1000, 3000, source.read_range)
        assert second is first
        assert not second.flags.writeable, "a shared buffer must not be written"
        return first.tobytes(), second.tobytes()

    first, second = asyncio.run(twice())
    assert first == second == data[1000:4000]
    assert source.reads == [(1000, 3000)]
    assert cache.statistics().hits == 1 and cache.statistics().misses == 1


def test_a_changed_object_is_read_afresh_and_its_old_ranges_are_dropped(tmp_path: Path) -> None:
    path = tmp_path / "object"
    old = _write(path, b"a" * 4096)
    cache, source = ChunkCache(1 << 20), CountingSource()
    assert asyncio.run(cache.fetch(old, 0, 4096, source.read_range)).tobytes() == b"a" * 4096
    new = _write(path, b"b" * 5000)
    assert new.version != old.version
    assert asyncio.run(cache.fetch(new, 0, 4096, source.read_range)).tobytes() == b"b" * 4096
    assert len(source.reads) == 2
    assert cache.statistics().entries == 1 and cache.statistics().held_bytes == 4096


def test_least_recently_used_ranges_go_first_and_oversized_ones_are_never_kept(tmp_path: Path) -> None:
    info = _write(tmp_path / "object", bytes(range(256)) * 64)
    cache, source = ChunkCache(3000), CountingSource()

    async def run() -> None:
        for start in (0, 1000, 2000):
            await cache.fetch(info, start, 1000, source.read_range)
        await cache.fetch(info, 0, 1000, source.read_range)  # 0 is now the most recent
        await cache.fetch(info, 3000, 1000, source.read_range)  # evicts 1000, the least recent
        await cache.fetch(info, 0, 1000, source.read_range)
        await cache.fetch(info, 1000, 1000, source.read_range)
        await cache.fetch(info, 5000, 4000, source.read_range)  # bigger than the budget
        await cache.fetch(info, 5000, 4000, source.read_range)

    asyncio.run(run())
    assert source.reads == [
        (0, 1000),
        (1000, 1000),
        (2000, 1000),
        (3000, 1000),
        (1000, 1000),
        (5000, 4000),
        (5000, 4000),
    ]
    assert cache.statistics().held_bytes <= 3000


def test_a_failed_read_is_not_cached(tmp_path: Path) -> None:
    info = _write(tmp_path / "object", b"x" * 100)
    cache, source = ChunkCache(1 << 20), CountingSource()
    (tmp_path / "object").write_bytes(b"y" * 100)  # the pinned version no longer matches
    with pytest.raises(Exception, match="changed"):
        asyncio.run(cache.fetch(info, 0, 100, source.read_range))
    assert cache.statistics().entries == 0


class GatedSource(CountingSource):
    """Reads wait until the test opens the gate, so that several streams ask for a range while it is read."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    async def read_range(self, info: ObjectInfo, start: int, out: memoryview) -> None:
        self.reads.append((start, len(out)))
        await self.gate.wait()
        await self.source.read_range(info, start, out)


def test_streams_asking_for_a_range_being_read_share_that_read(tmp_path: Path) -> None:
    data = np.random.default_rng(1).integers(0, 256, 10_000, dtype=np.uint8).tobytes()
    info = _write(tmp_path / "object", data)
    cache, source = ChunkCache(1 << 20), GatedSource()

    async def ranks() -> list[bytes]:
        fetches = [asyncio.create_task(cache.fetch(info, 2000, 4000, source.read_range)) for _ in range(4)]
        await asyncio.sleep(0)
        source.gate.set()
        return [buffer.tobytes() for buffer in await asyncio.gather(*fetches)]

    assert asyncio.run(ranks()) == [data[2000:6000]] * 4
    assert source.reads == [(2000, 4000)], "one GET for four streams"
    assert (cache.statistics().misses, cache.statistics().hits) == (1, 3)


def test_a_cancelled_reader_leaves_the_range_to_those_who_wait_for_it(tmp_path: Path) -> None:
    data = np.random.default_rng(2).integers(0, 256, 10_000, dtype=np.uint8).tobytes()
    info = _write(tmp_path / "object", data)
    cache, source = ChunkCache(1 << 20), GatedSource()

    async def scenario() -> bytes:
        first = asyncio.create_task(cache.fetch(info, 0, 1000, source.read_range))
        await asyncio.sleep(0)
        second = asyncio.create_task(cache.fetch(info, 0, 1000, source.read_range))
        await asyncio.sleep(0)
        first.cancel()  # its stream closed mid-read
        with pytest.raises(asyncio.CancelledError):
            await first
        source.gate.set()
        return (await second).tobytes()

    assert asyncio.run(scenario()) == data[:1000]
    assert source.reads == [(0, 1000), (0, 1000)], "the waiter read it itself"


def test_a_stalled_streams_read_that_another_stream_waits_for_does_not_wait_behind_everyone(tmp_path: Path) -> None:
    data = bytes(range(256)) * 8
    info = _write(tmp_path / "object", data)
    cache, local = ChunkCache(1 << 20), LocalSource()
    gate = AdmissionGate("bucket", AimdLimit(1))
    entered: list[str] = []

    async def read_range(info: ObjectInfo, start: int, out: memoryview) -> None:
        async with gate.admitted():  # as S3Source reads: one place at the bucket's gate per try
            flow = current_flow.get()
            entered.append("none" if flow is None else flow.name)
            await local.read_range(info, start, out)

    async def as_flow(flow: Flow, work: Awaitable[T]) -> T:
        current_flow.set(flow)
        return await work

    async def scenario() -> bytes:
        stalled, busy, waiting = Flow("stalled", ahead=lambda: True), Flow("busy"), Flow("waiting")
        async with gate.admitted():  # the gate is full while the others line up
            stalled_read = asyncio.create_task(as_flow(stalled, cache.fetch(info, 0, 512, read_range)))
            await asyncio.sleep(0)
            busy_reads = [asyncio.create_task(as_flow(busy, read_range(info, 512, memoryview(bytearray(8)))))]
            busy_reads += [asyncio.create_task(as_flow(busy, read_range(info, 520, memoryview(bytearray(8)))))]
            await asyncio.sleep(0)
            shared = asyncio.create_task(as_flow(waiting, cache.fetch(info, 0, 512, read_range)))
            for _ in range(3):
                await asyncio.sleep(0)
            assert stalled.borrowers == 1 and gate.statistics().waiting == 3
        await asyncio.gather(stalled_read, *busy_reads)
        return (await shared).tobytes()

    assert asyncio.run(scenario()) == data[:512]
    # without the borrower, the stalled stream's read-ahead would go last: ["busy", "busy", "stalled"]
    assert entered == ["stalled", "busy", "busy"]


def test_without_eviction_a_range_is_kept_only_while_there_is_room(tmp_path: Path) -> None:
    """A part larger than the cache, read front to back each epoch: an LRU would evict every range before its
    next use and never hit; kept without eviction, the first ranges stay and hit on every later pass."""
    info = _write(tmp_path / "object", bytes(range(256)) * 64)
    cache, source = ChunkCache(2500), CountingSource()

    async def passes() -> None:
        await cache.fetch(info, 5000, 500, source.read_range)  # another stream's range, kept as usual
        for _ in range(2):
            for start in (0, 1000, 2000, 3000):
                got = await cache.fetch(info, start, 1000, source.read_range, evict=False)
                assert got.tobytes() == (bytes(range(256)) * 64)[start : start + 1000]

    asyncio.run(passes())
    assert source.reads == [
        (5000, 500),
        (0, 1000),
        (1000, 1000),
        (2000, 1000),
        (3000, 1000),
        (2000, 1000),
        (3000, 1000),
    ]
    assert cache.statistics().hits == 2
    assert cache.statistics().held_bytes == 2500, "the other stream's range was not pushed out"
