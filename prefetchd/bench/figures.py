"""The figures every benchmark reports, computed one way."""

from __future__ import annotations

import statistics


def median_mb_per_s(size_bytes: int, seconds: list[float]) -> float:
    """Throughput of the median round, in MB/s (10⁶ bytes, as the network's pace is given)."""
    return size_bytes / statistics.median(seconds) / 1e6
