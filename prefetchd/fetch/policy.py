"""Pure fetch decisions: how to cut an object into ranges, whether to retry a request and how long to wait.

No clock and no global RNG: callers pass the random source, so every figure here is tested exactly.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

# No byte for this long, and a try has stalled: it is dropped and made again on a new connection. S3's
# first bytes come within a few hundred ms even at its p99.9; 10 s is far past that, yet five tries fit well
# within the 120 s a trainer waits for a batch.
DEFAULT_STALL_TIMEOUT_S = 10.0


def choose_chunk_bytes(
    object_bytes: int, *, concurrency: int, max_chunk_bytes: int, min_chunk_bytes: int, granule: int = 1
) -> int:
    """The range size for an object: small enough that `concurrency` GETs share it, within [min, max].

    A 55 MB object cut into 8 MiB ranges is only 7 requests, too few to hide S3's first-byte latency;
    cut into `concurrency` pieces it keeps every connection busy. `granule` (a record size) keeps
    ranges on record boundaries.
    """
    even_share = -(-object_bytes // max(1, concurrency))
    size = min(max_chunk_bytes, max(min_chunk_bytes, even_share))
    # round up, so that `concurrency` ranges still cover the object; down only where up would pass the max
    rounded_up = -(-size // granule) * granule
    if rounded_up <= max_chunk_bytes:
        return rounded_up
    return max(granule, size - size % granule)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with full jitter, as the AWS CRT does: sleep U(0, min(cap, base × 2ⁿ)).

    `max_attempts` counts the first try; a read that resumes mid-body after a broken connection counts
    as one attempt, but only while no new byte arrives: a try that brings bytes starts the count afresh
    (a flaky link that keeps making progress is not a dead one), within `max_tries` tries in all.

    The budget is shared by every request of a source, as botocore's retry quota is: `budget_retries`
    retries at most in a burst, and each success earns back `retries_per_success` of one. When S3 fails
    most requests for a while, reads then fail at once instead of multiplying the load on it.
    """

    max_attempts: int = 5
    base_s: float = 0.5
    cap_s: float = 20.0
    max_tries: int = 20
    budget_retries: float = 100.0
    retries_per_success: float = 0.2

    def backoff_s(self, attempt: int, rng: random.Random) -> float:
        """Delay before retry number `attempt` (1 = the first retry)."""
        if attempt < 1:
            raise ValueError("attempt numbers start at 1")
        try:
            ceiling = min(self.cap_s, math.ldexp(self.base_s, attempt - 1))
        except OverflowError:  # base × 2ⁿ is past any float, so past the cap
            ceiling = self.cap_s
        return rng.uniform(0.0, ceiling)

    def should_retry(self, attempt: int) -> bool:
        """Whether a failure on try number `attempt` (1-based) may be retried."""
        return attempt < self.max_attempts


class RetryBudget:
    """The retries left to a whole source: spent one per retry, earned back a little per success."""

    def __init__(self, policy: RetryPolicy) -> None:
        self._capacity = policy.budget_retries
        self._per_success = policy.retries_per_success
        self._left = policy.budget_retries

    @property
    def left(self) -> float:
        return self._left

    def spend(self) -> bool:
        """Take one retry from the budget; False (and nothing taken) when less than one is left."""
        if self._left < 1.0:
            return False
        self._left -= 1.0
        return True

    def earn(self) -> None:
        self._left = min(self._capacity, self._left + self._per_success)


class Retries:
    """One request's (or one read's) tries under a policy: whether another may go, and after what delay."""

    def __init__(self, policy: RetryPolicy, budget: RetryBudget, rng: random.Random) -> None:
        self._policy = policy
        self._budget = budget
        self._rng = rng
        self.attempt = 1  # tries in a row that brought no new byte, this one included
        self.tries = 1
        self.stop_reason = ""

    def next_delay(self, *, progressed: bool) -> float | None:
        """The try that just failed (`progressed`: it brought new bytes first): the delay before the next,
        or None when there is to be no next; `stop_reason` then says which limit ended it."""
        if progressed:
            self.attempt = 1
        policy = self._policy
        if not policy.should_retry(self.attempt):
            self.stop_reason = f"{self.attempt} tries in a row brought no new byte (max_attempts {policy.max_attempts})"
            return None
        if self.tries >= policy.max_tries:
            self.stop_reason = f"{self.tries} tries in all (max_tries {policy.max_tries})"
            return None
        if not self._budget.spend():
            self.stop_reason = (
                "the retry budget is spent: reads have been failing far more often than succeeding "
                f"(budget_retries {policy.budget_retries:g})"
            )
            return None
        delay = policy.backoff_s(self.attempt, self._rng)
        self.attempt += 1
        self.tries += 1
        return delay
