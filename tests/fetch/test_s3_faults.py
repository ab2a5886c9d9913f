"""`S3Source` behind the fault proxy, in front of moto: SlowDown lowers the bucket's limit and it recovers, a
stalled body is read again, an expired session token is renewed. Both ways of reading (lean, aiobotocore).

Every read is checked byte for byte; the proxy's counts prove the faults happened, the source's statistics
what it did about them. Backoff sleeps through a clock that returns at once, so no test waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from prefetchd.config import S3Settings
from prefetchd.fetch.policy import RetryPolicy
from prefetchd.fetch.s3 import S3Source
from prefetchd.fetch.source import ObjectInfo
from prefetchd.testing.credential_server import CredentialServer
from prefetchd.testing.embedded_s3 import CREDENTIALS, EmbeddedS3
from prefetchd.testing.fault_plan import FaultRates
from prefetchd.testing.fault_proxy import FaultProxy
from prefetchd_client.errors import AccessDenied
from tests.conftest import BUCKET
from tests.fetch.test_s3_retries import FakeClock

PAYLOAD = random.Random(6).randbytes(1 << 20)
KEY = "faults/payload.bin"
URL = f"s3://{BUCKET}/{KEY}"
RANGE_BYTES = 32 << 10
RANGES = [(start, RANGE_BYTES) for start in range(0, len(PAYLOAD), RANGE_BYTES)]  # 32 of them
QUICK = RetryPolicy(max_attempts=8, base_s=0.001, cap_s=0.004)
PATHS = [pytest.param(True, id="lean"), pytest.param(False, id="botocore")]


@pytest.fixture(scope="module")
def proxy(s3_server: EmbeddedS3) -> Iterator[FaultProxy]:
    client = s3_server.client()
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket=BUCKET)
    client.put_object(Bucket=BUCKET, Key=KEY, Body=PAYLOAD)
    with FaultProxy(s3_server.endpoint_url, FaultRates(), seed=11) as running:
        yield running


@pytest.fixture
def faults(proxy: FaultProxy) -> Iterator[FaultProxy]:
    """The proxy, with no faults until the test sets some, and none after it."""
    proxy.set_rates(FaultRates())
    yield proxy
    proxy.set_rates(FaultRates())


def s3_source(endpoint: str, lean: bool, *, chain: bool = False, stall_timeout_s: float = 10.0) -> S3Source:
    """A source with quick retries on a clock that returns at once, the same limit's ceiling on both paths (8 lean
    connections per pooled one), and keys given as variables would give them, or none (`chain`): the AWS
    credential chain finds them."""
    given = S3Settings(endpoint_url=endpoint, region="us-east-1", addressing_style="path")
    if not chain:
        given = replace(given, access_key_id="AKIATEST", secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"])
    return S3Source(
        given,
        max_connections=2 if lean else 16,
        lean=lean,
        retry=QUICK,
        rng=random.Random(3),
        sleep=FakeClock().sleep,
        stall_timeout_s=stall_timeout_s,
    )


async def read_all(source: S3Source, info: ObjectInfo, ranges: list[tuple[int, int]] = RANGES) -> None:
    """Read `ranges` all at once, and check every byte."""

    async def one(start: int, size: int) -> None:
        out = bytearray(size)
        await source.read_range(info, start, memoryview(out))
        assert out == PAYLOAD[start : start + size], f"bytes {start}+{size}"

    async with asyncio.TaskGroup() as group:
        for start, size in ranges:
            group.create_task(one(start, size))


@pytest.mark.parametrize("lean", PATHS)
def test_slow_down_lowers_the_bucket_s_limit_and_successes_bring_it_back(faults: FaultProxy, lean: bool) -> None:
    async def scenario() -> None:
        async with s3_source(faults.endpoint_url, lean) as source:
            info = await source.stat(URL)
            ceiling = source.max_in_flight
            before = faults.counts()
            faults.set_rates(FaultRates(slowdown=0.3))
            await read_all(source, info)
            throttled = source.statistics()
            limit = throttled.bucket(BUCKET).limit
            assert throttled.throttled == faults.counts().since(before).slowdown > 0
            assert limit.decreases >= 1 and limit.lowest <= ceiling // 2, limit

            faults.set_rates(FaultRates())
            rounds = 0
            while source.statistics().bucket(BUCKET).limit.limit < ceiling:
                # from the floor, 1 + 2 + ... + 15 successes: four rounds of 32 ranges at most
                assert rounds < 4, source.statistics().bucket(BUCKET)
                await read_all(source, info)
                rounds += 1
            recovered = source.statistics().bucket(BUCKET).limit
            assert recovered.limit == ceiling and recovered.decreases == limit.decreases

    asyncio.run(scenario())


@pytest.mark.parametrize("lean", PATHS)
def test_a_stalled_body_is_dropped_and_read_again_from_where_it_stopped(faults: FaultProxy, lean: bool) -> None:
    async def scenario() -> None:
        async with s3_source(faults.endpoint_url, lean, stall_timeout_s=0.3) as source:
            info = await source.stat(URL)
            before = faults.counts()
            faults.set_rates(FaultRates(stall=0.25))
            await read_all(source, info, RANGES[:12])
            stalls = faults.counts().since(before).stall
            assert stalls > 0
            stats = source.statistics()
            assert stats.broken == stalls and stats.retries == stalls
            if source.lean is not None:  # each stalled connection was dropped, not used again
                assert source.lean.statistics().broken == stalls

    asyncio.run(scenario())


@pytest.fixture
def container_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[CredentialServer]:
    """Temporary credentials from a container endpoint, and nothing else in the chain that could answer."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with CredentialServer() as server:
        for name, value in server.environment().items():
            monkeypatch.setenv(name, value)
        yield server


@pytest.mark.parametrize("lean", PATHS)
def test_an_expired_session_token_is_renewed_and_the_reads_go_on(
    faults: FaultProxy, container_credentials: CredentialServer, lean: bool
) -> None:
    async def scenario() -> None:
        async with s3_source(faults.endpoint_url, lean, chain=True) as source:
            info = await source.stat(URL)
            await read_all(source, info, RANGES[:4])
            assert container_credentials.served == 1
            before = faults.counts()

            faults.expire_token(container_credentials.token)  # S3 now refuses it, and the endpoint has a new one
            container_credentials.rotate()
            assert await source.stat(URL) == info  # a HEAD meets it first: its 400 has no code, still renewed
            await read_all(source, info)

            stats = source.statistics()
            assert stats.credential_renewals == 1 and container_credentials.served == 2
            assert stats.expired_token >= 1 and faults.counts().since(before).expired_token >= 1

    asyncio.run(scenario())


def test_a_token_the_chain_cannot_replace_fails_the_read_with_what_to_check(
    faults: FaultProxy, container_credentials: CredentialServer
) -> None:
    async def scenario() -> None:
        async with s3_source(faults.endpoint_url, True, chain=True) as source:
            info = await source.stat(URL)
            faults.expire_token(container_credentials.token)  # and the endpoint keeps handing it out
            with pytest.raises(AccessDenied, match=r"session token has expired \(HTTP 400 ExpiredToken.*gave no new"):
                await source.read_range(info, 0, memoryview(bytearray(RANGE_BYTES)))
            assert source.statistics().credential_renewals == 0
            assert container_credentials.served == 1 + QUICK.max_attempts  # asked again before each try

    asyncio.run(scenario())


def test_an_expired_token_given_in_the_variables_is_not_retried(faults: FaultProxy) -> None:
    async def scenario() -> None:
        given = S3Settings(
            endpoint_url=faults.endpoint_url,
            region="us-east-1",
            addressing_style="path",
            access_key_id="AKIATEST",
            secret_access_key="secret",
            session_token="token-from-the-environment",
        )
        async with S3Source(given, max_connections=2, retry=QUICK) as source:
            info = await source.stat(URL)
            faults.expire_token("token-from-the-environment")
            with pytest.raises(AccessDenied, match="cannot renew a token given in S3_SESSION_TOKEN/AWS_SESSION_TOKEN"):
                await source.read_range(info, 0, memoryview(bytearray(RANGE_BYTES)))
            assert source.statistics().retries == 0

    asyncio.run(scenario())
