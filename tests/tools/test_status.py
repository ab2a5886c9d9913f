"""`prefetchd status`: the pure table from two readings, and the command against a live daemon and a dead one."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from prefetchd.cli import main
from prefetchd.testing.daemon_process import DaemonProcess, scrape
from prefetchd.testing.embedded_s3 import EmbeddedS3
from prefetchd.tools.status import render_status, short_sources, shorten, status_url
from prefetchd_client import idx_iter
from tests.tools.cli import run_prefetchd

MB = 1_000_000


def _stream(**changes: Any) -> dict[str, Any]:
    stream: dict[str, Any] = {
        "stream": 7,
        "pid": 4321,
        "format": "idx",
        "sources": {"image": "s3://bucket-name/training-data/train-images-idx3-ubyte"},
        "epoch": 0,
        "batches_sent": 10,
        "bytes_sent": 0,
        "seeks": 0,
        "ring_slots": 8,
        "ring_free": 2,
        "ring_filling": 3,
        "ring_ready": 3,
        "trainer_wait_s": 1.0,
        "fill_s": 0.5,
    }
    return {**stream, **changes}


def _reading(streams: list[dict[str, Any]], *, requests: int = 0, received: int = 0, hits: int = 0) -> dict[str, Any]:
    limit = {"limit": 24, "ceiling": 64, "lowest": 16, "throttles": 2, "decreases": 1}
    s3 = {
        "requests": requests,
        "bytes_received": received,
        "retries": 3,
        "throttled": 2,
        "transient": 1,
        "broken": 0,
        "buckets": [{"name": "bucket-name", "in_flight": 5, "waiting": 0, "admitted": 9, "limit": limit}],
    }
    cache = {"hits": hits, "misses": 10, "held_bytes": 55 * MB, "budget_bytes": 256 * MB}
    return {"version": "0.1.0", "pid": 99, "connections": 1, "streams": streams, "s3": s3, "cache": cache}


def test_rates_are_the_counters_difference_over_the_interval() -> None:
    before = _reading([_stream()], requests=100, received=10 * MB, hits=0)
    after = _reading(
        [_stream(batches_sent=30, bytes_sent=4 * MB, trainer_wait_s=2.0)], requests=140, received=50 * MB, hits=30
    )
    table = render_status(after, before, elapsed_s=2.0)
    header, columns, row, s3, cache = table.splitlines()
    assert "pid 99" in header and "1 stream;" in header and "over the last 2.0 s" in header
    assert columns.split()[:4] == ["STREAM", "PID", "FORMAT", "SOURCES"]
    cells = row.split()
    assert cells[:3] == ["7", "4321", "idx"]
    assert cells[4:9] == ["0", "30", "10.0", "2.0", "2/3/3"], "epoch, batches, batches/s, MB/s, free/filling/ready"
    assert row.endswith("2.0s (50%)"), "the trainer waited one of the two seconds"
    assert s3.startswith("S3: 20.0 MB/s, 20.0 requests/s; retries 3, throttled 2, transient 1, broken 0")
    assert "AIMD limit bucket-name 24/64 (5 in flight)" in s3
    assert cache.startswith("cache: hit rate 100% (interval: 30 hits, 0 misses)") and "55.0 of 256.0 MB" in cache


def test_the_s3_line_shows_hedges_once_there_are_any() -> None:
    quiet = _reading([_stream()])
    assert "hedges" not in render_status(quiet).splitlines()[3]
    raced = _reading([_stream()])
    raced["s3"]["hedges"] = {"started": 3, "won": 2, "lost": 1, "failed": 0, "skipped": 0, "budget_left": 9.0}
    assert "broken 0; hedges 3 (2 won); AIMD limit" in render_status(raced).splitlines()[3]


def test_one_reading_shows_totals_and_no_rates() -> None:
    table = render_status(_reading([_stream()], hits=30))
    row = table.splitlines()[2].split()
    assert row[6:8] == ["-", "-"]
    assert "rates need two readings" in table and "S3: - MB/s, - requests/s" in table
    assert "hit rate 75% (all time" in table


def test_a_stream_that_opened_between_readings_has_no_rate_yet() -> None:
    table = render_status(_reading([_stream(stream=8)]), _reading([_stream()]), elapsed_s=1.0)
    assert table.splitlines()[2].split()[6:8] == ["-", "-"]


def test_an_idle_daemon_says_so() -> None:
    idle = {"version": "0.1.0", "pid": 1, "connections": 0, "streams": [], "s3": None, "cache": None}
    assert render_status(idle, idle, 1.0).splitlines()[1:] == ["no streams open", "S3: not used yet", "cache: off"]


def test_sources_keep_the_bucket_and_the_file_names() -> None:
    folder = "s3://bucket-name/" + "deep/" * 20
    assert short_sources([folder + "images", folder + "labels"]) == "s3://bucket-name/…/{images,labels}"
    assert short_sources(["s3://b/k"]) == "s3://b/k"
    assert short_sources(["/data/train.rec"]) == "/data/train.rec"
    long = shorten("s3://bucket-name/" + "x" * 100 + "/train-images-idx3-ubyte", 40)
    assert len(long) == 40 and long.startswith("s3://bucket-name/") and long.endswith("images-idx3-ubyte")


@pytest.mark.parametrize(
    ("given", "url"),
    [
        ("http://127.0.0.1:9464", "http://127.0.0.1:9464"),
        ("127.0.0.1:9464/", "http://127.0.0.1:9464"),
        ("0.0.0.0:9464", "http://127.0.0.1:9464"),
        ("[::]:9464", "http://[::1]:9464"),
    ],
)
def test_the_address_is_the_daemons_own_or_a_url(given: str, url: str) -> None:
    assert status_url(given) == url


@pytest.mark.parametrize("given", ["localhost:9464", "https://127.0.0.1:9464", "9464", "http://127.0.0.1"])
def test_an_address_that_names_no_daemon_is_refused(given: str) -> None:
    with pytest.raises(ValueError, match=r"HOST:PORT|IP address|https"):
        status_url(given)


# --- the command ------------------------------------------------------------------------------------------------


def test_status_once_shows_a_live_stream_and_json_prints_streams(
    s3_server: EmbeddedS3, daemon: DaemonProcess, fashion_urls: dict[str, str]
) -> None:
    image, label = fashion_urls["t10k-images-idx3-ubyte"], fashion_urls["t10k-labels-idx1-ubyte"]
    with idx_iter(image, label, batch_size=100, socket_path=daemon.socket_path) as batches:
        for _ in range(3):
            next(batches)
        table = run_prefetchd(s3_server, "status", "--once", "--interval", "0.3", "--http", daemon.http_url)
        raw = run_prefetchd(s3_server, "status", "--json", "--http", daemon.http_url)
    assert table.returncode == 0, table.stderr
    rows = [line.split() for line in table.stdout.splitlines() if f" {os.getpid()} " in f" {line} "]
    assert len(rows) == 1 and rows[0][2] == "idx", table.stdout
    assert "t10k-images-idx3-ubyte" in table.stdout and "S3:" in table.stdout and "cache:" in table.stdout
    (stream,) = [s for s in json.loads(raw.stdout)["streams"] if s["pid"] == os.getpid()]
    assert stream["batches_sent"] >= 3 and stream["bytes_sent"] >= 3 * 100 * (28 * 28 + 1)
    assert scrape(daemon.http_url)["prefetchd_sent_bytes_total", ()] >= stream["bytes_sent"]


def test_status_finds_the_daemon_from_the_serve_config(
    daemon: DaemonProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "prefetchd.toml"
    config.write_text(f'http_address = "{daemon.http_url.removeprefix("http://")}"\n')
    monkeypatch.delenv("PREFETCHD_HTTP_ADDRESS", raising=False)
    result = CliRunner().invoke(main, ["status", "--once", "--interval", "0.05", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("prefetchd ")
    monkeypatch.setenv("PREFETCHD_HTTP_ADDRESS", daemon.http_url.removeprefix("http://"))
    assert CliRunner().invoke(main, ["status", "--json"]).exit_code == 0


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_a_daemon_that_does_not_answer_is_a_clear_exit_1(s3_server: EmbeddedS3) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    result = run_prefetchd(s3_server, "status", "--once", "--http", url)
    assert result.returncode == 1
    assert f"no prefetchd daemon answers at {url}/streams" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--interval", "0"], "--interval"),
        (["--http", "localhost:9464"], "--http"),
        (["--http", "https://127.0.0.1:9464"], "--http"),
        (["--bogus"], "--bogus"),
    ],
)
def test_bad_arguments_exit_2_and_say_which(args: list[str], complaint: str) -> None:
    result = CliRunner().invoke(main, ["status", "--once", *args])
    assert result.exit_code == 2 and complaint in result.output, result.output


def test_an_http_side_that_is_off_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREFETCHD_HTTP_ADDRESS", "off")
    result = CliRunner().invoke(main, ["status", "--once"])
    assert result.exit_code == 2 and "http_address = off" in result.output
