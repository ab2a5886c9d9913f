"""`S3Source`'s retry loop on a fake clock, against a server scripted to answer each try as S3 can.

The source sleeps through the `FakeClock` it is given, so each test checks the exact delays a seeded
random source draws, and none waits for them.
"""

from __future__ import annotations

import asyncio
import random
import re
from dataclasses import replace

import pytest

from prefetchd.fetch.policy import RetryPolicy
from prefetchd.fetch.s3 import S3Source
from prefetchd.fetch.source import ObjectInfo
from prefetchd_client.errors import AccessDenied, ObjectChanged, ObjectNotFound, PrefetchdError, SourceUnavailable
from tests.conftest import BUCKET
from tests.fetch.test_lean_s3 import PAYLOAD, _partial, _read, _settings, _whole
from tests.fetch.test_range_get import Reply, ScriptedServer, serving

INFO = ObjectInfo(f"s3://{BUCKET}/key", len(PAYLOAD), '"v1"')


class FakeClock:
    """Stands in for `asyncio.sleep`: notes each delay, advances its own time by it, and returns at once."""

    def __init__(self) -> None:
        self.now = 0.0
        self.delays: list[float] = []

    async def sleep(self, delay_s: float) -> None:
        self.delays.append(delay_s)
        self.now += delay_s
        await asyncio.sleep(0)


def error(status: int, reason: str, code: str) -> Reply:
    """A reply with S3's XML error document."""
    body = f"<Error><Code>{code}</Code><Message>scripted {code}</Message></Error>".encode()

    async def reply(writer: asyncio.StreamWriter, first: int, last: int) -> bool:
        head = f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\nContent-Length: {len(body)}\r\n\r\n"
        writer.write(head.encode() + body)
        return True

    return reply


SLOW_DOWN = error(503, "Slow Down", "SlowDown")


async def cut_after_700(writer: asyncio.StreamWriter, first: int, last: int) -> bool:
    writer.write(_partial(first, last) + PAYLOAD[first : first + 700])
    return False


def source(url: str, clock: FakeClock, retry: RetryPolicy, *, seed: int = 42, lean: bool = True) -> S3Source:
    endpoint = url.split("/bucket-name")[0]
    return S3Source(
        _settings(endpoint), max_connections=2, retry=retry, rng=random.Random(seed), sleep=clock.sleep, lean=lean
    )


@pytest.mark.parametrize("lean", [True, False], ids=["lean", "botocore"])
def test_the_delays_before_each_retry_are_exactly_the_seeded_schedule(lean: bool) -> None:
    clock = FakeClock()
    retry = RetryPolicy(max_attempts=5, base_s=0.5, cap_s=3.0)

    async def scenario() -> None:
        async with (
            serving(ScriptedServer(SLOW_DOWN, SLOW_DOWN, SLOW_DOWN, SLOW_DOWN, _whole)) as url,
            source(url, clock, retry, seed=42, lean=lean) as s3,
        ):
            assert await _read(s3, INFO, 10, 100) == PAYLOAD[10:110]
            assert (s3.statistics().throttled, s3.statistics().retries) == (4, 4)

    asyncio.run(scenario())
    rng = random.Random(42)
    assert clock.delays == [rng.uniform(0, 0.5), rng.uniform(0, 1.0), rng.uniform(0, 2.0), rng.uniform(0, 3.0)]


def test_a_broken_body_resumes_after_the_first_delay_and_a_throttle_after_the_second() -> None:
    clock = FakeClock()
    server = ScriptedServer(cut_after_700, cut_after_700, SLOW_DOWN, _whole)

    async def scenario() -> None:
        async with serving(server) as url, source(url, clock, RetryPolicy(base_s=1.0, cap_s=100.0), seed=5) as s3:
            assert await _read(s3, INFO, 1000, 5000) == PAYLOAD[1000:6000]
            stats = s3.statistics()
            assert (stats.broken, stats.throttled, stats.retries, stats.lean_fallbacks) == (2, 1, 3, 0)

    asyncio.run(scenario())
    rng = random.Random(5)
    # each break brought bytes, so the attempts started afresh; the 503 after them is the second in a row
    assert clock.delays == [rng.uniform(0, 1.0), rng.uniform(0, 1.0), rng.uniform(0, 2.0)]
    asked = [re.search(r"Range: bytes=(\d+)-", r).group(1) for r in server.requests]  # type: ignore[union-attr]
    assert asked == ["1000", "1700", "2400", "2400"]


@pytest.mark.parametrize("lean", [True, False], ids=["lean", "botocore"])
def test_a_status_that_keeps_failing_is_tried_max_attempts_times(lean: bool) -> None:
    clock = FakeClock()
    server = ScriptedServer(*[error(500, "Internal Server Error", "InternalError")] * 10)

    async def scenario() -> None:
        async with serving(server) as url, source(url, clock, RetryPolicy(max_attempts=3), lean=lean) as s3:
            with pytest.raises(SourceUnavailable, match=r"failed 3 times.*max_attempts 3.*HTTP 500") as caught:
                await _read(s3, INFO, 0, 10)
            assert caught.value.offset == 0

    asyncio.run(scenario())
    assert len(server.requests) == 3 and len(clock.delays) == 2


def test_a_slow_down_is_retried_on_the_lean_path_and_lowers_the_bucket_s_limit() -> None:
    """A 503 used to send the range through aiobotocore: now the lean path backs off and tries again itself."""
    clock = FakeClock()
    server = ScriptedServer(SLOW_DOWN, _whole, _whole)

    async def scenario() -> None:
        async with serving(server) as url, source(url, clock, RetryPolicy()) as s3:
            assert await _read(s3, INFO, 0, 100) == PAYLOAD[:100]
            assert await _read(s3, INFO, 100, 100) == PAYLOAD[100:200]
            stats = s3.statistics()
            assert stats.lean_fallbacks == 0
            limit = stats.bucket(BUCKET).limit
            # 1 in flight when the 503 came: the limit fell to the floor, and two successes made it 2
            assert (limit.ceiling, limit.lowest, limit.limit, limit.decreases) == (16, 1, 2, 1)

    asyncio.run(scenario())
    assert ["X-Amz-Signature=" in request.split("\r\n")[0] for request in server.requests] == [True, True, True]
    assert len(clock.delays) == 1


def test_once_the_shared_budget_is_spent_reads_fail_without_retrying() -> None:
    clock = FakeClock()
    server = ScriptedServer(*[SLOW_DOWN] * 10)

    async def scenario() -> None:
        async with serving(server) as url, source(url, clock, RetryPolicy(max_attempts=10, budget_retries=2)) as s3:
            with pytest.raises(SourceUnavailable, match="failed 3 times; gave up because the retry budget is spent"):
                await _read(s3, INFO, 0, 10)
            with pytest.raises(SourceUnavailable, match="failed once; gave up because the retry budget"):
                await _read(s3, INFO, 10, 10)
            assert s3.statistics().retry_budget_left == 0.0

    asyncio.run(scenario())
    assert len(server.requests) == 3 + 1 and len(clock.delays) == 2


NOT_RETRIED = [
    (403, "Forbidden", "AccessDenied", AccessDenied),
    (404, "Not Found", "NoSuchKey", ObjectNotFound),
    (412, "Precondition Failed", "PreconditionFailed", ObjectChanged),
    (416, "Requested Range Not Satisfiable", "InvalidRange", ObjectChanged),
]


@pytest.mark.parametrize("lean", [True, False], ids=["lean", "botocore"])
@pytest.mark.parametrize(("status", "reason", "code", "raised"), NOT_RETRIED, ids=[str(s[0]) for s in NOT_RETRIED])
def test_403_404_412_and_416_fail_at_once_without_a_retry(
    status: int, reason: str, code: str, raised: type[PrefetchdError], lean: bool
) -> None:
    clock = FakeClock()
    server = ScriptedServer(*[error(status, reason, code)] * 5)

    async def scenario() -> None:
        async with serving(server) as url, source(url, clock, RetryPolicy(max_attempts=5), lean=lean) as s3:
            with pytest.raises(raised, match=f"HTTP {status}"):
                await _read(s3, INFO, 0, 10)
            assert s3.statistics().retries == 0

    asyncio.run(scenario())
    # the lean path does not read error documents: aiobotocore asks once more, to learn the code
    assert len(server.requests) == (2 if lean else 1)
    assert clock.delays == []


def test_an_expired_token_given_as_a_variable_is_a_clear_error_at_once() -> None:
    clock = FakeClock()
    server = ScriptedServer(*[error(400, "Bad Request", "ExpiredToken")] * 5)

    async def scenario() -> None:
        async with serving(server) as url:
            settings = replace(_settings(url.split("/bucket-name")[0]), session_token="old")
            async with S3Source(settings, max_connections=2, sleep=clock.sleep) as s3:
                with pytest.raises(AccessDenied, match=r"session token has expired .*S3_SESSION_TOKEN"):
                    await _read(s3, INFO, 0, 10)
                assert s3.statistics().expired_token == 1

    asyncio.run(scenario())
    assert clock.delays == []
