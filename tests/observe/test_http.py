"""The HTTP side over a real socket: health, metrics and streams, and addresses it refuses."""

from __future__ import annotations

import asyncio
import socket

import aiohttp
import pytest

from prefetchd.observe.address import parse_address
from prefetchd.observe.http import HttpServer
from prefetchd.observe.snapshot import DaemonSnapshot, StreamSnapshot

STREAM = StreamSnapshot(1, 42, "bytes", {"object": "s3://b/k"}, 0, 3, 0, 8, 5, 1, 1, 0.125, 0.5)


def _serve_and_get(address: str, paths: list[str]) -> tuple[str, list[tuple[int, str, str]]]:
    async def go() -> tuple[str, list[tuple[int, str, str]]]:
        async with HttpServer(address, lambda: DaemonSnapshot("9.9", 1234, 1, (STREAM,))) as http:
            answers = []
            async with aiohttp.ClientSession() as session:
                for path in paths:
                    async with session.get(http.url + path) as response:
                        answers.append((response.status, response.content_type, await response.text()))
            return http.url, answers

    return asyncio.run(go())


def test_health_metrics_and_streams_answer_on_loopback() -> None:
    url, answers = _serve_and_get("127.0.0.1:0", ["/healthz", "/metrics", "/streams", "/nothing"])
    assert url.startswith("http://127.0.0.1:")
    (health, metrics, streams, missing) = answers
    assert health[0] == 200 and '"status": "ok"' in health[2] and '"streams": 1' in health[2]
    assert metrics[0] == 200 and metrics[1] == "text/plain"
    assert 'prefetchd_stream_batches_total{format="bytes",pid="42",stream="1"} 3.0' in metrics[2]
    assert streams[0] == 200 and '"sources": {"object": "s3://b/k"}' in streams[2]
    assert missing[0] == 404


def test_a_taken_port_is_an_os_error_the_daemon_can_report() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match="in use"):
            _serve_and_get(f"127.0.0.1:{port}", [])


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1:9464", ("127.0.0.1", 9464)), ("0.0.0.0:0", ("0.0.0.0", 0)), ("[::1]:80", ("::1", 80))],
)
def test_addresses_are_host_and_port(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["9464", "localhost:9464", "127.0.0.1:http", "127.0.0.1:70000", ""])
def test_anything_else_is_refused_saying_what_to_write(text: str) -> None:
    with pytest.raises(ValueError, match=r"HOST:PORT|IP address|out of range"):
        parse_address(text)
