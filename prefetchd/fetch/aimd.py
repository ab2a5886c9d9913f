"""How many requests one bucket may have in flight: AIMD, as TCP finds a path's capacity.

S3 answers `503 SlowDown` when a prefix gets more requests than it can serve at the moment. Retrying with
backoff alone keeps the same number in flight, so the next round is throttled too; halving the requests in
flight and adding them back one per round of successes finds the rate S3 will take, and returns to the full
figure once it takes it. Pure: no clock and no I/O; `admission.AdmissionGate` applies the limit to requests.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class AimdStatistics:
    limit: int  # requests that may be in flight now
    ceiling: int  # the configured most, where successes bring it back
    lowest: int  # the lowest it has been
    throttles: int  # throttling answers reported
    decreases: int  # times the limit was cut (one per congestion event, however many answers it brought)


class AimdLimit:
    """Additive increase, multiplicative decrease of a concurrency limit between `floor` and `ceiling`.

    A throttle cuts the limit to `decrease` × what was in flight (RFC 5681's FlightSize / 2: a limit far above
    what is used would take many cuts to bite). Only requests sent since the last cut can cut it again: the
    answers to a burst sent before the cut report one congestion event, not one each. A limit's worth of
    successes (a round trip of them, when the limit binds) adds one request.
    """

    def __init__(self, ceiling: int, *, floor: int = 1, decrease: float = 0.5) -> None:
        if not 1 <= floor <= ceiling:
            raise ValueError(f"the limit needs 1 <= floor <= ceiling, not floor {floor} and ceiling {ceiling}")
        if not 0.0 < decrease < 1.0:
            raise ValueError(f"a decrease multiplies the limit by a factor within (0, 1), not {decrease}")
        self.ceiling = ceiling
        self.floor = floor
        self.decrease = decrease
        self._limit = ceiling
        self._credit = 0  # successes since the limit last grew
        self._lowest = ceiling
        self._throttles = self._decreases = 0
        self.generation = 0  # how many cuts so far: requests carry the generation they were sent in

    @property
    def limit(self) -> int:
        return self._limit

    def on_throttle(self, sent_in_generation: int, in_flight: int) -> bool:
        """A request sent in `sent_in_generation` was throttled while `in_flight` requests (itself included)
        were out. Returns whether the limit was cut."""
        self._throttles += 1
        if sent_in_generation != self.generation:
            return False  # sent before the last cut, which already answered this congestion
        flight = max(1, min(self._limit, in_flight))
        self._limit = max(self.floor, int(flight * self.decrease))
        self._credit = 0
        self._lowest = min(self._lowest, self.limit)
        self._decreases += 1
        self.generation += 1
        return True

    def on_success(self) -> None:
        """A request succeeded: one more in flight for each `limit` successes, up to the ceiling."""
        if self._limit >= self.ceiling:
            return
        self._credit += 1
        if self._credit >= self._limit:
            self._limit += 1
            self._credit = 0

    def statistics(self) -> AimdStatistics:
        return AimdStatistics(self.limit, self.ceiling, self._lowest, self._throttles, self._decreases)

    def __repr__(self) -> str:
        s = self.statistics()
        return f"<AimdLimit {s.limit}/{s.ceiling} lowest={s.lowest} throttles={s.throttles} cuts={s.decreases}>"
