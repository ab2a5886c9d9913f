"""`S3Source`'s lean bulk path against real servers: moto and nginx, with and without TLS.

Every read is checked byte for byte, and the lean path's own counters show which path carried it: a
pass that quietly fell back to aiobotocore would prove nothing about the lean one.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from prefetchd.config import S3Settings
from prefetchd.fetch.policy import RetryPolicy
from prefetchd.fetch.s3 import S3Source
from prefetchd.fetch.source import ObjectInfo
from prefetchd.testing.embedded_s3 import CREDENTIALS, EmbeddedS3
from prefetchd.testing.nginx_s3 import NginxS3
from prefetchd.testing.self_signed import write_certificates
from prefetchd_client.errors import ObjectChanged, ObjectNotFound, SourceUnavailable
from tests.conftest import BUCKET
from tests.fetch.test_range_get import ScriptedServer, serving

PAYLOAD = bytes(range(251)) * 40_000  # ~10 MB, not a multiple of any range size
RANGES = [(0, 1), (0, len(PAYLOAD)), (12_345, 3_000_000), (len(PAYLOAD) - 3, 3), (4 << 20, 4 << 20)]


def _settings(endpoint: str, **overrides: object) -> S3Settings:
    return S3Settings(
        endpoint_url=endpoint,
        region="us-east-1",
        addressing_style="path",
        access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        **overrides,  # type: ignore[arg-type]
    )


async def _read(source: S3Source, info: ObjectInfo, start: int, size: int) -> bytes:
    out = bytearray(size)
    await source.read_range(info, start, memoryview(out))
    return bytes(out)


async def _reads_are_exact_and_lean(source: S3Source, url: str) -> None:
    info = await source.stat(url)
    results = await asyncio.gather(*(_read(source, info, a, n) for a, n in RANGES))
    for (a, n), data in zip(RANGES, results, strict=True):
        assert data == PAYLOAD[a : a + n]
    assert source.lean is not None
    stats = source.lean.statistics()
    assert (stats.requests, stats.refused, source.fallbacks) == (len(RANGES), 0, 0)


def _partial(first: int, last: int) -> bytes:
    """The head of PAYLOAD's bytes [first, last], as a scripted server sends it."""
    return (
        f"HTTP/1.1 206 Partial Content\r\nContent-Length: {last - first + 1}\r\n"
        f'Content-Range: bytes {first}-{last}/{len(PAYLOAD)}\r\nETag: "v1"\r\n\r\n'
    ).encode()


async def _whole(writer: asyncio.StreamWriter, first: int, last: int) -> bool:
    writer.write(_partial(first, last) + PAYLOAD[first : last + 1])
    return True


@pytest.fixture(scope="module")
def tls_moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedS3]:
    certificates = write_certificates(tmp_path_factory.mktemp("tls"))
    with EmbeddedS3(certificates=certificates) as server:
        server.upload_files(BUCKET, "lean", [_payload_file(tmp_path_factory)])
        yield server


@pytest.fixture(scope="module")
def nginx_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, NginxS3]]:
    with NginxS3() as plain, NginxS3(tls=True) as secure:
        for server in (plain, secure):
            server.upload_files(BUCKET, "lean", [_payload_file(tmp_path_factory)])
        yield {"http": plain, "https": secure}


def _payload_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("payload") / "payload.bin"
    if not path.exists():
        path.write_bytes(PAYLOAD)
    return path


@pytest.fixture
def moto_url(s3_server: EmbeddedS3, fashion_urls: dict[str, str], request: pytest.FixtureRequest) -> str:
    key = f"lean/{request.node.name}"
    s3_server.client().put_object(Bucket=BUCKET, Key=key, Body=PAYLOAD)
    return f"s3://{BUCKET}/{key}"


def test_moto_ranges_arrive_through_the_lean_path(s3_server: EmbeddedS3, moto_url: str) -> None:
    async def scenario() -> None:
        async with S3Source(_settings(s3_server.endpoint_url), max_connections=4) as source:
            await _reads_are_exact_and_lean(source, moto_url)

    asyncio.run(scenario())


def test_moto_over_tls_verifies_the_certificate_from_aws_ca_bundle(
    tls_moto: EmbeddedS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert tls_moto.endpoint_url.startswith("https://") and tls_moto.certificates is not None
    monkeypatch.setenv("AWS_CA_BUNDLE", str(tls_moto.certificates.ca_path))

    async def scenario() -> None:
        async with S3Source(_settings(tls_moto.endpoint_url), max_connections=4) as source:
            await _reads_are_exact_and_lean(source, f"s3://{BUCKET}/lean/payload.bin")

    asyncio.run(scenario())


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_nginx_ranges_arrive_through_the_lean_path(
    nginx_servers: dict[str, NginxS3], scheme: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    nginx = nginx_servers[scheme]
    if nginx.ca_path is not None:
        monkeypatch.setenv("AWS_CA_BUNDLE", str(nginx.ca_path))

    async def scenario() -> None:
        async with S3Source(_settings(nginx.endpoint_url), max_connections=4) as source:
            await _reads_are_exact_and_lean(source, f"s3://{BUCKET}/lean/payload.bin")

    asyncio.run(scenario())


def test_an_untrusted_certificate_is_refused_with_the_tls_error(nginx_servers: dict[str, NginxS3]) -> None:
    nginx = nginx_servers["https"]

    async def scenario() -> None:
        async with S3Source(_settings(nginx.endpoint_url), max_connections=2) as source:
            info = ObjectInfo(f"s3://{BUCKET}/lean/payload.bin", len(PAYLOAD), '"unused"')
            with pytest.raises(SourceUnavailable, match=r"(?i)certificate verify failed"):
                await _read(source, info, 0, 10)
            assert source.lean is not None and source.lean.statistics().refused >= 1

    asyncio.run(scenario())


def test_an_untrusted_certificate_is_read_when_verification_is_off(nginx_servers: dict[str, NginxS3]) -> None:
    nginx = nginx_servers["https"]

    async def scenario() -> None:
        async with S3Source(_settings(nginx.endpoint_url, verify_ssl=False), max_connections=4) as source:
            await _reads_are_exact_and_lean(source, f"s3://{BUCKET}/lean/payload.bin")

    asyncio.run(scenario())


def test_an_object_overwritten_after_open_falls_back_and_is_object_changed(
    s3_server: EmbeddedS3, moto_url: str
) -> None:
    async def scenario() -> None:
        async with S3Source(_settings(s3_server.endpoint_url), max_connections=2) as source:
            info = await source.stat(moto_url)
            s3_server.client().put_object(Bucket=BUCKET, Key=moto_url.split("/", 3)[3], Body=PAYLOAD[::-1])
            with pytest.raises(ObjectChanged, match=re.escape(moto_url) + r" was overwritten.*HTTP 412"):
                await _read(source, info, 100, 10)
            assert source.lean is not None and source.lean.statistics().refused == 1
            assert source.fallbacks == 1

    asyncio.run(scenario())


def test_an_object_deleted_after_open_is_object_not_found(s3_server: EmbeddedS3, moto_url: str) -> None:
    async def scenario() -> None:
        async with S3Source(_settings(s3_server.endpoint_url), max_connections=2) as source:
            info = await source.stat(moto_url)
            s3_server.client().delete_object(Bucket=BUCKET, Key=moto_url.split("/", 3)[3])
            with pytest.raises(ObjectNotFound, match=re.escape(moto_url)):
                await _read(source, info, 0, 10)
            assert source.fallbacks == 1

    asyncio.run(scenario())


def test_a_body_that_breaks_is_resumed_from_the_last_byte_received() -> None:
    async def cut(writer: asyncio.StreamWriter, first: int, last: int) -> bool:
        writer.write(_partial(first, last) + PAYLOAD[first : first + 700])
        return False  # the connection drops 700 bytes into the body

    async def scenario() -> None:
        server = ScriptedServer(cut, cut, _whole)
        async with serving(server) as url:
            endpoint = url.split("/bucket-name")[0]
            retry = RetryPolicy(max_attempts=5, base_s=0.01, cap_s=0.02)
            async with S3Source(_settings(endpoint), max_connections=2, retry=retry) as source:
                info = ObjectInfo(f"s3://{BUCKET}/key", len(PAYLOAD), '"v1"')
                assert await _read(source, info, 1000, 5000) == PAYLOAD[1000:6000]
                assert source.lean is not None and source.lean.statistics().broken == 2
                assert source.fallbacks == 0
        asked = [re.search(r"Range: bytes=(\d+)-(\d+)", r).groups() for r in server.requests]  # type: ignore[union-attr]
        assert asked == [("1000", "5999"), ("1700", "5999"), ("2400", "5999")]

    asyncio.run(scenario())


def test_the_botocore_path_reads_the_same_bytes(s3_server: EmbeddedS3, moto_url: str) -> None:
    async def scenario() -> None:
        async with S3Source(_settings(s3_server.endpoint_url), max_connections=4, lean=False) as source:
            assert source.lean is None
            info = await source.stat(moto_url)
            results = await asyncio.gather(*(_read(source, info, a, n) for a, n in RANGES))
            assert all(data == PAYLOAD[a : a + n] for (a, n), data in zip(RANGES, results, strict=True))

    asyncio.run(scenario())


def test_tries_that_make_progress_do_not_use_up_the_attempts() -> None:
    async def cut(writer: asyncio.StreamWriter, first: int, last: int) -> bool:
        writer.write(_partial(first, last) + PAYLOAD[first : first + 500])
        return False

    async def scenario() -> None:
        async with serving(ScriptedServer(*[cut] * 6, _whole)) as url:  # six breaks, each after 500 new bytes
            retry = RetryPolicy(max_attempts=2, base_s=0.001, cap_s=0.002)
            async with S3Source(_settings(url.split("/bucket-name")[0]), max_connections=2, retry=retry) as source:
                info = ObjectInfo(f"s3://{BUCKET}/key", len(PAYLOAD), '"v1"')
                assert await _read(source, info, 0, 5000) == PAYLOAD[:5000]

    asyncio.run(scenario())


def test_tries_that_bring_nothing_give_up_after_max_attempts() -> None:
    async def nothing(writer: asyncio.StreamWriter, first: int, last: int) -> bool:
        writer.write(_partial(first, last))
        return False

    async def scenario() -> None:
        server = ScriptedServer(*[nothing] * 10)
        async with serving(server) as url:
            retry = RetryPolicy(max_attempts=3, base_s=0.001, cap_s=0.002)
            async with S3Source(_settings(url.split("/bucket-name")[0]), max_connections=2, retry=retry) as source:
                info = ObjectInfo(f"s3://{BUCKET}/key", len(PAYLOAD), '"v1"')
                with pytest.raises(
                    SourceUnavailable, match="failed 3 times; gave up because 3 tries in a row brought no new byte"
                ) as err:
                    await _read(source, info, 100, 5000)
                assert err.value.offset == 100
        assert len(server.requests) == 3

    asyncio.run(scenario())
