"""`S3Source` races a GET that runs far behind its peers, behind the fault proxy in front of moto.

The proxy pauses one GET's body partway for 2 s and then sends the rest *inverted* (`pause_garbles`): a GET
that is let write after the pause puts garbage in the buffer. The hedge asks for the unreceived tail on a
fresh connection and is not paused, so it wins; the buffer must then hold the object's bytes, and still
hold them once the proxy has sent (or tried to send) the paused GET's garbage: the loser was cancelled, and
wrote nothing after. Without hedging the same kind of pause does put garbage in the buffer, so the check
is one a loser that kept writing would fail.

Which GETs pause is the fault plan's seeded decision, known in advance: the seed is chosen so that the
slow GET pauses and its hedge does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Iterator
from dataclasses import replace

import pytest

from prefetchd.config import S3Settings
from prefetchd.fetch.hedge import HedgePolicy
from prefetchd.fetch.policy import RetryPolicy
from prefetchd.fetch.s3 import S3Source
from prefetchd.testing.embedded_s3 import CREDENTIALS, EmbeddedS3
from prefetchd.testing.fault_plan import Fault, FaultRates, decide, request_key
from prefetchd.testing.fault_proxy import FaultProxy
from tests.conftest import BUCKET

PAYLOAD = random.Random(12).randbytes(1 << 20)
KEY = "hedging/payload.bin"
URL = f"s3://{BUCKET}/{KEY}"
TARGET = (64 << 10, 256 << 10)  # the range that is slow: start, size
CONTROL = (512 << 10, 256 << 10)  # the range read with no hedge
WARM_UP = 6  # reads of TARGET before the pause: its size class's times (min_samples 5)
PAUSED = FaultRates(pause=0.5, pause_ms=2000, pause_garbles=True)
POLICY = HedgePolicy(min_samples=5, min_delay_s=0.05, burst=2.0)
QUICK = RetryPolicy(max_attempts=3, base_s=0.001, cap_s=0.004)


def _key(start: int, size: int) -> str:
    return request_key("GET", f"/{BUCKET}/{KEY}", f"bytes={start}-{start + size - 1}")


def _seed() -> tuple[int, int]:
    """A seed under which TARGET's read after the warm-up pauses, its hedge (the tail past the pause) does
    not, and CONTROL's first read pauses; and where the pause cuts TARGET."""
    start, size = TARGET
    for seed in range(10_000):
        decision = decide(PAUSED, seed, _key(start, size), WARM_UP + 1)
        if decision.fault is not Fault.PAUSE:
            continue
        cut = decision.cut_bytes(size)
        if (
            decide(PAUSED, seed, _key(start + cut, size - cut), 1).fault is None
            and decide(PAUSED, seed, _key(*CONTROL), 1).fault is Fault.PAUSE
        ):
            return seed, cut
    raise AssertionError("no seed fits: change TARGET or CONTROL")


SEED, CUT = _seed()


@pytest.fixture(scope="module")
def stored(s3_server: EmbeddedS3) -> None:
    client = s3_server.client()
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket=BUCKET)
    client.put_object(Bucket=BUCKET, Key=KEY, Body=PAYLOAD)


@pytest.fixture
def proxy(s3_server: EmbeddedS3, stored: None) -> Iterator[FaultProxy]:
    with FaultProxy(s3_server.endpoint_url, FaultRates(), seed=SEED) as running:
        yield running


def s3_source(endpoint: str, *, lean: bool, hedge: HedgePolicy | None) -> S3Source:
    settings = S3Settings(endpoint_url=endpoint, region="us-east-1", addressing_style="path")
    settings = replace(settings, access_key_id="AKIATEST", secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"])
    return S3Source(settings, max_connections=4, lean=lean, retry=QUICK, hedge=hedge)


async def _pauses_ended(proxy: FaultProxy, count: int) -> None:
    """Until the proxy has ended `count` paused answers: sent their rest, or found their client gone."""
    deadline = time.monotonic() + 60
    while (await asyncio.to_thread(proxy.counts)).pause_ended < count:
        assert time.monotonic() < deadline, "the paused answer never ended"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("lean", [pytest.param(True, id="lean"), pytest.param(False, id="botocore")])
def test_a_slow_get_is_raced_for_its_tail_and_the_loser_writes_nothing_after(proxy: FaultProxy, lean: bool) -> None:
    start, size = TARGET
    expected = PAYLOAD[start : start + size]

    async def scenario() -> None:
        async with s3_source(proxy.endpoint_url, lean=lean, hedge=POLICY) as source:
            info = await source.stat(URL)
            out = bytearray(size)
            for _ in range(WARM_UP):
                await source.read_range(info, start, memoryview(out))
            assert source.statistics().hedges.started == 0, "nothing was slow yet"
            proxy.set_rates(PAUSED)
            out[:] = bytes(size)
            await source.read_range(info, start, memoryview(out))
            assert out == expected, "the hedge's bytes, and the first request's before the pause"
            hedges = source.statistics().hedges
            assert (hedges.started, hedges.won, hedges.lost, hedges.failed) == (1, 1, 0, 0)
            assert source.statistics().hedge_bytes == size - CUT, "the hedge asked only for the tail"

            await _pauses_ended(proxy, 1)  # the garbled rest has gone out, or found the connection closed
            await asyncio.sleep(0)
            assert out == expected, "nothing wrote into the buffer after the race"

    asyncio.run(scenario())
    counts = proxy.counts()
    assert counts.pause == counts.pause_ended == 1 and counts.object_gets == WARM_UP + 2
    assert any(line.startswith(f"pause: {_key(*TARGET)} #{WARM_UP + 1}") for line in proxy.recent())


def test_without_a_hedge_the_paused_get_s_garbled_rest_lands_in_the_buffer(proxy: FaultProxy) -> None:
    """The control: the check above would see a loser that wrote after the pause."""
    start, size = CONTROL

    async def scenario() -> None:
        async with s3_source(proxy.endpoint_url, lean=True, hedge=None) as source:
            info = await source.stat(URL)
            proxy.set_rates(PAUSED)
            out = bytearray(size)
            await source.read_range(info, start, memoryview(out))
            assert source.statistics().hedges.started == 0
            expected = PAYLOAD[start : start + size]
            cut = decide(PAUSED, SEED, _key(start, size), 1).cut_bytes(size)
            assert out[:cut] == expected[:cut]
            assert out[cut:] == bytes(255 - b for b in expected[cut:]), "the paused GET wrote the garbled rest"

    asyncio.run(scenario())
