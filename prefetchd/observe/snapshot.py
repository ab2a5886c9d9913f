"""One reading of the daemon's state, taken on the loop and handed to the metrics and `/streams`.

Counters of closed streams are folded into `finished`, so that the daemon-wide totals only ever grow, as
Prometheus counters must, while each live stream still has series of its own.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..fetch.cache import CacheStatistics
from ..fetch.s3 import S3Statistics


@dataclass(frozen=True, slots=True)
class StreamSnapshot:
    stream: int
    pid: int  # the client's process, as SO_PEERCRED gave it (0: in another pid namespace)
    format: str
    sources: dict[str, str]
    epoch: int
    batches_sent: int
    seeks: int
    ring_slots: int
    ring_free: int
    ring_filling: int
    ring_ready: int  # published, not yet released: batches waiting for the trainer
    trainer_wait_s: float  # how long the trainer waited for a batch that was not ready (its stall)
    fill_s: float  # time spent filling slots: fetch waits and decode
    bytes_sent: int = 0  # array bytes of the batches handed over (valid records only): `prefetchd status`'s MB/s
    decode_s: float = 0.0  # decoding batches whose bytes had arrived (IDX scaling; JPEG workers, staging included)
    # its S3 requests at the daemon's shared bucket gates: out now, queued for a turn, and let in so far
    fetches_in_flight: int = 0
    fetches_waiting: int = 0
    fetches_admitted: int = 0


@dataclass(frozen=True, slots=True)
class FinishedStreams:
    """What closed streams did, kept so that totals never go down."""

    streams: int = 0
    batches_sent: int = 0
    trainer_wait_s: float = 0.0
    fill_s: float = 0.0
    bytes_sent: int = 0
    decode_s: float = 0.0

    def plus(self, stream: StreamSnapshot) -> FinishedStreams:
        return FinishedStreams(
            self.streams + 1,
            self.batches_sent + stream.batches_sent,
            self.trainer_wait_s + stream.trainer_wait_s,
            self.fill_s + stream.fill_s,
            self.bytes_sent + stream.bytes_sent,
            self.decode_s + stream.decode_s,
        )


@dataclass(frozen=True, slots=True)
class DaemonSnapshot:
    version: str
    pid: int
    connections: int
    streams: tuple[StreamSnapshot, ...] = ()
    finished: FinishedStreams = field(default_factory=FinishedStreams)
    s3: S3Statistics | None = None
    cache: CacheStatistics | None = None

    def streams_json(self) -> dict[str, Any]:
        """`/streams`: every live stream, as plain JSON, with the daemon-wide S3 and cache counters that
        `prefetchd status` turns into rates (null where the daemon has no S3 source or no cache yet)."""
        return {
            "version": self.version,
            "pid": self.pid,
            "connections": self.connections,
            "streams": [asdict(stream) for stream in self.streams],
            "finished": asdict(self.finished),
            "s3": None if self.s3 is None else asdict(self.s3),
            "cache": None if self.cache is None else asdict(self.cache),
        }
