"""The epoch cache's disk tier, over real files: spills, budget, checks on read, new versions, restarts."""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
import pytest

from prefetchd.fetch.cache import ChunkCache
from prefetchd.fetch.cache_files import CacheDirError, EntryKey, parse_entry_name
from prefetchd.fetch.disk_cache import DiskCache
from prefetchd.fetch.local import LocalSource
from prefetchd.fetch.source import ObjectInfo

RANGE = 4096


class CountingSource:
    """A real local file source that counts the reads that reach it."""

    def __init__(self) -> None:
        self.source = LocalSource()
        self.reads: list[int] = []

    async def read_range(self, info: ObjectInfo, start: int, out: memoryview) -> None:
        self.reads.append(start)
        await self.source.read_range(info, start, out)


def _write(path: Path, data: bytes) -> ObjectInfo:
    path.write_bytes(data)
    return asyncio.run(LocalSource().stat(str(path)))


def _random(size: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


def _entries(directory: Path) -> dict[int, Path]:
    """The cache's files by the start of the range they hold."""
    found = {}
    for path in directory.iterdir():
        entry = parse_entry_name(path.name)
        if entry is not None:
            found[entry.key.start] = path
    return found


def _with_cache(
    directory: Path, ram_bytes: int, disk_bytes: int, body: Callable[[ChunkCache, DiskCache], Awaitable[None]]
) -> None:
    """Run `body` with a RAM cache over a disk tier, closing both as the daemon does (RAM spills first)."""

    async def run() -> None:
        async with DiskCache(directory, disk_bytes) as disk:
            cache = ChunkCache(ram_bytes, disk)
            try:
                await body(cache, disk)
            finally:
                await cache.aclose()

    asyncio.run(run())


async def _fetch(cache: ChunkCache, info: ObjectInfo, source: CountingSource, starts: list[int]) -> list[bytes]:
    return [(await cache.fetch(info, start, RANGE, source.read_range)).tobytes() for start in starts]


def test_ranges_ram_cannot_hold_are_read_back_from_disk_with_identical_bytes(tmp_path: Path) -> None:
    data = _random(8 * RANGE)
    info = _write(tmp_path / "object", data)
    directory, source = tmp_path / "cache", CountingSource()
    starts = [i * RANGE for i in range(8)]

    async def body(cache: ChunkCache, disk: DiskCache) -> None:
        first = await _fetch(cache, info, source, starts)
        await disk.settle()
        again = await _fetch(cache, info, source, starts)
        assert first == again == [data[s : s + RANGE] for s in starts]
        stats = cache.statistics()
        assert stats.disk is not None
        assert (stats.entries, stats.disk.entries, stats.disk.hits, stats.disk.spilled) == (0, 8, 8, 8)

    _with_cache(directory, 0, 1 << 20, body)
    assert source.reads == starts, "the second pass read nothing from the source"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert {stat.S_IMODE(path.stat().st_mode) for path in _entries(directory).values()} == {0o600}


def test_ranges_evicted_from_ram_spill_to_disk_and_a_miss_finds_them_there(tmp_path: Path) -> None:
    data = _random(4 * RANGE)
    info = _write(tmp_path / "object", data)
    source = CountingSource()

    async def body(cache: ChunkCache, disk: DiskCache) -> None:
        await _fetch(cache, info, source, [0, RANGE, 2 * RANGE, 3 * RANGE])  # RAM holds the last two
        await disk.settle()
        assert sorted(_entries(tmp_path / "cache")) == [0, RANGE]
        assert await _fetch(cache, info, source, [0, RANGE]) == [data[:RANGE], data[RANGE : 2 * RANGE]]
        assert disk.statistics().hits == 2

    _with_cache(tmp_path / "cache", 2 * RANGE, 1 << 20, body)
    assert source.reads == [0, RANGE, 2 * RANGE, 3 * RANGE]


def test_the_disk_budget_removes_the_least_recently_used_files_first(tmp_path: Path) -> None:
    info = _write(tmp_path / "object", _random(4 * RANGE))
    source = CountingSource()

    async def body(cache: ChunkCache, disk: DiskCache) -> None:
        await _fetch(cache, info, source, [0, RANGE, 2 * RANGE])
        await disk.settle()
        await _fetch(cache, info, source, [0])  # a disk hit: 0 is now the most recent
        await _fetch(cache, info, source, [3 * RANGE])  # its spill removes RANGE, the least recent
        await disk.settle()
        assert sorted(_entries(tmp_path / "cache")) == [0, 2 * RANGE, 3 * RANGE]
        await _fetch(cache, info, source, [RANGE])
        assert disk.statistics().held_bytes <= 3 * RANGE

    _with_cache(tmp_path / "cache", 0, 3 * RANGE, body)
    assert source.reads == [0, RANGE, 2 * RANGE, 3 * RANGE, RANGE]


def test_a_leftover_temporary_file_is_ignored_and_removed_at_start(tmp_path: Path) -> None:
    data = _random(2 * RANGE)
    info = _write(tmp_path / "object", data)
    directory, source = tmp_path / "cache", CountingSource()
    directory.mkdir(mode=0o700)
    key = EntryKey.of(info.url, info.version, 0, RANGE)
    leftover = directory / f"{key.stem}.0badcafe.tmp"  # what a crash mid-write leaves
    leftover.write_bytes(data[:100])
    foreign = directory / "notes.txt"
    foreign.write_text("not the cache's")

    async def body(cache: ChunkCache, disk: DiskCache) -> None:
        assert not leftover.exists()
        assert disk.statistics().entries == 0
        assert await _fetch(cache, info, source, [0]) == [data[:RANGE]]

    _with_cache(directory, 0, 1 << 20, body)
    assert source.reads == [0], "the leftover was never served"
    assert foreign.read_text() == "not the cache's", "files that are not entries are left alone"


@pytest.mark.parametrize("damage", ["flipped byte", "truncated", "emptied"])
def test_a_damaged_entry_is_removed_and_read_again_never_served(tmp_path: Path, damage: str) -> None:
    data = _random(2 * RANGE)
    info = _write(tmp_path / "object", data)
    directory, source = tmp_path / "cache", CountingSource()

    async def body(cache: ChunkCache, disk: DiskCache) -> None:
        await _fetch(cache, info, source, [0, RANGE])
        await disk.settle()
        path = _entries(directory)[RANGE]
        damaged = bytearray(path.read_bytes())
        if damage == "flipped byte":
            damaged[1234] ^= 0x10
        path.write_bytes(damaged[: {"flipped byte": RANGE, "truncated": RANGE - 1, "emptied": 0}[damage]])
        assert await _fetch(cache, info, source, [0, RANGE]) == [data[:RANGE], data[RANGE:]]
        assert disk.statistics().dropped_corrupt == 1
        await disk.settle()
        assert _entries(directory)[RANGE].read_bytes() == data[RANGE:], "the range read again is cached again"

    _with_cache(directory, 0, 1 << 20, body)
    assert source.reads == [0, RANGE, RANGE]


def test_a_new_etag_drops_the_old_versions_files(tmp_path: Path) -> None:
    path, directory, source = tmp_path / "object", tmp_path / "cache", CountingSource()
    old = _write(path, b"a" * 2 * RANGE)

    async def body(cache: ChunkCache, disk: DiskCache) -> None:
        await _fetch(cache, old, source, [0, RANGE])
        await disk.settle()
        assert len(_entries(directory)) == 2
        path.write_bytes(b"b" * 2 * RANGE)
        new = await LocalSource().stat(str(path))
        assert new.version != old.version
        assert await _fetch(cache, new, source, [0]) == [b"b" * RANGE]
        await disk.settle()
        assert disk.statistics().entries == 1, "only the new version's range is left"

    _with_cache(directory, 0, 1 << 20, body)
    assert [p.read_bytes() for p in _entries(directory).values()] == [b"b" * RANGE]
    assert source.reads == [0, RANGE, 0]


def test_a_new_etag_drops_the_files_a_previous_run_left(tmp_path: Path) -> None:
    path, directory, source = tmp_path / "object", tmp_path / "cache", CountingSource()
    old = _write(path, b"a" * 2 * RANGE)

    async def fill(cache: ChunkCache, disk: DiskCache) -> None:
        await _fetch(cache, old, source, [0, RANGE])

    _with_cache(directory, 0, 1 << 20, fill)
    new = _write(path, b"b" * 2 * RANGE)

    async def change(cache: ChunkCache, disk: DiskCache) -> None:
        assert disk.statistics().reused_at_start == 2
        assert await _fetch(cache, new, source, [0]) == [b"b" * RANGE]
        await disk.settle()
        assert disk.statistics().entries == 1

    _with_cache(directory, 0, 1 << 20, change)
    assert [p.read_bytes() for p in _entries(directory).values()] == [b"b" * RANGE]


def test_a_restarted_daemon_serves_what_the_last_run_cached_including_ram(tmp_path: Path) -> None:
    data = _random(6 * RANGE)
    info = _write(tmp_path / "object", data)
    directory, source = tmp_path / "cache", CountingSource()
    starts = [i * RANGE for i in range(6)]

    async def first_run(cache: ChunkCache, disk: DiskCache) -> None:
        await _fetch(cache, info, source, starts)  # RAM holds the last 3; closing spills them

    async def second_run(cache: ChunkCache, disk: DiskCache) -> None:
        assert disk.statistics().reused_at_start == 6
        assert await _fetch(cache, info, source, starts) == [data[s : s + RANGE] for s in starts]
        assert disk.statistics().hits == 6

    _with_cache(directory, 3 * RANGE, 1 << 20, first_run)
    _with_cache(directory, 3 * RANGE, 1 << 20, second_run)
    assert source.reads == starts, "the second run read nothing from the source"


def test_a_restart_with_a_smaller_budget_keeps_the_most_recently_used(tmp_path: Path) -> None:
    info = _write(tmp_path / "object", _random(4 * RANGE))
    directory, source = tmp_path / "cache", CountingSource()
    starts = [i * RANGE for i in range(4)]

    async def fill(cache: ChunkCache, disk: DiskCache) -> None:
        await _fetch(cache, info, source, starts)

    _with_cache(directory, 0, 1 << 20, fill)
    for age, start in enumerate(reversed(starts)):  # file timestamps tick coarsely: set them apart
        os.utime(_entries(directory)[start], ns=(0, (10_000 - age) * 10**9))

    async def reuse(cache: ChunkCache, disk: DiskCache) -> None:
        assert disk.statistics().reused_at_start == 2

    _with_cache(directory, 0, 2 * RANGE, reuse)
    assert sorted(_entries(directory)) == [2 * RANGE, 3 * RANGE]


def test_one_directory_serves_one_daemon(tmp_path: Path) -> None:
    async def run() -> None:
        async with DiskCache(tmp_path / "cache", 1 << 20):
            with pytest.raises(CacheDirError, match="in use by another prefetchd daemon"):
                async with DiskCache(tmp_path / "cache", 1 << 20):
                    pass

    asyncio.run(run())


def test_a_directory_other_users_can_write_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "cache"
    directory.mkdir()
    directory.chmod(0o777)

    async def run() -> None:
        async with DiskCache(directory, 1 << 20):
            pass

    with pytest.raises(CacheDirError, match="writable by other users"):
        asyncio.run(run())


def test_without_eviction_ranges_go_to_disk_while_it_has_room_and_push_nothing_out(tmp_path: Path) -> None:
    data = _random(4 * RANGE)
    info = _write(tmp_path / "object", data)
    source = CountingSource()
    starts = [0, RANGE, 2 * RANGE, 3 * RANGE]

    async def body(cache: ChunkCache, disk: DiskCache) -> None:
        for _ in range(2):
            got = [(await cache.fetch(info, s, RANGE, source.read_range, evict=False)).tobytes() for s in starts]
            assert got == [data[s : s + RANGE] for s in starts]
            await disk.settle()
        assert sorted(_entries(tmp_path / "cache")) == [RANGE, 2 * RANGE], "RAM holds the first, disk the next two"
        assert (cache.statistics().hits, disk.statistics().hits) == (1, 2)

    _with_cache(tmp_path / "cache", RANGE, 2 * RANGE, body)
    assert source.reads == [*starts, 3 * RANGE]
