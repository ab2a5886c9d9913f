"""When a ranged GET has fallen so far behind its peers that a second request should race it: tail hedging.

Most GETs to a bucket take about as long as the others of their size; a few (a slow disk behind S3, a lost
packet, a busy front end) take many times longer, and a stream waits on its slowest range. A GET is late
- when its first byte has not come after `multiplier` × the p95 of its peers' first-byte times, or
- when it has not ended after `multiplier` × the p95 of its peers' whole times,
never sooner than `min_delay_s`; and a first byte is late only once a GET sent after it has had its own
(`overtaken`): when every GET waits (a stream's first burst of GETs, the daemon's own CPU short), none is
behind its peers. A late GET is raced by a second request for the bytes it has not received;
the first to bring them wins (`race.py` runs the race).

Two deadlines, because a GET's time is its first byte plus its body, and the body's share grows with its
size and with how many GETs share the link: with 32 GETs of 3 MB sharing 300 MB/s, a whole GET takes
~0.3 s, and a first byte that has not come after 0.6 s is long overdue while the whole GET is not. Every GET
of the bucket is a peer for the first byte; for the whole time, peers are the GETs of the same size class
(sizes within a factor of two). Each deadline applies once its peers number `min_samples`.

A budget bounds the extra load: each completed GET earns `budget` of a hedge, up to `burst`, so an endpoint
that is uniformly slow (every GET late, the quantiles not caught up yet) gets at most `budget` more
requests, not twice as many.

Pure: no clock and no I/O. The caller measures each GET's seconds; this decides.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class HedgePolicy:
    """The figures of hedging. Defaults: hedge past 1.5 × p95 (at least 0.05 s), at most 5% more requests."""

    multiplier: float = 1.5  # hedge a GET once it has taken this many times its peers' quantile
    min_delay_s: float = 0.05  # ...and never sooner: S3's first bytes vary by tens of ms, a hedge costs a request
    budget: float = 0.05  # hedges earned per completed GET: at most 5% more requests, over time
    burst: float = 10.0  # hedges that may go at once when the budget is full (a few slow GETs together)
    quantile: float = 0.95
    min_samples: int = 20  # a size class's times before it hedges: fewer say little about its tail
    window: int = 200  # the latest times of each class that the quantile is taken over

    def __post_init__(self) -> None:
        if self.multiplier < 1.0:
            raise ValueError(f"a hedge goes after the peers' quantile, not before: multiplier {self.multiplier} < 1")
        if self.min_delay_s < 0 or not 0.0 <= self.budget <= 1.0 or self.burst < 1.0:
            raise ValueError("hedging needs min_delay_s >= 0, a budget within [0, 1] and a burst of at least 1")
        if not 0.5 <= self.quantile < 1.0 or self.min_samples < 1 or self.window < self.min_samples:
            raise ValueError("hedging needs a quantile within [0.5, 1) and min_samples <= window")


def size_class(size_bytes: int) -> int:
    """GETs whose sizes are within a factor of two of each other are peers: [2ⁿ, 2ⁿ⁺¹) is class n + 1."""
    return max(0, size_bytes).bit_length()


class LatencyWindow:
    """The latest `window` times of one size class, and their quantile (recomputed every few samples)."""

    RECOMPUTE_EVERY = 8  # sorting 200 floats per GET is waste; the tail moves slowly

    def __init__(self, window: int, quantile: float) -> None:
        self._times: deque[float] = deque(maxlen=window)
        self._quantile = quantile
        self._cached: float | None = None
        self._since = 0

    def __len__(self) -> int:
        return len(self._times)

    def add(self, seconds: float) -> None:
        self._times.append(seconds)
        self._since += 1

    def quantile_s(self) -> float:
        """The nearest-rank quantile of the times in the window (needs at least one)."""
        if self._cached is None or self._since >= self.RECOMPUTE_EVERY:
            ordered = sorted(self._times)
            rank = max(1, math.ceil(self._quantile * len(ordered)))
            self._cached = ordered[rank - 1]
            self._since = 0
        return self._cached


class HedgeBudget:
    """Hedges that may go: earned `per_success` per completed GET, spent one per hedge, at most `burst`."""

    def __init__(self, per_success: float, burst: float) -> None:
        self._per_success = per_success
        self._burst = burst
        self._left = burst

    @property
    def left(self) -> float:
        return self._left

    def earn(self) -> None:
        self._left = min(self._burst, self._left + self._per_success)

    def spend(self) -> bool:
        """Take one hedge; False (and nothing taken) when less than one is left."""
        if self._left < 1.0:
            return False
        self._left -= 1.0
        return True

    def refund(self) -> None:
        """Give back a hedge taken but not sent."""
        self._left = min(self._burst, self._left + 1.0)


class Outcome(enum.Enum):
    """How a hedge ended."""

    WON = "won"  # it finished first: the first request was cancelled
    LOST = "lost"  # the first request finished first: the hedge was cancelled
    FAILED = "failed"  # it failed (an error, a broken body); the first request went on alone


@dataclass(frozen=True, slots=True)
class HedgeStatistics:
    started: int
    won: int
    lost: int
    failed: int
    skipped: int  # GETs past their hedge delay that got no hedge: the budget was spent or the bucket full
    budget_left: float

    def __add__(self, other: HedgeStatistics) -> HedgeStatistics:
        return HedgeStatistics(
            self.started + other.started,
            self.won + other.won,
            self.lost + other.lost,
            self.failed + other.failed,
            self.skipped + other.skipped,
            self.budget_left + other.budget_left,
        )


NO_HEDGES = HedgeStatistics(0, 0, 0, 0, 0, 0.0)


@dataclass(frozen=True, slots=True)
class Deadlines:
    """When a GET, counted from its start, is late: its first byte (None: no deadline), its end (None: none)."""

    first_byte_s: float | None
    whole_s: float | None


class Hedger:
    """One bucket's GET times and its hedge budget: when a GET is late, and whether a hedge may go."""

    def __init__(self, policy: HedgePolicy) -> None:
        self.policy = policy
        self._first_bytes = LatencyWindow(policy.window, policy.quantile)
        self._wholes: dict[int, LatencyWindow] = {}
        self._budget = HedgeBudget(policy.budget, policy.burst)
        self._started = self._skipped = 0
        self._outcomes = dict.fromkeys(Outcome, 0)
        self._newest_answered = -math.inf  # the latest start (the caller's clock) of a GET whose first byte came

    def answered(self, started_at: float) -> None:
        """A GET sent at `started_at` has had its first byte."""
        self._newest_answered = max(self._newest_answered, started_at)

    def overtaken(self, started_at: float) -> bool:
        """Whether a GET sent after `started_at` has had its first byte already."""
        return self._newest_answered > started_at

    def deadlines(self, size_bytes: int) -> Deadlines | None:
        """When a GET of `size_bytes` is late; None when it will not be hedged whatever happens (too few
        peers yet, or no hedge left in the budget)."""
        if self._budget.left < 1.0:
            return None
        first_byte = self._deadline(self._first_bytes)
        whole = self._deadline(self._wholes.get(size_class(size_bytes)))
        if first_byte is None and whole is None:
            return None
        return Deadlines(first_byte, whole)

    def _deadline(self, window: LatencyWindow | None) -> float | None:
        if window is None or len(window) < self.policy.min_samples:
            return None
        return max(self.policy.min_delay_s, self.policy.multiplier * window.quantile_s())

    def completed(self, size_bytes: int, seconds: float, first_byte_s: float | None = None) -> None:
        """A GET (a first request, or a hedge) brought all its `size_bytes` in `seconds`, its first byte
        after `first_byte_s` (None: not measured)."""
        whole = self._wholes.get(size_class(size_bytes))
        if whole is None:
            whole = self._wholes[size_class(size_bytes)] = LatencyWindow(self.policy.window, self.policy.quantile)
        whole.add(seconds)
        if first_byte_s is not None:
            self._first_bytes.add(first_byte_s)
        self._budget.earn()

    def start(self) -> bool:
        """A GET is late: whether its hedge may go (and, if so, it is counted and paid for)."""
        if not self._budget.spend():
            self._skipped += 1
            return False
        self._started += 1
        return True

    def refund(self) -> None:
        """The hedge `start` allowed could not be sent after all (the bucket was at its limit)."""
        self._budget.refund()
        self._started -= 1
        self._skipped += 1

    def ended(self, outcome: Outcome) -> None:
        self._outcomes[outcome] += 1

    def statistics(self) -> HedgeStatistics:
        o = self._outcomes
        return HedgeStatistics(
            self._started, o[Outcome.WON], o[Outcome.LOST], o[Outcome.FAILED], self._skipped, self._budget.left
        )

    def __repr__(self) -> str:
        s = self.statistics()
        return f"<Hedger {s.started} hedges ({s.won} won, {s.lost} lost, {s.failed} failed), {s.skipped} skipped>"
