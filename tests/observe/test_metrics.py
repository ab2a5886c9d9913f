"""The metrics a scrape shows are the snapshot's numbers, under Prometheus' names and types."""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from prefetchd.fetch.admission import AdmissionStatistics
from prefetchd.fetch.aimd import AimdStatistics
from prefetchd.fetch.cache import CacheStatistics
from prefetchd.fetch.s3 import S3Statistics
from prefetchd.observe.metrics import DaemonCollector, render
from prefetchd.observe.snapshot import DaemonSnapshot, FinishedStreams, StreamSnapshot


def _stream(stream: int, *, batches: int, wait_s: float) -> StreamSnapshot:
    return StreamSnapshot(
        stream=stream,
        pid=4000 + stream,
        format="idx",
        sources={"images": "s3://b/i", "labels": "s3://b/l"},
        epoch=1,
        batches_sent=batches,
        seeks=0,
        ring_slots=10,
        ring_free=4,
        ring_filling=3,
        ring_ready=2,
        trainer_wait_s=wait_s,
        fill_s=0.5,
        decode_s=0.125,
    )


S3 = S3Statistics(
    requests=120,
    bytes_received=7_000_000,
    retries=9,
    throttled=5,
    transient=3,
    broken=1,
    expired_token=0,
    credential_renewals=0,
    lean_fallbacks=2,
    retry_budget_left=98.2,
    buckets=(AdmissionStatistics("b", 7, 0, 120, AimdStatistics(16, 256, 16, 5, 1)),),
)
CACHE = CacheStatistics(entries=3, held_bytes=3_000_000, budget_bytes=2 << 30, hits=40, misses=60, hit_bytes=9000)


def _scrape(snapshot: DaemonSnapshot) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DaemonCollector(lambda: snapshot))
    samples = {}
    for family in text_string_to_metric_families(render(registry).decode()):
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def test_totals_add_the_live_streams_to_the_closed_ones_so_they_never_go_down() -> None:
    finished = FinishedStreams(streams=3, batches_sent=1000, trainer_wait_s=2.0, fill_s=4.0, decode_s=1.0)
    snap = DaemonSnapshot(
        "1.0", 77, 2, (_stream(4, batches=10, wait_s=0.25), _stream(5, batches=5, wait_s=0.5)), finished
    )
    samples = _scrape(snap)
    assert samples["prefetchd_streams", ()] == 2
    assert samples["prefetchd_streams_opened_total", ()] == 5
    assert samples["prefetchd_batches_total", ()] == 1015
    assert samples["prefetchd_trainer_wait_seconds_total", ()] == 2.75
    assert samples["prefetchd_fill_seconds_total", ()] == 5.0
    assert samples["prefetchd_decode_seconds_total", ()] == 1.25
    assert samples["prefetchd_connections", ()] == 2
    assert samples["prefetchd_info", (("version", "1.0"),)] == 1


def test_each_stream_has_its_own_series_and_its_slots_by_state() -> None:
    samples = _scrape(DaemonSnapshot("1.0", 77, 1, (_stream(4, batches=10, wait_s=0.25),)))
    labels = (("format", "idx"), ("pid", "4004"), ("stream", "4"))
    assert samples["prefetchd_stream_batches_total", labels] == 10
    assert samples["prefetchd_stream_trainer_wait_seconds_total", labels] == 0.25
    slots = {
        state: samples["prefetchd_stream_ring_slots", tuple(sorted((*labels, ("state", state))))]
        for state in ("free", "filling", "ready")
    }
    assert slots == {"free": 4, "filling": 3, "ready": 2}


def test_s3_and_cache_counters_come_through_with_their_labels() -> None:
    samples = _scrape(DaemonSnapshot("1.0", 77, 0, s3=S3, cache=CACHE))
    assert samples["prefetchd_s3_requests_total", ()] == 120
    assert samples["prefetchd_s3_failed_requests_total", (("kind", "throttled"),)] == 5
    assert samples["prefetchd_s3_failed_requests_total", (("kind", "transient"),)] == 3
    assert samples["prefetchd_s3_retries_total", ()] == 9
    assert samples["prefetchd_s3_received_bytes_total", ()] == 7_000_000
    assert samples["prefetchd_s3_concurrency_limit", (("bucket", "b"),)] == 16
    assert samples["prefetchd_s3_in_flight_requests", (("bucket", "b"),)] == 7
    assert samples["prefetchd_cache_hits_total", (("tier", "ram"),)] == 40
    assert samples["prefetchd_cache_misses_total", (("tier", "ram"),)] == 60
    assert ("prefetchd_cache_hits_total", (("tier", "disk"),)) not in samples  # no disk tier configured


def test_a_daemon_without_s3_or_cache_shows_no_series_for_them() -> None:
    names = {name for name, _ in _scrape(DaemonSnapshot("1.0", 77, 0))}
    assert not {name for name in names if name.startswith(("prefetchd_s3_", "prefetchd_cache_"))}
