"""Keeps up to C ranged reads in flight, in plan order, under a byte budget: the read-ahead engine.

The plan (an iterable of `RangeRequest`, in the order the consumer will need them) is issued front to back;
a request waits while the bytes in flight plus the bytes fetched but not yet released would exceed the
budget. The consumer awaits `get(key)` and calls `release(key)` when it is done with the buffer. A consumer
may hold buffers while it awaits the next (a batch that spans chunks); when it awaits a range not issued yet,
the budget yields until that range is issued, since what it holds cannot be released before then.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from .cache import ChunkCache
from .source import ObjectInfo, ReadRange

ByteArray = NDArray[np.uint8]


@dataclass(frozen=True, slots=True)
class RangeRequest:
    key: int
    info: ObjectInfo
    start: int
    size: int


@dataclass(frozen=True, slots=True)
class SchedulerStatistics:
    issued: int
    completed: int
    in_flight: int
    held_bytes: int
    fetched_bytes: int
    busy_s: float  # summed duration of the reads


class RangeScheduler:
    """Fetches a plan's ranges into fresh buffers, at most `concurrency` at a time, within `budget_bytes`."""

    def __init__(
        self,
        read_range: ReadRange,
        requests: Iterable[RangeRequest],
        *,
        concurrency: int,
        budget_bytes: int,
        cache: ChunkCache | None = None,
        part_bytes: int = 0,
    ) -> None:
        """`part_bytes`: what the stream reads of the object an epoch; a part larger than the cache evicts nothing."""
        self._read_range = read_range
        self._cache = cache
        self._evict = cache is None or cache.holds(part_bytes)
        self._requests = iter(requests)
        self._concurrency = asyncio.Semaphore(concurrency)
        self._budget_bytes = budget_bytes
        self._futures: dict[int, asyncio.Future[ByteArray]] = {}
        self._sizes: dict[int, int] = {}
        self._room = asyncio.Event()
        self._held_bytes = 0
        self._issued = self._completed = self._in_flight = self._fetched_bytes = 0
        self._busy_s = 0.0

    def _future(self, key: int) -> asyncio.Future[ByteArray]:
        future = self._futures.get(key)
        if future is None:
            future = self._futures[key] = asyncio.get_running_loop().create_future()
        return future

    async def run(self) -> None:
        """Issue every request; returns once all are done. Read errors go to whoever `get`s that key."""
        async with asyncio.TaskGroup() as group:
            for request in self._requests:
                await self._wait_for_room(request.size)
                await self._concurrency.acquire()
                self._held_bytes += request.size
                self._sizes[request.key] = request.size
                self._issued += 1
                group.create_task(self._fetch(request, self._future(request.key)))

    async def _wait_for_room(self, size: int) -> None:
        while self._held_bytes and self._held_bytes + size > self._budget_bytes and not self._awaiting_unissued():
            self._room.clear()
            await self._room.wait()

    def _awaiting_unissued(self) -> bool:
        """Whether the consumer awaits a range the plan has not reached (waiting for room would deadlock)."""
        return any(key not in self._sizes for key in self._futures)

    async def _fetch(self, request: RangeRequest, future: asyncio.Future[ByteArray]) -> None:
        started = time.perf_counter()
        self._in_flight += 1
        try:
            if self._cache is not None:
                buffer = await self._cache.fetch(
                    request.info, request.start, request.size, self._read_range, evict=self._evict
                )
            else:
                buffer = np.empty(request.size, dtype=np.uint8)
                await self._read_range(request.info, request.start, buffer.data)
        except Exception as exc:  # delivered to the consumer, which raises it in its own context
            if not future.done():
                future.set_exception(exc)
        else:
            self._fetched_bytes += request.size
            if not future.done():
                future.set_result(buffer)
        finally:
            self._in_flight -= 1
            self._completed += 1
            self._busy_s += time.perf_counter() - started
            self._concurrency.release()

    async def get(self, key: int) -> ByteArray:
        """The buffer for `key`, once its read is done (raises that read's error)."""
        if key not in self._futures:
            self._room.set()  # the run loop rechecks: a range the consumer awaits is not held back by the budget
        return await asyncio.shield(self._future(key))

    def release(self, key: int) -> None:
        """The consumer is done with `key`'s buffer: its bytes go back to the budget."""
        future = self._futures.pop(key, None)
        if future is not None and future.done() and not future.cancelled():
            future.exception()  # mark an unread error as retrieved
        self._held_bytes -= self._sizes.pop(key, 0)
        self._room.set()

    def close(self) -> None:
        """Drop every buffer; pending reads are cancelled by the task group that runs `run()`."""
        for key in list(self._futures):
            self.release(key)

    def statistics(self) -> SchedulerStatistics:
        return SchedulerStatistics(
            self._issued,
            self._completed,
            self._in_flight,
            self._held_bytes,
            self._fetched_bytes,
            self._busy_s,
        )

    def __repr__(self) -> str:
        s = self.statistics()
        return f"<RangeScheduler issued={s.issued} in_flight={s.in_flight} held={s.held_bytes}B>"


@asynccontextmanager
async def fetching(scheduler: RangeScheduler) -> AsyncIterator[RangeScheduler]:
    """Run `scheduler` while the block runs; drop its buffers after. The block's own error comes out unwrapped."""
    try:
        async with asyncio.TaskGroup() as group:
            task = group.create_task(scheduler.run())
            try:
                yield scheduler
            finally:
                task.cancel()
    except BaseExceptionGroup as group_error:
        # the fetch task only fails by being cancelled (read errors go to get()): surface the block's error
        errors = group_error.exceptions
        raise errors[0] if len(errors) == 1 else group_error from None
    finally:
        scheduler.close()
