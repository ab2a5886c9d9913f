"""How many bytes a stream keeps in flight, from the first-byte latency it measured at open.

Little's law: a stream that moves `target` bytes per second with GETs that each take `ttfb + piece / pace`
(first byte, then the body at one connection's pace) has `target × (ttfb + piece / pace)` bytes in flight.
Those bytes are ring slots being filled, so the window sizes the ring. A fixed ring is either too small for
a far endpoint (100 ms first byte: a 64 MiB ring caps a stream near 500 MB/s) or too big for a near one
(fresh shared memory costs page faults for nothing). With the piece cut so that `connections` GETs cover the
window, the window solves

    W = target × (ttfb + W / (connections × pace))   →   W = target × ttfb / (1 - target / (connections × pace))

Pure: no clock and no I/O; the reader measures, this decides.
"""

from __future__ import annotations

from dataclasses import dataclass

# One S3 connection's pace, about 90 MB/s (AWS's performance guidance puts one GET at 85-90 MB/s); the
# open's single GET measures the first-byte latency well but cannot tell the pace from it.
CONNECTION_BYTES_PER_S = 90e6


@dataclass(frozen=True, slots=True)
class Window:
    """Bytes to keep in flight, and the range size that spreads them over the connections."""

    window_bytes: int
    piece_bytes: int


def first_byte_seconds(get_seconds: float, get_bytes: int, connection_bytes_per_s: float) -> float:
    """The first-byte latency of a GET that took `get_seconds` for `get_bytes`: its time less the body's."""
    return max(0.0, get_seconds - get_bytes / connection_bytes_per_s)


def plan_window(
    ttfb_s: float,
    *,
    target_bytes_per_s: float,
    connections: int,
    connection_bytes_per_s: float,
    min_window_bytes: int,
    max_window_bytes: int,
) -> Window:
    """The window that moves `target_bytes_per_s` at `ttfb_s`, within [min, max] bytes.

    When `connections` at their pace cannot reach the target, no window can: the most bytes allowed
    are kept in flight.
    """
    if connections < 1 or connection_bytes_per_s <= 0 or min_window_bytes > max_window_bytes:
        raise ValueError("plan_window needs a connection, a pace, and min_window_bytes <= max_window_bytes")
    reach = connections * connection_bytes_per_s
    if target_bytes_per_s >= reach:
        wanted = float(max_window_bytes)
    else:
        wanted = target_bytes_per_s * max(0.0, ttfb_s) / (1.0 - target_bytes_per_s / reach)
    window = int(min(max_window_bytes, max(min_window_bytes, wanted)))
    return Window(window, max(1, -(-window // connections)))
