"""The epoch cache: fetched ranges kept in RAM, so that epoch 2 onward reads nothing from S3 when it fits.

Entries are keyed by (URL, pinned version, start, size): readers cut an object into the same ranges every
epoch, so a later epoch, or another stream with the same chunking, finds them. A new version of an object
(its ETag moved) drops every entry of the old one. Least recently used entries go first when the byte
budget is full; a range larger than the whole budget is never cached. Cached buffers are read-only: every
stream that gets one shares it.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from .source import ObjectInfo, ReadRange

Key = tuple[str, str, int, int]


@dataclass(frozen=True, slots=True)
class CacheStatistics:
    entries: int
    held_bytes: int
    budget_bytes: int
    hits: int
    misses: int
    hit_bytes: int


class ChunkCache:
    """An LRU of fetched ranges within `budget_bytes`."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self._entries: OrderedDict[Key, NDArray[np.uint8]] = OrderedDict()
        self._versions: dict[str, str] = {}
        self._held = 0
        self._hits = self._misses = self._hit_bytes = 0

    async def fetch(self, info: ObjectInfo, start: int, size: int, read_range: ReadRange) -> NDArray[np.uint8]:
        """The bytes [start, start + size) of `info`: from the cache, or read (and kept if they fit)."""
        self._forget_other_versions(info)
        key = (info.url, info.version, start, size)
        cached = self._entries.get(key)
        if cached is not None:
            self._entries.move_to_end(key)
            self._hits += 1
            self._hit_bytes += size
            return cached
        self._misses += 1
        buffer = np.empty(size, dtype=np.uint8)
        await read_range(info, start, buffer.data)
        buffer.flags.writeable = False  # shared from now on
        self._keep(key, buffer)
        return buffer

    def _forget_other_versions(self, info: ObjectInfo) -> None:
        known = self._versions.get(info.url)
        if known == info.version:
            return
        self._versions[info.url] = info.version
        if known is None:
            return
        for key in [k for k in self._entries if k[0] == info.url and k[1] != info.version]:
            self._held -= self._entries.pop(key).nbytes

    def _keep(self, key: Key, buffer: NDArray[np.uint8]) -> None:
        if buffer.nbytes > self.budget_bytes or key in self._entries:
            return
        while self._held + buffer.nbytes > self.budget_bytes:
            _, evicted = self._entries.popitem(last=False)
            self._held -= evicted.nbytes
        self._entries[key] = buffer
        self._held += buffer.nbytes

    def statistics(self) -> CacheStatistics:
        return CacheStatistics(
            len(self._entries), self._held, self.budget_bytes, self._hits, self._misses, self._hit_bytes
        )

    def __repr__(self) -> str:
        s = self.statistics()
        return f"<ChunkCache {s.entries} ranges, {s.held_bytes}/{s.budget_bytes} B, {s.hits} hits, {s.misses} misses>"
