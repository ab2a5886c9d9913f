"""How many bytes a stream keeps in flight, from the first-byte latency it measured at open.

Little's law: a stream that moves `target` bytes per second with GETs that each take `ttfb + piece / pace`
(first byte, then the body at one connection's pace) has `target × (ttfb + piece / pace)` bytes in flight.
Those bytes are ring slots being filled, so the window sizes the ring. A fixed ring is either too small for
a far endpoint (100 ms first byte: a 64 MiB ring caps a stream near 500 MB/s) or too big for a near one
(fresh shared memory costs page faults for nothing). With the piece cut so that `connections` GETs cover the
window, the window solves

    W = target × (ttfb + W / (connections × pace))   →   W = target × ttfb / (1 - target / (connections × pace))

A range can also be late: S3's slow tail, a lost packet. The stream delivers in order, so while its oldest
range is late the other connections go on only as far as the window lets them; hedging (`hedge.py`) races a
late range after `late_s`, and the window covers those seconds too (W grows by target × late_s, and the
pieces with it), so that one late range costs the stream a pause in arrivals, not in throughput. Pieces are
at most `max_piece_bytes` (a batch): past that the window holds more pieces than there are connections,
and the extra are the buffer that the late range's wait drains.

Pure: no clock and no I/O; the reader measures, this decides.
"""

from __future__ import annotations

import math
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
    late_s: float = 0.0,
    max_piece_bytes: int | None = None,
) -> Window:
    """The window that moves `target_bytes_per_s` at `ttfb_s` with a range `late_s` late, within [min, max] bytes.

    When `connections` at their pace cannot reach the target with pieces of at most `max_piece_bytes`, no
    window can: the most bytes allowed are kept in flight.
    """
    if connections < 1 or connection_bytes_per_s <= 0 or min_window_bytes > max_window_bytes:
        raise ValueError("plan_window needs a connection, a pace, and min_window_bytes <= max_window_bytes")
    if max_piece_bytes is not None and max_piece_bytes < 1:
        raise ValueError("plan_window needs max_piece_bytes of at least 1")
    reach = connections * connection_bytes_per_s
    wait_s = max(0.0, ttfb_s) + max(0.0, late_s)
    wanted = math.inf
    if target_bytes_per_s < reach:
        wanted = target_bytes_per_s * wait_s / (1.0 - target_bytes_per_s / reach)
    if max_piece_bytes is not None and wanted > connections * max_piece_bytes:
        # pieces at their largest: each GET takes the wait and a whole piece's body, and the connections that
        # many pieces keep busy move at most connections × piece / (ttfb + piece / pace)
        piece_s = max_piece_bytes / connection_bytes_per_s
        reachable = target_bytes_per_s * (max(0.0, ttfb_s) + piece_s) < connections * max_piece_bytes
        wanted = target_bytes_per_s * (wait_s + piece_s) if reachable else math.inf
    window = int(min(max_window_bytes, max(min_window_bytes, wanted)))
    piece = max(1, -(-window // connections))
    return Window(window, piece if max_piece_bytes is None else min(piece, max_piece_bytes))
