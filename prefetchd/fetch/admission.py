"""Where requests to one bucket are admitted: at most the AIMD limit in flight, the rest wait their turn.

The streams reading a bucket share its gate, so a 503 one of them meets slows all of them: S3 throttles a
prefix, not a connection. Each request holds a `Ticket` while it is out and says how it ended; the gate
reports that to its `AimdLimit` and lets the next waiter in.

Waiters queue per stream (`flow.Flow`) and are let in one stream at a time, round robin, so a stream that
queued its whole read-ahead first does not hold back another's next range. A stream whose trainer has
batches queued and nothing left to fill (`Flow.ahead`) waits behind the others, unless another stream waits
for one of its reads (`Flow.borrowers`): a trainer that stopped reading keeps no slot from one that is
waiting. In arrival order within a stream.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from .aimd import AimdLimit, AimdStatistics
from .flow import Flow, current_flow

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
    flow: Flow | None = None  # the stream it was admitted for (None: no stream's)


@dataclass(frozen=True, slots=True)
class AdmissionStatistics:
    name: str  # the bucket
    in_flight: int
    waiting: int
    admitted: int
    limit: AimdStatistics
    flows_waiting: int = 0  # streams with a request queued (requests of no stream count as one)


class AdmissionGate:
    """Admits requests while fewer than `limit.limit` are in flight, taking turns between streams."""

    def __init__(self, name: str, limit: AimdLimit) -> None:
        self.name = name
        self.limit = limit
        self._in_flight = 0
        self._admitted = 0
        self._waiting = 0
        # each flow's waiters, in turn order: a flow served goes to the back (None: requests of no stream)
        self._queues: OrderedDict[Flow | None, deque[asyncio.Future[None]]] = OrderedDict()

    @asynccontextmanager
    async def admitted(self) -> AsyncIterator[Ticket]:
        """Hold a place among the requests in flight for the block; set the ticket's `ending` inside it."""
        flow = current_flow.get()
        await self._enter(flow)
        ticket = Ticket(self.limit.generation, flow=flow)
        try:
            yield ticket
        finally:
            self.end(ticket)

    def admit_now(self) -> Ticket | None:
        """A place among the requests in flight if one is free now, else None: for a request that is worth
        sending only at once (a hedge), never ahead of those waiting. Give it back with `end`."""
        if self._waiting or self._in_flight >= self.limit.limit:
            return None
        flow = current_flow.get()
        self._count_in(flow)
        return Ticket(self.limit.generation, flow=flow)

    def end(self, ticket: Ticket) -> None:
        """The request holding `ticket` is over: report how it ended, and let the next waiter in."""
        if ticket.ending is Ending.SUCCEEDED:
            self._succeeded()
        elif ticket.ending is Ending.THROTTLED and self.limit.on_throttle(ticket.generation, self._in_flight):
            log.info("%s: S3 asks to slow down; requests in flight now at most %d", self.name, self.limit.limit)
        self._leave(ticket.flow)

    def _succeeded(self) -> None:
        before = self.limit.limit
        self.limit.on_success()
        if before < self.limit.ceiling == self.limit.limit:
            log.info("%s: requests in flight back to at most %d", self.name, self.limit.limit)

    async def _enter(self, flow: Flow | None) -> None:
        if not self._waiting and self._in_flight < self.limit.limit:
            self._count_in(flow)
            return
        waiter = asyncio.get_running_loop().create_future()
        queue = self._queues.get(flow)
        if queue is None:
            queue = self._queues[flow] = deque()
        queue.append(waiter)
        self._count_waiting(flow, +1)
        try:
            await waiter  # `_admit_waiters` counts us in before it wakes us
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._leave(flow)  # let in, then cancelled before it could run: give the place back
            elif waiter in queue:
                queue.remove(waiter)
                self._count_waiting(flow, -1)
                if not queue and self._queues.get(flow) is queue:
                    del self._queues[flow]
            raise

    def _leave(self, flow: Flow | None) -> None:
        self._in_flight -= 1
        if flow is not None:
            flow.in_flight -= 1
        self._admit_waiters()

    def _count_in(self, flow: Flow | None) -> None:
        self._in_flight += 1
        self._admitted += 1
        if flow is not None:
            flow.in_flight += 1
            flow.admitted += 1

    def _count_waiting(self, flow: Flow | None, change: int) -> None:
        self._waiting += change
        if flow is not None:
            flow.waiting += change

    def _admit_waiters(self) -> None:
        while self._waiting and self._in_flight < self.limit.limit:
            flow = self._next_turn()
            queue = self._queues[flow]
            waiter = queue.popleft()
            self._count_waiting(flow, -1)
            if queue:
                self._queues.move_to_end(flow)
            else:
                del self._queues[flow]
            if waiter.done():
                continue  # cancelled while it waited
            self._count_in(flow)
            waiter.set_result(None)

    def _next_turn(self) -> Flow | None:
        """The first flow in turn order whose trainer may be waiting; if every one is ahead, the first."""
        for flow in self._queues:
            if flow is None or not flow.can_wait():
                return flow
        return next(iter(self._queues))

    def statistics(self) -> AdmissionStatistics:
        return AdmissionStatistics(
            self.name, self._in_flight, self._waiting, self._admitted, self.limit.statistics(), len(self._queues)
        )

    def __repr__(self) -> str:
        s = self.statistics()
        return (
            f"<AdmissionGate {s.name} {s.in_flight}/{s.limit.limit} in flight, {s.waiting} waiting "
            f"from {s.flows_waiting} stream(s)>"
        )
