"""Staging memory: where a batch's raw records wait for the decode workers, reused batch after batch.

One area per batch in flight, each a memfd the daemon maps read-write and the workers map read-only,
once. Reusing them matters: a fresh memfd per batch costs a page fault per 4 KiB on both sides, which
measured as most of the daemon's CPU time per image. An area that is too small for a batch is replaced
by one twice as large.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from ..ring.segment import SEGMENT_MODE
from .pool import RingLease

_MIN_AREA_BYTES = 1 << 20


class StagingArea:
    def __init__(self, size: int) -> None:
        self.size = size
        self.fd = os.memfd_create("prefetchd-staging", os.MFD_CLOEXEC)
        try:
            os.fchmod(self.fd, SEGMENT_MODE)
            os.ftruncate(self.fd, size)
            self.map = mmap.mmap(self.fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(self.fd)
            raise
        self.mapping = -1  # the workers' id for it, once they have mapped it

    def close(self) -> None:
        self.map.close()
        os.close(self.fd)


class StagingPool:
    """Areas for one stream's batches in flight, mapped into that stream's decode workers."""

    def __init__(self, lease: RingLease) -> None:
        self._lease = lease
        self._free: list[StagingArea] = []
        self._all: list[StagingArea] = []

    @asynccontextmanager
    async def area(self, size: int) -> AsyncIterator[StagingArea]:
        """An area of at least `size` bytes, the caller's until the block ends."""
        area = self._take(size)
        if area is None:
            area = await self._create(size)
        try:
            yield area
        finally:
            self._free.append(area)

    def _take(self, size: int) -> StagingArea | None:
        fitting = [a for a in self._free if a.size >= size]
        if fitting:
            area = min(fitting, key=lambda a: a.size)
            self._free.remove(area)
            return area
        if self._free:  # too small: retire the smallest, a larger one replaces it
            self._retire(min(self._free, key=lambda a: a.size))
        return None

    async def _create(self, size: int) -> StagingArea:
        largest = max((a.size for a in self._all), default=_MIN_AREA_BYTES // 2)
        area = StagingArea(max(size, 2 * largest, _MIN_AREA_BYTES))
        try:
            area.mapping = await self._lease.map_staging(area.fd, area.size, area.map)
        except BaseException:
            area.close()
            raise
        self._all.append(area)
        return area

    def _retire(self, area: StagingArea) -> None:
        self._free.remove(area)
        self._all.remove(area)
        self._lease.unmap(area.mapping)
        area.close()

    def close(self) -> None:
        for area in self._all:
            self._lease.unmap(area.mapping)
            area.close()
        self._all = []
        self._free = []
