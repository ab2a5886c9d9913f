"""Whose request is this: the stream a ranged GET is fetched for, so the shared gates can take turns.

Every stream of a host-wide daemon reads through the same bucket gates and connection pools. The gates
admit waiting requests stream by stream (`admission.AdmissionGate`), and put a stream whose trainer has
batches queued behind those whose trainer may soon wait. A request's stream travels in a context variable:
the stream sets it once, and every task it starts (its fetch scheduler, the reads under the epoch cache,
the retries) inherits it, so no read signature has to carry it. A request with no flow (a stream's open,
`prefetchd inspect`) waits in a turn of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field


def _never() -> bool:
    return False


@dataclass(eq=False)
class Flow:
    """One stream's share of the daemon's fetching, counted across every bucket it reads."""

    name: str
    # True while the stream has nothing to fill (its ring holds only batches the trainer has not taken):
    # its reads are read-ahead, and wait behind the reads of streams whose trainer may be waiting
    ahead: Callable[[], bool] = field(default=_never)
    in_flight: int = 0  # requests admitted and not yet answered
    waiting: int = 0  # requests queued at a gate
    admitted: int = 0  # requests admitted so far
    # other streams waiting for one of its reads (the epoch cache shares a range being read): while any do,
    # its reads are not mere read-ahead, or a stream whose trainer waits would wait behind everyone
    borrowers: int = 0

    def can_wait(self) -> bool:
        """Whether its requests may go behind every other stream's: only read-ahead nobody else waits for."""
        return self.borrowers == 0 and self.ahead()

    def __repr__(self) -> str:
        return f"<Flow {self.name} in_flight={self.in_flight} waiting={self.waiting} admitted={self.admitted}>"


current_flow: ContextVar[Flow | None] = ContextVar("prefetchd_flow", default=None)
