"""The byte sources against real backends: moto's S3 server over HTTP, and real files."""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

import pytest

from prefetchd.config import Config, S3Settings
from prefetchd.fetch.local import LocalSource
from prefetchd.fetch.router import SourceRouter
from prefetchd.fetch.s3 import S3Source
from prefetchd.fetch.source import ObjectInfo
from prefetchd.testing.embedded_s3 import CREDENTIALS, EmbeddedS3
from prefetchd_client.errors import ObjectChanged, ObjectNotFound
from tests.conftest import BUCKET

PAYLOAD = bytes(range(256)) * 4099  # ~1 MiB, not a multiple of any chunk size


def _settings(server: EmbeddedS3) -> S3Settings:
    return S3Settings(
        endpoint_url=server.endpoint_url,
        region="us-east-1",
        addressing_style="path",
        access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    )


def _put(server: EmbeddedS3, key: str, data: bytes) -> str:
    server.client().put_object(Bucket=BUCKET, Key=key, Body=data)
    return f"s3://{BUCKET}/{key}"


@pytest.fixture
def s3_url(s3_server: EmbeddedS3, fashion_urls: dict[str, str], request: pytest.FixtureRequest) -> str:
    return _put(s3_server, f"sources/{request.node.name}", PAYLOAD)


async def _read(source: S3Source | LocalSource, info: ObjectInfo, start: int, size: int) -> bytes:
    out = bytearray(size)
    await source.read_range(info, start, memoryview(out))
    return bytes(out)


def test_s3_ranges_come_back_byte_exact(s3_server: EmbeddedS3, s3_url: str) -> None:
    async def scenario() -> None:
        async with S3Source(_settings(s3_server), max_connections=8) as source:
            info = await source.stat(s3_url)
            assert info.size == len(PAYLOAD)
            assert re.fullmatch(r'"[0-9a-f]{32}"', info.version)
            ranges = [(0, 1), (0, len(PAYLOAD)), (12345, 70000), (len(PAYLOAD) - 3, 3)]
            results = await asyncio.gather(*(_read(source, info, a, n) for a, n in ranges))
            for (a, n), data in zip(ranges, results, strict=True):
                assert data == PAYLOAD[a : a + n]

    asyncio.run(scenario())


def test_s3_overwritten_object_is_object_changed(s3_server: EmbeddedS3, s3_url: str) -> None:
    async def scenario() -> None:
        async with S3Source(_settings(s3_server), max_connections=2) as source:
            info = await source.stat(s3_url)
            _put(s3_server, s3_url.split("/", 3)[3], PAYLOAD[::-1])
            with pytest.raises(ObjectChanged, match=re.escape(s3_url) + r" was overwritten.*HTTP 412") as caught:
                await _read(source, info, 100, 10)
            assert caught.value.offset == 100

    asyncio.run(scenario())


def test_s3_missing_key_is_object_not_found(s3_server: EmbeddedS3, fashion_urls: dict[str, str]) -> None:
    async def scenario() -> None:
        async with S3Source(_settings(s3_server), max_connections=2) as source:
            with pytest.raises(ObjectNotFound, match=re.escape(f"s3://{BUCKET}/nope") + r" \(HTTP 404\)"):
                await source.stat(f"s3://{BUCKET}/nope")

    asyncio.run(scenario())


def test_local_ranges_and_changes(tmp_path: Path) -> None:
    path = tmp_path / "data.bin"
    path.write_bytes(PAYLOAD)

    async def scenario() -> None:
        source = LocalSource()
        info = await source.stat(f"file://{path}")
        assert info.size == len(PAYLOAD)
        assert await _read(source, info, 777, 5000) == PAYLOAD[777:5777]
        plain = await source.stat(str(path))
        assert await _read(source, plain, 0, 10) == PAYLOAD[:10]
        path.write_bytes(PAYLOAD[:-1])
        os.utime(path, ns=(1, 1))
        with pytest.raises(ObjectChanged, match="changed after the stream opened it"):
            await _read(source, info, 0, 10)
        with pytest.raises(ObjectNotFound, match=re.escape(str(tmp_path / "missing"))):
            await source.stat(str(tmp_path / "missing"))
        with pytest.raises(ObjectNotFound, match="not a regular file"):
            await source.stat(str(tmp_path))

    asyncio.run(scenario())


def test_s3_open_is_stat_and_the_first_bytes_in_one_request(s3_server: EmbeddedS3, s3_url: str) -> None:
    empty = _put(s3_server, "sources/empty-object", b"")
    small = _put(s3_server, "sources/small-object", b"0123456789")

    async def scenario() -> None:
        async with S3Source(_settings(s3_server), max_connections=4) as source:
            info, head = await source.open(s3_url, 64)
            assert info == await source.stat(s3_url)
            assert head == PAYLOAD[:64]
            info, head = await source.open(small, 1 << 20)  # asks for more than there is
            assert (info.size, head) == (10, b"0123456789")
            info, head = await source.open(empty, 64)  # S3 answers 416 to any range of an empty object
            assert (info.size, head) == (0, b"")
            assert info == await source.stat(empty)
            with pytest.raises(ObjectNotFound, match=re.escape(f"s3://{BUCKET}/nope")):
                await source.open(f"s3://{BUCKET}/nope", 64)

    asyncio.run(scenario())


def test_local_open_is_stat_and_the_first_bytes(tmp_path: Path) -> None:
    path = tmp_path / "object"
    path.write_bytes(PAYLOAD)

    async def scenario() -> None:
        source = LocalSource()
        info, head = await source.open(str(path), 100)
        assert info == await source.stat(str(path)) and head == PAYLOAD[:100]
        _, whole = await source.open(str(path), 10 * len(PAYLOAD))
        assert whole == PAYLOAD

    asyncio.run(scenario())


def test_the_router_gives_s3_the_configured_stall_timeout(s3_server: EmbeddedS3, tmp_path: Path) -> None:
    config = Config(socket_path=tmp_path / "sock", s3=_settings(s3_server), stall_timeout_s=0.25, cache_bytes=0)

    async def scenario() -> None:
        async with SourceRouter(config) as router:
            assert router.s3 is not None and router.s3.lean is not None
            assert router.s3.stall_timeout_s == router.s3.lean.idle_timeout_s == 0.25

    asyncio.run(scenario())
