"""Per-client caps on open streams and ring memory, so one trainer cannot starve the daemon's other clients.

A client is a peer process (its pid from SO_PEERCRED): one connection carries one stream, and each stream's
ring is shared memory the daemon pays for until the client lets go. Pure bookkeeping: the control server
asks before it opens a stream or creates a ring, and gives back when the stream ends.
"""

from __future__ import annotations

from collections import Counter

from prefetchd_client.errors import LimitExceeded

MiB = 1 << 20


def _mib(size: int) -> str:
    """A size as people read it: MiB below a GiB, GiB above."""
    return f"{size / MiB:.1f} MiB" if size < 1024 * MiB else f"{size / (1024 * MiB):,.1f} GiB"


class ClientLimits:
    """Counts each client's streams and ring bytes against `max_streams` and `max_ring_bytes`."""

    def __init__(self, max_streams: int, max_ring_bytes: int) -> None:
        self.max_streams = max_streams
        self.max_ring_bytes = max_ring_bytes
        self._streams: Counter[int] = Counter()
        self._ring_bytes: Counter[int] = Counter()

    def open_stream(self, pid: int) -> None:
        """Count a new stream of `pid`'s, or raise `LimitExceeded` if it has as many as it may."""
        if self._streams[pid] >= self.max_streams:
            raise LimitExceeded(
                f"client pid {pid} already has {self._streams[pid]} open streams, this daemon's "
                f"max_streams_per_client; close one first, or raise max_streams_per_client"
            )
        self._streams[pid] += 1

    def close_stream(self, pid: int) -> None:
        self._streams[pid] -= 1
        if self._streams[pid] <= 0:
            del self._streams[pid]

    def claim_ring(self, pid: int, ring_bytes: int) -> None:
        """Count a ring of `ring_bytes` against `pid`, or raise `LimitExceeded` before any memory is taken."""
        total = self._ring_bytes[pid] + ring_bytes
        if total > self.max_ring_bytes:
            raise LimitExceeded(
                f"a ring of {_mib(ring_bytes)} would bring client pid {pid}'s shared memory to {_mib(total)}, over "
                f"this daemon's max_ring_bytes_per_client ({_mib(self.max_ring_bytes)}); use a smaller batch_size "
                "or prefetch, close a stream, or raise max_ring_bytes_per_client"
            )
        self._ring_bytes[pid] = total

    def release_ring(self, pid: int, ring_bytes: int) -> None:
        self._ring_bytes[pid] -= ring_bytes
        if self._ring_bytes[pid] <= 0:
            del self._ring_bytes[pid]

    def usage(self, pid: int) -> tuple[int, int]:
        """(open streams, ring bytes) of `pid`."""
        return self._streams[pid], self._ring_bytes[pid]

    def __repr__(self) -> str:
        return f"<ClientLimits clients={len(self._streams)} streams={self._streams.total()}>"
