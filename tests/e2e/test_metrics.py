"""The daemon's HTTP side during real streams: health, `/streams`, and metrics that move, including the
trainer's stall when the endpoint throttles."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import numpy as np

from prefetchd.testing.daemon_process import DaemonProcess, scrape
from prefetchd.testing.embedded_s3 import EmbeddedS3
from prefetchd.testing.fault_plan import FaultRates
from prefetchd.testing.fault_proxy import FaultProxy
from prefetchd_client import bytes_iter, idx_iter
from tests.conftest import Objects

BLOCK = 1 << 18
DATA = np.random.default_rng(11).integers(0, 256, 16 * BLOCK, dtype=np.uint8).tobytes()


def _json(url: str) -> dict[str, object]:
    with urllib.request.urlopen(url, timeout=10) as answer:
        assert answer.status == 200
        loaded: dict[str, object] = json.loads(answer.read())
        return loaded


def test_streams_and_counters_show_a_run_as_it_happens(
    fresh_daemon: DaemonProcess, fashion_urls: dict[str, str]
) -> None:
    assert fresh_daemon.http_url.startswith("http://127.0.0.1:")
    image, label = fashion_urls["t10k-images-idx3-ubyte"], fashion_urls["t10k-labels-idx1-ubyte"]
    before = scrape(fresh_daemon.http_url)
    with idx_iter(image, label, batch_size=100, socket_path=fresh_daemon.socket_path) as batches:
        taken = [next(batches) for _ in range(5)]
        during = scrape(fresh_daemon.http_url)
        streams = _json(f"{fresh_daemon.http_url}/streams")
        health = _json(f"{fresh_daemon.http_url}/healthz")
        rest = sum(1 for _ in batches)
    after = fresh_daemon.until_no_streams()

    assert health["status"] == "ok" and health["streams"] == 1
    (stream,) = streams["streams"]  # type: ignore[misc]
    assert stream["format"] == "idx" and stream["sources"] == {"image": image, "label": label}
    labels = (("format", "idx"), ("pid", str(stream["pid"])), ("stream", str(stream["stream"])))
    assert during["prefetchd_streams", ()] == 1
    assert during["prefetchd_stream_batches_total", labels] >= len(taken)
    states = [
        during["prefetchd_stream_ring_slots", tuple(sorted((*labels, ("state", s))))]
        for s in ("free", "filling", "ready")
    ]
    assert sum(states) == stream["ring_slots"] and states[2] >= 1  # the batch the trainer holds among them
    assert after["prefetchd_streams", ()] == 0  # the stream closed; its series went with it
    assert ("prefetchd_stream_batches_total", labels) not in after
    assert after["prefetchd_batches_total", ()] - before["prefetchd_batches_total", ()] >= len(taken) + rest
    assert after["prefetchd_streams_opened_total", ()] == before["prefetchd_streams_opened_total", ()] + 1
    moved = after["prefetchd_s3_received_bytes_total", ()] - before["prefetchd_s3_received_bytes_total", ()]
    assert moved >= 10_000 * 784  # the images crossed from S3 at least once (the epoch cache may hold repeats)
    decoded = after["prefetchd_decode_seconds_total", ()] - before["prefetchd_decode_seconds_total", ()]
    assert 0 < decoded <= after["prefetchd_fill_seconds_total", ()] - before["prefetchd_fill_seconds_total", ()]


def _wait_for_all_batches(daemon: DaemonProcess, url: str) -> float:
    """Drain the object at once, batch after batch; the daemon's stall counter grows by how long that waited."""
    before = scrape(daemon.http_url)["prefetchd_trainer_wait_seconds_total", ()]
    with bytes_iter(url, batch_bytes=BLOCK, prefetch=1, socket_path=daemon.socket_path) as batches:
        assert b"".join(batch.data.tobytes() for batch in batches) == DATA
    return daemon.until_no_streams()["prefetchd_trainer_wait_seconds_total", ()] - before


def test_the_stall_metric_rises_when_the_endpoint_throttles(
    s3_server: EmbeddedS3, objects: Objects, tmp_path: Path
) -> None:
    url = objects.put("blob", DATA)
    # a ring of at most four 256 KiB slots: the 15 batches past the open's head need >= 4 rounds of GETs
    args = ("--cache-size", "0", "--max-ring-size", "1MiB")
    throttled = FaultRates(slowdown=0.1, latency=1.0, latency_ms=300.0)
    with (
        DaemonProcess(env=s3_server.environment(), args=args) as near,
        FaultProxy(s3_server.endpoint_url, throttled, seed=2) as proxy,
        DaemonProcess(env={**s3_server.environment(), "AWS_ENDPOINT_URL_S3": proxy.endpoint_url}, args=args) as far,
    ):
        clean_wait_s = _wait_for_all_batches(near, url)
        throttled_wait_s = _wait_for_all_batches(far, url)
        metrics = scrape(far.http_url)
        injected = proxy.counts()
    assert injected.slowdown > 0
    assert metrics["prefetchd_s3_failed_requests_total", (("kind", "throttled"),)] > 0
    assert throttled_wait_s >= 4 * 0.3 / 2  # at least half of four rounds of 300 ms first bytes
    assert throttled_wait_s > clean_wait_s
