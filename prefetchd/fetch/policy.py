"""Pure fetch decisions: how to cut an object into ranges, and how long to wait before a retry.

No clock and no global RNG: callers pass the random source, so every figure here is tested exactly.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass


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
    """

    max_attempts: int = 5
    base_s: float = 0.5
    cap_s: float = 20.0
    max_tries: int = 20

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
