"""The read-ahead engine (prefetchd/fetch/scheduler.py) over an in-memory byte source whose reads the test gates."""

from __future__ import annotations

import asyncio
import gc
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import pytest

from prefetchd.fetch.scheduler import RangeRequest, RangeScheduler
from prefetchd.fetch.source import ObjectInfo
from prefetchd_client.errors import ObjectChanged

T = TypeVar("T")

OBJECT = bytes((i * 7 + i // 256) % 256 for i in range(20_000))
INFO = ObjectInfo("s3://bucket-name/training-data/object", len(OBJECT), "etag-1")


class MemorySource:
    """Ranged reads copied from `OBJECT`; with `gated`, each read waits until the test opens its gate."""

    def __init__(self, *, gated: bool = False, failures: dict[int, Exception] | None = None) -> None:
        self.gated = gated
        self.failures = failures or {}
        self.started: list[int] = []  # range starts, in the order the reads began
        self.entered: defaultdict[int, asyncio.Event] = defaultdict(asyncio.Event)
        self.gates: defaultdict[int, asyncio.Event] = defaultdict(asyncio.Event)
        self.in_flight = 0
        self.max_in_flight = 0
        # held-bytes bookkeeping kept outside the scheduler: bytes started minus bytes the consumer released
        self.started_bytes = 0
        self.released_bytes = 0
        self.held_before_each_read: list[int] = []

    async def read_range(self, info: ObjectInfo, start: int, out: memoryview) -> None:
        assert info == INFO
        self.started.append(start)
        self.held_before_each_read.append(self.started_bytes - self.released_bytes)
        self.started_bytes += len(out)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self.entered[start].set()
        try:
            if self.gated:
                await self.gates[start].wait()
            if start in self.failures:
                raise self.failures[start]
            out[:] = OBJECT[start : start + len(out)]
        finally:
            self.in_flight -= 1

    def release(self, scheduler: RangeScheduler, request: RangeRequest) -> None:
        scheduler.release(request.key)
        self.released_bytes += request.size


def plan(sizes: Sequence[int], order: Sequence[int] | None = None) -> list[RangeRequest]:
    """Consecutive ranges of `sizes` bytes, keyed by their position in the object, requested in `order`."""
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    requests = [RangeRequest(key, INFO, starts[key], size) for key, size in enumerate(sizes)]
    return [requests[key] for key in (order if order is not None else range(len(sizes)))]


def run(test: Callable[[], Awaitable[T]]) -> T:
    """Run an async test body; a deadlock fails after 10 s instead of hanging the suite."""

    async def guarded() -> T:
        return await asyncio.wait_for(test(), timeout=10)

    return asyncio.run(guarded())


def expected_bytes(request: RangeRequest) -> bytes:
    return OBJECT[request.start : request.start + request.size]


def test_each_buffer_holds_the_bytes_of_its_keys_range() -> None:
    requests = plan([1000, 37, 2048, 1, 999, 5000, 300], order=[5, 0, 3, 6, 1, 4, 2])

    async def body() -> None:
        source = MemorySource()
        scheduler = RangeScheduler(source.read_range, requests, concurrency=3, budget_bytes=1 << 20)
        async with asyncio.TaskGroup() as group:
            group.create_task(scheduler.run())
            for request in requests:
                buffer = await scheduler.get(request.key)
                assert buffer.dtype.name == "uint8" and buffer.shape == (request.size,)
                assert buffer.tobytes() == expected_bytes(request), request
                source.release(scheduler, request)

    run(body)


def test_get_before_a_request_is_issued_waits_for_its_read() -> None:
    requests = plan([500] * 6)

    async def body() -> None:
        source = MemorySource()
        scheduler = RangeScheduler(source.read_range, requests, concurrency=2, budget_bytes=1000)
        last = asyncio.create_task(scheduler.get(5))  # asked for before the plan reaches it
        async with asyncio.TaskGroup() as group:
            group.create_task(scheduler.run())
            for request in requests[:5]:
                await scheduler.get(request.key)
                source.release(scheduler, request)
            assert (await last).tobytes() == expected_bytes(requests[5])
            assert (await scheduler.get(5)) is (await last)  # the same buffer each time it is asked for

    run(body)


def test_never_more_than_concurrency_reads_in_flight() -> None:
    requests = plan([100] * 10)

    async def body() -> None:
        source = MemorySource(gated=True)
        scheduler = RangeScheduler(source.read_range, requests, concurrency=3, budget_bytes=1 << 20)
        async with asyncio.TaskGroup() as group:
            group.create_task(scheduler.run())
            for request in requests[:3]:
                await source.entered[request.start].wait()
            stats = scheduler.statistics()
            assert (stats.issued, stats.in_flight, stats.completed) == (3, 3, 0)
            for i, request in enumerate(requests):
                source.gates[request.start].set()
                await scheduler.get(request.key)
                if i + 3 < len(requests):
                    await source.entered[requests[i + 3].start].wait()  # the freed connection goes to the next
                assert source.in_flight <= 3
                source.release(scheduler, request)
        assert source.max_in_flight == 3

    run(body)


def test_requests_are_issued_in_plan_order() -> None:
    order = [7, 2, 9, 0, 4, 1, 8, 3, 6, 5]
    requests = plan([200] * 10, order=order)

    async def body() -> None:
        source = MemorySource()
        scheduler = RangeScheduler(source.read_range, requests, concurrency=4, budget_bytes=700)
        async with asyncio.TaskGroup() as group:
            group.create_task(scheduler.run())
            for request in requests:
                await scheduler.get(request.key)
                source.release(scheduler, request)
        assert source.started == [request.start for request in requests]

    run(body)


@pytest.mark.parametrize(
    ("sizes", "budget"),
    [
        ([300] * 12, 1000),
        ([100, 900, 50, 50, 400, 600, 1000, 1, 999, 250, 250, 250, 250], 1000),
        ([700, 2500, 300, 300, 5000, 100], 1000),  # two requests larger than the budget
    ],
)
def test_held_bytes_never_exceed_the_budget(sizes: list[int], budget: int) -> None:
    requests = plan(sizes)

    async def body() -> None:
        source = MemorySource()
        scheduler = RangeScheduler(source.read_range, requests, concurrency=8, budget_bytes=budget)
        async with asyncio.TaskGroup() as group:
            group.create_task(scheduler.run())
            for request in requests:
                await scheduler.get(request.key)
                # the scheduler counts a range from when it is issued, a little before its read starts
                assert scheduler.statistics().held_bytes >= source.started_bytes - source.released_bytes
                source.release(scheduler, request)
        for request, held in zip(requests, source.held_before_each_read, strict=True):
            # a request starts only if it fits beside what is held, or alone when it is larger than the budget
            assert held + request.size <= budget or held == 0, (request, held)
        assert max(held + r.size for r, held in zip(requests, source.held_before_each_read, strict=True)) > budget // 2

    run(body)


def test_request_larger_than_the_budget_waits_until_nothing_is_held_then_proceeds_alone() -> None:
    requests = plan([400, 400, 2500, 400])

    async def body() -> None:
        source = MemorySource()
        scheduler = RangeScheduler(source.read_range, requests, concurrency=8, budget_bytes=1000)
        async with asyncio.TaskGroup() as group:
            group.create_task(scheduler.run())
            for request in requests:
                assert (await scheduler.get(request.key)).tobytes() == expected_bytes(request)
                source.release(scheduler, request)
        assert source.held_before_each_read == [0, 400, 0, 0]

    run(body)


def test_range_awaited_while_others_are_held_is_issued_past_the_budget_instead_of_deadlocking() -> None:
    requests = plan([600] * 5)

    async def body() -> None:
        source = MemorySource()
        scheduler = RangeScheduler(source.read_range, requests, concurrency=8, budget_bytes=1000)
        async with asyncio.TaskGroup() as group:
            group.create_task(scheduler.run())
            await scheduler.get(0)
            assert source.started == [0]  # range 1 does not fit beside range 0
            # a batch that needs ranges 0, 2 and 1: the consumer holds 0 and cannot release it before it has 2
            assert (await scheduler.get(2)).tobytes() == expected_bytes(requests[2])
            assert (await scheduler.get(1)).tobytes() == expected_bytes(requests[1])
            for request in requests[:3]:
                source.release(scheduler, request)
            for request in requests[3:]:
                await scheduler.get(request.key)
                source.release(scheduler, request)
        # ranges 1 and 2 went past the budget while the consumer waited for 2; then the budget held again
        assert source.held_before_each_read == [0, 600, 1200, 0, 0]

    run(body)


def test_release_frees_budget_so_later_requests_proceed() -> None:
    requests = plan([400, 400, 400])

    async def body() -> None:
        source = MemorySource()
        scheduler = RangeScheduler(source.read_range, requests, concurrency=8, budget_bytes=1000)
        async with asyncio.TaskGroup() as group:
            group.create_task(scheduler.run())
            await scheduler.get(0)
            await scheduler.get(1)
            assert source.started == [0, 400]  # the third would pass the budget: it waits
            assert scheduler.statistics().issued == 2
            assert scheduler.statistics().held_bytes == 800

            source.release(scheduler, requests[0])

            assert (await scheduler.get(2)).tobytes() == expected_bytes(requests[2])
            assert source.started == [0, 400, 800]
            source.release(scheduler, requests[1])
            source.release(scheduler, requests[2])

    run(body)


def test_read_error_is_raised_by_get_for_that_key_only() -> None:
    requests = plan([100, 200, 300, 400])
    error = ObjectChanged("s3://bucket-name/training-data/object changed", url=INFO.url)

    async def body() -> None:
        source = MemorySource(failures={100: error})
        scheduler = RangeScheduler(source.read_range, requests, concurrency=2, budget_bytes=1 << 20)
        async with asyncio.TaskGroup() as group:
            fetching = group.create_task(scheduler.run())
            for request in requests:
                if request.key == 1:
                    with pytest.raises(ObjectChanged) as caught:
                        await scheduler.get(1)
                    assert caught.value is error
                else:
                    assert (await scheduler.get(request.key)).tobytes() == expected_bytes(request)
            await fetching  # the failed read did not stop the run
            stats = scheduler.statistics()
            assert (stats.issued, stats.completed, stats.in_flight) == (4, 4, 0)
            assert stats.fetched_bytes == 100 + 300 + 400
            assert stats.held_bytes == 1000  # the failed range is held until released, like the others
            for request in requests:
                source.release(scheduler, request)
            assert scheduler.statistics().held_bytes == 0

    run(body)


def test_error_nobody_asked_for_is_dropped_quietly_on_release() -> None:
    requests = plan([100, 100])
    unhandled: list[dict[str, Any]] = []

    async def body() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: unhandled.append(context))
        source = MemorySource(failures={0: ObjectChanged("changed", url=INFO.url)})
        scheduler = RangeScheduler(source.read_range, requests, concurrency=2, budget_bytes=1 << 20)
        await scheduler.run()
        scheduler.release(0)  # the consumer skipped this range (a Seek) without awaiting its read
        scheduler.release(1)
        del scheduler, source  # the error's traceback holds the read's frame, and with it the future
        gc.collect()

    run(body)
    assert unhandled == []


def test_statistics_count_issued_in_flight_completed_and_held() -> None:
    requests = plan([100, 200, 300, 400, 500])

    async def body() -> None:
        source = MemorySource(gated=True)
        scheduler = RangeScheduler(source.read_range, requests, concurrency=3, budget_bytes=1 << 20)
        async with asyncio.TaskGroup() as group:
            group.create_task(scheduler.run())
            await source.entered[300].wait()
            stats = scheduler.statistics()
            assert (stats.issued, stats.in_flight, stats.completed) == (3, 3, 0)
            assert (stats.held_bytes, stats.fetched_bytes) == (600, 0)
            assert repr(scheduler) == "<RangeScheduler issued=3 in_flight=3 held=600B>"

            source.gates[0].set()
            await scheduler.get(0)
            await source.entered[600].wait()
            stats = scheduler.statistics()
            assert (stats.issued, stats.in_flight, stats.completed) == (4, 3, 1)
            assert (stats.held_bytes, stats.fetched_bytes) == (1000, 100)

            source.release(scheduler, requests[0])
            for request in requests[1:]:
                source.gates[request.start].set()
            for request in requests[1:]:
                await scheduler.get(request.key)
        stats = scheduler.statistics()
        assert (stats.issued, stats.in_flight, stats.completed) == (5, 0, 5)
        assert stats.issued == stats.completed + stats.in_flight
        assert (stats.held_bytes, stats.fetched_bytes) == (1400, 1500)
        assert stats.busy_s >= 0.0

    run(body)


def test_close_releases_every_buffer() -> None:
    requests = plan([300] * 5)

    async def body() -> None:
        source = MemorySource()
        scheduler = RangeScheduler(source.read_range, requests, concurrency=8, budget_bytes=1000)
        fetching = asyncio.create_task(scheduler.run())
        await scheduler.get(0)
        await scheduler.get(1)
        assert scheduler.statistics().held_bytes == 900  # the third range is fetched too, nobody got it yet

        scheduler.close()  # two fetched buffers and whatever else is held
        fetching.cancel()  # as the reader does: the run's task group cancels pending reads
        with pytest.raises(asyncio.CancelledError):
            await fetching

        assert scheduler.statistics().held_bytes == 0
        scheduler.release(0)  # releasing again after close is harmless
        assert scheduler.statistics().held_bytes == 0

    run(body)


def test_close_with_a_read_in_flight_releases_its_bytes_too() -> None:
    requests = plan([300, 300])

    async def body() -> None:
        source = MemorySource(gated=True)
        scheduler = RangeScheduler(source.read_range, requests, concurrency=1, budget_bytes=1000)
        fetching = asyncio.create_task(scheduler.run())
        await source.entered[0].wait()

        scheduler.close()
        fetching.cancel()
        with pytest.raises(asyncio.CancelledError):
            await fetching

        stats = scheduler.statistics()
        assert (stats.held_bytes, stats.in_flight) == (0, 0)
        assert source.started == [0]

    run(body)
