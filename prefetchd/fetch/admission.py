"""Where requests to one bucket are admitted: at most the AIMD limit in flight, the rest wait in order.

The streams reading a bucket share its gate, so a 503 one of them meets slows all of them: S3 throttles a
prefix, not a connection. Each request holds a `Ticket` while it is out and says how it ended; the gate
reports that to its `AimdLimit` and lets the next waiter in.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from .aimd import AimdLimit, AimdStatistics

log = logging.getLogger("prefetchd.fetch.admission")


class Ending(enum.Enum):
    """How a request ended, as the limit sees it."""

    OTHER = "other"  # broke, or failed in a way that says nothing about the store's load
    SUCCEEDED = "succeeded"
    THROTTLED = "throttled"


@dataclass(slots=True)
class Ticket:
    """One admitted request: the limit's generation when it was sent, and how it ended."""

    generation: int
    ending: Ending = Ending.OTHER


@dataclass(frozen=True, slots=True)
class AdmissionStatistics:
    name: str  # the bucket
    in_flight: int
    waiting: int
    admitted: int
    limit: AimdStatistics


class AdmissionGate:
    """Admits requests while fewer than `limit.limit` are in flight, first come first served."""

    def __init__(self, name: str, limit: AimdLimit) -> None:
        self.name = name
        self.limit = limit
        self._in_flight = 0
        self._admitted = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @asynccontextmanager
    async def admitted(self) -> AsyncIterator[Ticket]:
        """Hold a place among the requests in flight for the block; set the ticket's `ending` inside it."""
        await self._enter()
        ticket = Ticket(self.limit.generation)
        try:
            yield ticket
        finally:
            self.end(ticket)

    def admit_now(self) -> Ticket | None:
        """A place among the requests in flight if one is free now, else None: for a request that is worth
        sending only at once (a hedge), never ahead of those waiting. Give it back with `end`."""
        if self._waiters or self._in_flight >= self.limit.limit:
            return None
        self._in_flight += 1
        self._admitted += 1
        return Ticket(self.limit.generation)

    def end(self, ticket: Ticket) -> None:
        """The request holding `ticket` is over: report how it ended, and let the next waiter in."""
        if ticket.ending is Ending.SUCCEEDED:
            self._succeeded()
        elif ticket.ending is Ending.THROTTLED and self.limit.on_throttle(ticket.generation, self._in_flight):
            log.info("%s: S3 asks to slow down; requests in flight now at most %d", self.name, self.limit.limit)
        self._leave()

    def _succeeded(self) -> None:
        before = self.limit.limit
        self.limit.on_success()
        if before < self.limit.ceiling == self.limit.limit:
            log.info("%s: requests in flight back to at most %d", self.name, self.limit.limit)

    async def _enter(self) -> None:
        if not self._waiters and self._in_flight < self.limit.limit:
            self._in_flight += 1
            self._admitted += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter  # `_admit_waiters` counts us in before it wakes us
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._leave()  # let in, then cancelled before it could run: give the place back
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
            raise

    def _leave(self) -> None:
        self._in_flight -= 1
        self._admit_waiters()

    def _admit_waiters(self) -> None:
        while self._waiters and self._in_flight < self.limit.limit:
            waiter = self._waiters.popleft()
            if waiter.done():
                continue  # cancelled while it waited
            self._in_flight += 1
            self._admitted += 1
            waiter.set_result(None)

    def statistics(self) -> AdmissionStatistics:
        return AdmissionStatistics(
            self.name, self._in_flight, len(self._waiters), self._admitted, self.limit.statistics()
        )

    def __repr__(self) -> str:
        s = self.statistics()
        return f"<AdmissionGate {s.name} {s.in_flight}/{s.limit.limit} in flight, {s.waiting} waiting>"
