"""A late GET raced by a hedge for the bytes it lacks: the first to bring them wins, the other is cancelled.

A GET is late when its first byte or its end has not come by the deadlines `hedge.Hedger` sets.

Both write into the same buffer: the first request from the range's start, the hedge from wherever the
first had got when the hedge went (`Progress.received`), on a fresh connection. The bytes are the same
either way (both carry `If-Match` with the pinned ETag and have their Content-Range checked), so where the
two overlap either's bytes will do. The loser is cancelled and awaited before the race returns: a cancelled
GET stops writing into its buffer (`range_get` drops the connection; aiobotocore's body is closed), so
nothing writes into the buffer once it is handed on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from .hedge import Deadlines, Hedger, Outcome
from .range_get import Progress

log = logging.getLogger("prefetchd.fetch.race")

FirstTry = Callable[[Progress], Coroutine[Any, Any, Any]]
# a hedge from `offset` bytes into the range to its end; None when it cannot go now (the bucket is full)
Hedge = Callable[[int, Progress], Coroutine[Any, Any, Any] | None]


@dataclass(frozen=True, slots=True)
class RaceResult:
    """`error` is None when the range is whole; else the first request's error, and `covered`: how many
    bytes from the range's start are in the buffer (the first request's and, past them, the hedge's)."""

    error: Exception | None
    covered: int


async def _settled(coroutine: Coroutine[Any, Any, Any]) -> Exception | None:
    """A GET's error, or None when it brought its bytes (so the task group never cancels the other for it)."""
    try:
        await coroutine
    except Exception as exc:
        return exc
    return None


async def race(
    size_bytes: int,
    first_try: FirstTry,
    hedge: Hedge,
    *,
    deadlines: Deadlines,
    hedger: Hedger,
    clock: Callable[[], float],
) -> RaceResult:
    """Run `first_try`; if it is late (`deadlines`), and the hedger's budget allows, race a hedge against it.

    The times of whichever brought its bytes join the hedger's samples (a hedge's under its own size).
    """
    first_progress = Progress(clock, hedger.answered)
    hedge_progress = Progress(clock, hedger.answered)
    started = hedge_started = first_progress.started_at
    outcome: Outcome | None = None
    second: asyncio.Task[Exception | None] | None = None
    offset = 0
    try:
        async with asyncio.TaskGroup() as group:
            first = group.create_task(_settled(first_try(first_progress)))
            if await _late(first, first_progress, deadlines, hedger, clock) and hedger.start():
                offset = first_progress.received
                log.debug(
                    "a GET of %d bytes is late after %.3f s (%s, first byte %s): hedged from byte %d",
                    size_bytes,
                    clock() - started,
                    deadlines,
                    "not yet"
                    if first_progress.first_byte_at is None
                    else f"after {first_progress.first_byte_at - started:.3f} s",
                    offset,
                )
                coroutine = hedge(offset, hedge_progress)
                if coroutine is None:
                    hedger.refund()
                else:
                    second = group.create_task(_settled(coroutine))
                    hedge_started = hedge_progress.started_at = clock()
            if second is None:
                error = await first
                if error is None:
                    _completed(hedger, size_bytes, first_progress, started, clock)
                return RaceResult(error, first_progress.received)
            winner = await _first_whole(first, second)
            for task in (first, second):
                task.cancel()  # the loser, if it still runs; awaited as the task group ends
        if winner is second:
            outcome = Outcome.WON
            _completed(hedger, size_bytes - offset, hedge_progress, hedge_started, clock)
        elif second.done() and not second.cancelled() and second.result() is not None:
            outcome = Outcome.FAILED
        else:
            outcome = Outcome.LOST
        if winner is first:
            _completed(hedger, size_bytes, first_progress, started, clock)
        if winner is None:
            error = first.result()
            assert error is not None
            return RaceResult(error, max(first_progress.received, offset + hedge_progress.received))
        return RaceResult(None, size_bytes)
    finally:
        if second is not None:
            hedger.ended(outcome or Outcome.LOST)  # cancelled from outside: it won nothing


async def _late(
    first: asyncio.Task[Exception | None],
    progress: Progress,
    deadlines: Deadlines,
    hedger: Hedger,
    clock: Callable[[], float],
) -> bool:
    """Wait until `first` ends (False) or is late (True): not whole by its deadline, or no first byte by its
    deadline once a GET sent after it has had one (until then, looked at again every quarter deadline)."""
    started = progress.started_at
    first_byte_due = deadlines.first_byte_s
    recheck_s = max(0.01, (first_byte_due or 0.0) / 4)
    while True:
        waits = [deadlines.whole_s] if deadlines.whole_s is not None else []
        if first_byte_due is not None and progress.first_byte_at is None:
            waits.append(first_byte_due)
        if not waits:
            await asyncio.wait([first])
            return False
        await asyncio.wait([first], timeout=max(0.0, started + min(waits) - clock()))
        if first.done():
            return False
        elapsed = clock() - started
        if deadlines.whole_s is not None and elapsed >= deadlines.whole_s:
            return True
        if first_byte_due is not None and progress.first_byte_at is None and elapsed >= first_byte_due:
            if hedger.overtaken(started):
                return True
            first_byte_due = elapsed + recheck_s  # every GET is waiting: none is behind the others yet


def _completed(hedger: Hedger, size_bytes: int, progress: Progress, started: float, clock: Callable[[], float]) -> None:
    first_byte_s = None if progress.first_byte_at is None else progress.first_byte_at - started
    hedger.completed(size_bytes, clock() - started, first_byte_s)


async def _first_whole(
    first: asyncio.Task[Exception | None], second: asyncio.Task[Exception | None]
) -> asyncio.Task[Exception | None] | None:
    """The first of the two to bring its bytes (the first request on a tie), or None when both failed."""
    pending: set[asyncio.Task[Exception | None]] = {first, second}
    while pending:
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        for task in (first, second):
            if task in done and task.result() is None:
                return task
    return None
