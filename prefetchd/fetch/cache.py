"""The epoch cache: fetched ranges kept in RAM, so that epoch 2 onward reads nothing from S3 when it fits.

Entries are keyed by (URL, pinned version, start, size): readers cut an object into the same ranges every
epoch, so a later epoch, or another stream with the same chunking, finds them. A new version of an object
(its ETag moved) drops every entry of the old one. Least recently used entries go first when the byte
budget is full; a range larger than the whole budget is never kept in RAM. Cached buffers are read-only: every
stream that gets one shares it. A range one stream is reading is not read again by another that asks for it
meanwhile (ranks of one host meet at their parts' boundaries, jobs on one dataset everywhere): the second
waits for the first's read, and reads it itself only if the first was cancelled or failed.

With a disk tier (`--cache-dir`), what RAM evicts or cannot hold spills to disk, a RAM miss looks there before
S3, and a graceful shutdown spills what RAM still holds, so that a restarted daemon starts warm.

A stream whose part of an object is larger than the whole cache asks for no eviction (`evict=False`): its
ranges are kept only while there is room. Each epoch reads such a part front to back, and in an LRU every
range would be evicted before its next use, so none would ever hit, and the part would push out everything
else. Kept without eviction, its first ranges stay and hit every epoch.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from .disk_cache import DiskCache, DiskCacheStatistics
from .flow import Flow, current_flow
from .source import ObjectInfo, ReadRange

Key = tuple[str, str, int, int]  # URL, version, start, size


@dataclass(frozen=True, slots=True)
class CacheStatistics:
    entries: int
    held_bytes: int
    budget_bytes: int
    hits: int
    misses: int
    hit_bytes: int
    disk: DiskCacheStatistics | None = None  # the disk tier's, when there is one


class ChunkCache:
    """An LRU of fetched ranges within `budget_bytes` of RAM (0: none), over an optional `disk` tier."""

    def __init__(self, budget_bytes: int, disk: DiskCache | None = None) -> None:
        self.budget_bytes = budget_bytes
        self.disk = disk
        self._entries: OrderedDict[Key, NDArray[np.uint8]] = OrderedDict()
        self._versions: dict[str, str] = {}
        self._held = 0
        self._hits = self._misses = self._hit_bytes = 0
        self._reading: dict[Key, asyncio.Future[NDArray[np.uint8]]] = {}  # ranges being read now, by whom waits
        self._readers: dict[Key, Flow | None] = {}  # the stream reading each of them

    def holds(self, part_bytes: int) -> bool:
        """Whether a stream's part of `part_bytes` fits in RAM and the disk tier together; a larger part can only
        be kept in part, and is fetched with `evict=False`."""
        return part_bytes <= self.budget_bytes + (self.disk.budget_bytes if self.disk is not None else 0)

    async def fetch(
        self, info: ObjectInfo, start: int, size: int, read_range: ReadRange, *, evict: bool = True
    ) -> NDArray[np.uint8]:
        """The bytes [start, start + size) of `info`: from RAM, from disk, from a read under way, or read (and kept).

        With `evict=False` a range read here is kept only where there is room: it pushes nothing out.
        """
        self._forget_other_versions(info)
        key = (info.url, info.version, start, size)
        while (cached := self._lookup(key)) is None and (reading := self._reading.get(key)) is not None:
            await self._wait_for(reading, self._readers.get(key))
            if not reading.cancelled():
                cached = reading.result()
                break
            # the reader was cancelled or failed: look again, and read it ourselves if nobody else is
        if cached is not None:
            self._hits += 1
            self._hit_bytes += size
            return cached
        self._misses += 1
        reading = self._reading[key] = asyncio.get_running_loop().create_future()
        self._readers[key] = current_flow.get()
        try:
            buffer = np.empty(size, dtype=np.uint8)
            if self.disk is None or not await self.disk.read_into(info.url, info.version, start, buffer.data):
                await read_range(info, start, buffer.data)
            buffer.flags.writeable = False  # shared from now on
        except BaseException:
            reading.cancel()  # whoever waits reads it in its own context, so its errors are its own
            raise
        finally:
            del self._reading[key], self._readers[key]
        reading.set_result(buffer)
        await (self._keep(key, buffer) if evict else self._keep_if_room(key, buffer))
        return buffer

    @staticmethod
    async def _wait_for(reading: asyncio.Future[NDArray[np.uint8]], reader: Flow | None) -> None:
        """Wait for another stream's read; meanwhile its reads are not mere read-ahead at the bucket's gate."""
        if reader is not None:
            reader.borrowers += 1
        try:
            await asyncio.wait([reading])  # our own cancellation still raises here; the reader's does not
        finally:
            if reader is not None:
                reader.borrowers -= 1

    def _lookup(self, key: Key) -> NDArray[np.uint8] | None:
        cached = self._entries.get(key)
        if cached is not None:
            self._entries.move_to_end(key)
        elif self.disk is not None:
            cached = self.disk.spilling(*key)  # evicted a moment ago, its write still under way
        return cached

    def _forget_other_versions(self, info: ObjectInfo) -> None:
        known = self._versions.get(info.url)
        if known == info.version:
            return
        self._versions[info.url] = info.version
        if known is None:
            return
        for key in [k for k in self._entries if k[0] == info.url and k[1] != info.version]:
            self._held -= self._entries.pop(key).nbytes

    async def _keep(self, key: Key, buffer: NDArray[np.uint8]) -> None:
        """Keep `buffer` in RAM; spill to disk what that evicts, or `buffer` itself if RAM cannot hold it."""
        if key in self._entries:
            return
        evicted: list[tuple[Key, NDArray[np.uint8]]] = []
        if buffer.nbytes > self.budget_bytes:
            evicted.append((key, buffer))
        else:
            while self._held + buffer.nbytes > self.budget_bytes:
                evicted.append(self._entries.popitem(last=False))
                self._held -= evicted[-1][1].nbytes
            self._entries[key] = buffer
            self._held += buffer.nbytes
        if self.disk is not None:
            for (url, version, start, _), spilled in evicted:
                await self.disk.spill(url, version, start, spilled)

    async def _keep_if_room(self, key: Key, buffer: NDArray[np.uint8]) -> None:
        """Keep `buffer` in RAM if it fits beside what is there, else on disk if that has room; evict nothing."""
        if key in self._entries:
            return
        if self._held + buffer.nbytes <= self.budget_bytes:
            self._entries[key] = buffer
            self._held += buffer.nbytes
        elif self.disk is not None and self.disk.has_room(buffer.nbytes):
            url, version, start, _ = key
            await self.disk.spill(url, version, start, buffer)

    async def aclose(self) -> None:
        """Spill what RAM holds to the disk tier (least recently used first), so that a restart finds it there."""
        if self.disk is None:
            return
        while self._entries:
            (url, version, start, _), buffer = self._entries.popitem(last=False)
            self._held -= buffer.nbytes
            await self.disk.spill(url, version, start, buffer)

    def statistics(self) -> CacheStatistics:
        disk = self.disk.statistics() if self.disk is not None else None
        return CacheStatistics(
            len(self._entries), self._held, self.budget_bytes, self._hits, self._misses, self._hit_bytes, disk
        )

    def __repr__(self) -> str:
        s = self.statistics()
        ram = f"{s.entries} ranges, {s.held_bytes}/{s.budget_bytes} B, {s.hits} hits, {s.misses} misses"
        return f"<ChunkCache {ram}{'' if self.disk is None else f'; {self.disk!r}'}>"
