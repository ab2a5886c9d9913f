"""The daemon's Prometheus metrics, read from a `DaemonSnapshot` at each scrape.

A custom collector, not counters bumped on the hot path: the fetch, cache and stream code already count
what they do, and a scrape every few seconds reads those counts once. Names follow Prometheus' conventions
(`_total` for counters, base units: seconds and bytes). The one users watch is
`prefetchd_trainer_wait_seconds_total`: time trainers spent in `next()` with no batch ready.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from ..fetch.cache import CacheStatistics
from ..fetch.s3 import S3Statistics
from .snapshot import DaemonSnapshot, StreamSnapshot

STREAM_LABELS = ["stream", "pid", "format"]


class DaemonCollector(Collector):
    """Yields every metric family from one snapshot per scrape."""

    def __init__(self, snapshot: Callable[[], DaemonSnapshot]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        snap = self._snapshot()
        yield InfoMetricFamily("prefetchd", "The daemon's version and pid", value={"version": snap.version})
        yield GaugeMetricFamily("prefetchd_connections", "Client connections open", value=snap.connections)
        yield from _streams(snap)
        if snap.s3 is not None:
            yield from _s3(snap.s3)
        if snap.cache is not None:
            yield from _cache(snap.cache)


def render(registry: CollectorRegistry) -> bytes:
    """The text exposition format, what `/metrics` answers."""
    return generate_latest(registry)


# The counters every stream keeps, and closed streams' sums keep too: (attribute, the daemon's total and its
# help, the stream's own series and its help)
_STREAM_COUNTERS = (
    (
        "batches_sent",
        ("prefetchd_batches", "Batches handed to trainers"),
        ("prefetchd_stream_batches", "Batches handed to this stream's trainer"),
    ),
    (
        "bytes_sent",
        ("prefetchd_sent_bytes", "Array bytes of the batches handed to trainers (valid records only)"),
        ("prefetchd_stream_sent_bytes", "Array bytes of batches handed to this stream's trainer"),
    ),
    (
        "trainer_wait_s",
        ("prefetchd_trainer_wait_seconds", "Time trainers waited in next() for a batch that was not ready: the stall"),
        ("prefetchd_stream_trainer_wait_seconds", "This stream's trainer's stall"),
    ),
    (
        "fill_s",
        ("prefetchd_fill_seconds", "Time spent filling ring slots (waiting on fetches, decoding)"),
        ("prefetchd_stream_fill_seconds", "Time filling this stream's slots"),
    ),
    (
        "decode_s",
        (
            "prefetchd_decode_seconds",
            "Time spent decoding batches whose bytes had arrived (IDX scaling, JPEG decode in the workers)",
        ),
        ("prefetchd_stream_decode_seconds", "Time decoding this stream's batches"),
    ),
)


def _streams(snap: DaemonSnapshot) -> Iterator[Metric]:
    live, done = snap.streams, snap.finished
    yield GaugeMetricFamily("prefetchd_streams", "Streams open now", value=len(live))
    yield CounterMetricFamily("prefetchd_streams_opened", "Streams opened", value=done.streams + len(live))
    per_stream = []
    for attribute, (name, text), (stream_name, stream_text) in _STREAM_COUNTERS:
        total = getattr(done, attribute) + sum(getattr(stream, attribute) for stream in live)
        yield CounterMetricFamily(name, text, value=total)
        family = CounterMetricFamily(stream_name, stream_text, labels=STREAM_LABELS)
        for stream in live:
            family.add_metric(_labels(stream), getattr(stream, attribute))
        per_stream.append(family)
    yield from per_stream
    yield from _stream_gauges(live)


def _stream_gauges(live: Sequence[StreamSnapshot]) -> Iterator[Metric]:
    epochs = GaugeMetricFamily("prefetchd_stream_epoch", "The epoch this stream is filling", labels=STREAM_LABELS)
    slots = GaugeMetricFamily(
        "prefetchd_stream_ring_slots",
        "This stream's ring slots by state: free, filling, and ready (sent, not yet released: the batch the "
        "trainer holds and those queued for it)",
        labels=[*STREAM_LABELS, "state"],
    )
    requests = GaugeMetricFamily(
        "prefetchd_stream_s3_requests",
        "This stream's S3 requests at the daemon's shared bucket gates: in_flight (out now) and waiting (queued "
        "for its turn)",
        labels=[*STREAM_LABELS, "state"],
    )
    for stream in live:
        labels = _labels(stream)
        epochs.add_metric(labels, stream.epoch)
        ring = {"free": stream.ring_free, "filling": stream.ring_filling, "ready": stream.ring_ready}
        for state, count in ring.items():
            slots.add_metric([*labels, state], count)
        requests.add_metric([*labels, "in_flight"], stream.fetches_in_flight)
        requests.add_metric([*labels, "waiting"], stream.fetches_waiting)
    yield from (epochs, slots, requests)


def _labels(stream: StreamSnapshot) -> list[str]:
    return [str(stream.stream), str(stream.pid), stream.format]


def _s3(s3: S3Statistics) -> Iterator[Metric]:
    yield CounterMetricFamily("prefetchd_s3_requests", "S3 requests sent (tries, retries included)", value=s3.requests)
    failures = CounterMetricFamily(
        "prefetchd_s3_failed_requests",
        "S3 tries that failed, by kind: throttled (503 SlowDown, 429), transient (500, 502, 504), broken (no "
        "answer, a body that broke off or stalled), expired_token (400 ExpiredToken)",
        labels=["kind"],
    )
    for kind, count in (
        ("throttled", s3.throttled),
        ("transient", s3.transient),
        ("broken", s3.broken),
        ("expired_token", s3.expired_token),
    ):
        failures.add_metric([kind], count)
    yield failures
    yield CounterMetricFamily("prefetchd_s3_retries", "Tries made again after a failure", value=s3.retries)
    yield CounterMetricFamily(
        "prefetchd_s3_received_bytes", "Body bytes of ranged GETs received", value=s3.bytes_received
    )
    yield CounterMetricFamily(
        "prefetchd_s3_credential_renewals", "Credential renewals after ExpiredToken", value=s3.credential_renewals
    )
    yield CounterMetricFamily(
        "prefetchd_s3_lean_fallbacks", "Lean-path answers read through aiobotocore instead", value=s3.lean_fallbacks
    )
    yield GaugeMetricFamily(
        "prefetchd_s3_retry_budget", "Retries left in the shared budget", value=s3.retry_budget_left
    )
    yield from _hedges(s3)
    in_flight = GaugeMetricFamily("prefetchd_s3_in_flight_requests", "S3 requests in flight", labels=["bucket"])
    limit = GaugeMetricFamily(
        "prefetchd_s3_concurrency_limit", "Requests the bucket's AIMD limit lets in flight now", labels=["bucket"]
    )
    for bucket in s3.buckets:
        in_flight.add_metric([bucket.name], bucket.in_flight)
        limit.add_metric([bucket.name], bucket.limit.limit)
    yield from (in_flight, limit)


def _hedges(s3: S3Statistics) -> Iterator[Metric]:
    hedges = s3.hedges
    yield CounterMetricFamily(
        "prefetchd_hedges_started",
        "Second requests raced against a GET that ran far behind its peers (fetch/hedge.py)",
        value=hedges.started,
    )
    ended = CounterMetricFamily(
        "prefetchd_hedges",
        "Hedges that ended, by outcome: won (it finished first; the first request was cancelled), lost (the "
        "first request finished first), failed (an error; the first request went on alone)",
        labels=["outcome"],
    )
    for outcome, count in (("won", hedges.won), ("lost", hedges.lost), ("failed", hedges.failed)):
        ended.add_metric([outcome], count)
    yield ended
    yield CounterMetricFamily(
        "prefetchd_hedges_skipped",
        "GETs past their hedge delay that got no hedge: the hedge budget was spent, or the bucket at its limit",
        value=hedges.skipped,
    )
    yield CounterMetricFamily(
        "prefetchd_hedges_received_bytes",
        "Body bytes the hedges received (a lost hedge's are the extra transfer hedging cost)",
        value=s3.hedge_bytes,
    )


def _cache(cache: CacheStatistics) -> Iterator[Metric]:
    tiers = [("ram", cache)] + ([("disk", cache.disk)] if cache.disk is not None else [])
    hits = CounterMetricFamily("prefetchd_cache_hits", "Ranges served from the epoch cache", labels=["tier"])
    misses = CounterMetricFamily("prefetchd_cache_misses", "Ranges the epoch cache did not hold", labels=["tier"])
    hit_bytes = CounterMetricFamily("prefetchd_cache_hit_bytes", "Bytes served from the epoch cache", labels=["tier"])
    held = GaugeMetricFamily("prefetchd_cache_bytes", "Bytes the epoch cache holds", labels=["tier"])
    budget = GaugeMetricFamily("prefetchd_cache_budget_bytes", "The epoch cache's budget", labels=["tier"])
    for tier, stats in tiers:
        hits.add_metric([tier], stats.hits)
        misses.add_metric([tier], stats.misses)
        hit_bytes.add_metric([tier], stats.hit_bytes)
        held.add_metric([tier], stats.held_bytes)
        budget.add_metric([tier], stats.budget_bytes)
    yield from (hits, misses, hit_bytes, held, budget)
