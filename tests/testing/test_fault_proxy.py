"""The fault proxy breaks object GETs as its seed and rates say, each fault as a plain client sees it, and counts them.

The decisions are tested without a server; the faults themselves with botocore (the errors) and the standard
library's HTTP client (the bodies: a reset is an RST after part of the body, a truncation a clean close).
"""

from __future__ import annotations

import http.client
import random
import re
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from prefetchd.testing.embedded_s3 import EmbeddedS3
from prefetchd.testing.fault_plan import (
    Decision,
    Fault,
    FaultCounts,
    FaultPlan,
    FaultRates,
    decide,
    is_object_get,
    request_key,
)
from prefetchd.testing.fault_proxy import FaultProxy
from tests.conftest import BUCKET

BODY = bytes(range(256)) * 4096  # 1 MiB
KEY = "fault-proxy/object"

# the decisions, with no server


def test_the_same_seed_replays_the_same_faults_whatever_the_arrival_order() -> None:
    rates = FaultRates(slowdown=0.2, internal_error=0.1, reset=0.2, truncate=0.2, latency=0.5, jitter_ms=50)
    requests = [request_key("GET", "/b/k", f"bytes={i}-{i + 9}") for i in range(0, 2000, 10)] * 3
    shuffled = random.Random(1).sample(requests, len(requests))

    def decisions(order: list[str], seed: int) -> dict[tuple[str, int], Decision]:
        plan = FaultPlan(rates, seed)
        return {(r, occurrence): decision for r in order for decision, occurrence in [plan.next_decision(r)]}

    assert decisions(requests, 7) == decisions(shuffled, 7)
    assert decisions(requests, 7) != decisions(requests, 8)


def test_a_retried_request_gets_a_fresh_draw() -> None:
    plan = FaultPlan(FaultRates(slowdown=0.5), seed=3)
    fates = [plan.next_decision("GET /b/k bytes=0-9")[0].fault for _ in range(40)]
    assert set(fates) == {Fault.SLOWDOWN, None}


def test_each_fault_comes_at_its_rate_and_the_delay_within_its_jitter() -> None:
    rates = FaultRates(
        slowdown=0.05, internal_error=0.02, reset=0.02, truncate=0.03, latency=0.3, latency_ms=10, jitter_ms=20
    )
    decisions = [decide(rates, 11, f"GET /b/k bytes={i}-", 1) for i in range(20_000)]
    shares = Counter(d.fault for d in decisions)
    for fault in Fault:
        assert shares[fault] / len(decisions) == pytest.approx(rates.of(fault), abs=0.006), fault
    delays = [d.delay_s for d in decisions if d.delay_s]
    assert len(delays) / len(decisions) == pytest.approx(0.3, abs=0.015)
    assert 0.010 <= min(delays) < 0.011 and 0.029 < max(delays) <= 0.030


def test_a_cut_leaves_at_least_one_byte_on_each_side() -> None:
    assert Decision(Fault.RESET, 0.0, 0.0).cut_bytes(2) == 1
    assert Decision(Fault.RESET, 0.0, 0.999999).cut_bytes(2) == 1
    assert Decision(Fault.TRUNCATE, 0.0, 0.999999).cut_bytes(1000) == 999
    assert Decision(Fault.TRUNCATE, 0.0, 0.5).cut_bytes(1001) == 501
    with pytest.raises(ValueError, match="no inside"):
        Decision(Fault.TRUNCATE, 0.0, 0.5).cut_bytes(1)


@pytest.mark.parametrize(
    ("rates", "words"),
    [
        ({"slowdown": 1.5}, "within"),
        ({"reset": -0.1}, "within"),
        ({"slowdown": 0.6, "truncate": 0.6}, "sum to at most 1"),
        ({"jitter_ms": -1.0}, "negative"),
    ],
)
def test_rates_that_cannot_hold_are_refused(rates: dict[str, float], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        FaultRates(**rates)


def test_object_gets_are_told_from_other_requests() -> None:
    signed = {"X-Amz-Algorithm": "AWS4-HMAC-SHA256", "X-Amz-Signature": "ab", "X-Amz-Expires": "3600"}
    assert is_object_get("GET", "/bucket/key", {})
    assert is_object_get("GET", "/bucket/a/b/c.rec", signed)
    assert is_object_get("GET", "/bucket/key", {"AWSAccessKeyId": "k", "Signature": "s", "Expires": "1"})
    assert not is_object_get("HEAD", "/bucket/key", {})
    assert not is_object_get("PUT", "/bucket/key", {})
    assert not is_object_get("GET", "/bucket", {"list-type": "2"})
    assert not is_object_get("GET", "/bucket/", {})
    assert not is_object_get("GET", "/bucket/key", {"tagging": ""})
    assert not is_object_get("GET", "/__faults__", {})
    assert request_key("GET", "/bucket/key", None) != request_key("GET", "/bucket/key", "bytes=0-9")


def test_counts_since_an_earlier_reading() -> None:
    earlier = FaultCounts(object_gets=10, slowdown=1)
    now = FaultCounts.from_mapping({"object_gets": 25, "slowdown": 3, "reset": 1})
    assert now.since(earlier) == FaultCounts(object_gets=15, slowdown=2, reset=1)
    assert now.of(Fault.RESET) == 1


# the faults, as plain clients see them


@pytest.fixture(scope="module")
def stored_object(s3_server: EmbeddedS3, fashion_urls: dict[str, str]) -> str:
    """The 1 MiB object, in the bucket `fashion_urls` creates."""
    s3_server.client().put_object(Bucket=BUCKET, Key=KEY, Body=BODY)
    return KEY


def _botocore_client(endpoint_url: str, token: str | None = None, **config: Any) -> Any:
    import botocore.config
    import botocore.session

    return botocore.session.get_session().create_client(
        "s3",
        endpoint_url=endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="k",
        aws_secret_access_key="s",
        aws_session_token=token,
        config=botocore.config.Config(**config),
    )


@pytest.fixture
def proxy(request: pytest.FixtureRequest, s3_server: EmbeddedS3, stored_object: str) -> Iterator[FaultProxy]:
    with FaultProxy(s3_server.endpoint_url, request.param, seed=5) as running:
        yield running


def _presigned_get(
    proxy: FaultProxy, headers: dict[str, str], *, token: str | None = None, timeout_s: float = 10.0
) -> tuple[http.client.HTTPResponse, bytes, OSError | None]:
    """GET the object through `proxy` (a presigned URL, as the daemon's bulk reads are) and read until the
    connection ends: the response, the body bytes that came, and the error that ended it (None: a clean close)."""
    url = _botocore_client(proxy.endpoint_url, token).generate_presigned_url(
        "get_object", Params={"Bucket": BUCKET, "Key": KEY}
    )
    parts = urllib.parse.urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout_s)
    connection.request("GET", f"{parts.path}?{parts.query}", headers=headers)
    response = connection.getresponse()
    received = b""
    try:
        while piece := response.read1(65536):
            received += piece
    except OSError as exc:
        return response, received, exc
    finally:
        connection.close()
    return response, received, None


@pytest.mark.parametrize(
    ("proxy", "fault", "status", "code"),
    [
        (FaultRates(slowdown=1.0), Fault.SLOWDOWN, 503, "SlowDown"),
        (FaultRates(internal_error=1.0), Fault.INTERNAL_ERROR, 500, "InternalError"),
    ],
    indirect=["proxy"],
    ids=["slowdown", "internal-error"],
)
def test_errors_come_as_s3_sends_them_and_only_on_object_gets(
    proxy: FaultProxy, fault: Fault, status: int, code: str
) -> None:
    import botocore.exceptions

    client = _botocore_client(proxy.endpoint_url, retries={"mode": "standard", "total_max_attempts": 1})
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        client.get_object(Bucket=BUCKET, Key=KEY, Range="bytes=0-99")
    assert caught.value.response["Error"]["Code"] == code
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == status
    # what is not an object GET passes through untouched
    assert client.head_object(Bucket=BUCKET, Key=KEY)["ContentLength"] == len(BODY)
    listed = client.list_objects_v2(Bucket=BUCKET, Prefix="fault-proxy/")
    assert [item["Key"] for item in listed["Contents"]] == [KEY]
    assert proxy.counts() == FaultCounts(object_gets=1, **{fault.value: 1})
    assert proxy.recent() == [f"{fault.value}: GET /{BUCKET}/{KEY} bytes=0-99 #1"]


@pytest.mark.parametrize("proxy", [FaultRates(reset=1.0)], indirect=True, ids=["reset"])
def test_a_reset_sends_part_of_the_body_then_an_rst(proxy: FaultProxy) -> None:
    response, received, error = _presigned_get(proxy, {"Range": "bytes=1000-"})
    assert response.status == 206
    assert int(response.headers["Content-Length"]) == len(BODY) - 1000
    assert 0 < len(received) < len(BODY) - 1000
    assert received == BODY[1000 : 1000 + len(received)], "what came is the object's bytes"
    assert isinstance(error, ConnectionResetError), "an RST, not a clean close"
    assert proxy.counts() == FaultCounts(object_gets=1, reset=1)
    sent = re.fullmatch(rf".* after (\d+) of {len(BODY) - 1000} bytes", proxy.recent()[0])
    assert sent is not None
    assert len(received) <= int(sent.group(1)), "an RST may discard what was in flight, never add to it"


@pytest.mark.parametrize("proxy", [FaultRates(truncate=1.0)], indirect=True, ids=["truncate"])
def test_a_truncation_announces_the_whole_body_then_closes_short(proxy: FaultProxy) -> None:
    response, received, error = _presigned_get(proxy, {})
    assert response.status == 200 and int(response.headers["Content-Length"]) == len(BODY)
    assert 0 < len(received) < len(BODY)
    assert received == BODY[: len(received)]
    assert error is None, "a clean close short of Content-Length, not an RST"
    assert proxy.counts() == FaultCounts(object_gets=1, truncate=1)


@pytest.mark.parametrize(
    "proxy", [FaultRates(latency=1.0, latency_ms=200, jitter_ms=100)], indirect=True, ids=["200ms+U(0,100ms)"]
)
def test_first_bytes_wait_the_latency_and_its_jitter(proxy: FaultProxy) -> None:
    client = _botocore_client(proxy.endpoint_url)
    # a HEAD goes through undelayed: the client's one-time costs (its service model, the connection) are
    # paid here, not in the first timed GET (0.57 s once in CI on 2 busy cores)
    client.head_object(Bucket=BUCKET, Key=KEY)
    waits = []
    for first in range(0, 3000, 1000):
        started = time.monotonic()
        body = client.get_object(Bucket=BUCKET, Key=KEY, Range=f"bytes={first}-{first + 999}")["Body"].read()
        waits.append(time.monotonic() - started)
        assert body == BODY[first : first + 1000]
    assert all(0.2 <= wait < 0.3 + 0.25 for wait in waits), waits
    assert proxy.counts() == FaultCounts(object_gets=3, delayed=3)


@pytest.mark.parametrize("proxy", [FaultRates(stall=1.0)], indirect=True, ids=["stall"])
def test_a_stall_sends_part_of_the_body_then_nothing_on_an_open_connection(proxy: FaultProxy) -> None:
    response, received, error = _presigned_get(proxy, {"Range": "bytes=100-"}, timeout_s=0.5)
    assert response.status == 206 and int(response.headers["Content-Length"]) == len(BODY) - 100
    assert 0 < len(received) < len(BODY) - 100
    assert received == BODY[100 : 100 + len(received)]
    assert isinstance(error, TimeoutError), "the connection stays open and silent: only the reader's timeout ends it"
    assert proxy.counts() == FaultCounts(object_gets=1, stall=1)


@pytest.mark.parametrize(
    ("proxy", "garbled"),
    [(FaultRates(pause=1.0, pause_ms=50), False), (FaultRates(pause=1.0, pause_ms=50, pause_garbles=True), True)],
    indirect=["proxy"],
    ids=["pause", "pause-garbles"],
)
def test_a_pause_sends_part_of_the_body_waits_then_sends_the_rest(proxy: FaultProxy, garbled: bool) -> None:
    response, received, error = _presigned_get(proxy, {"Range": "bytes=100-"})
    assert response.status == 206 and error is None
    expected = BODY[100:]
    assert len(received) == len(expected), "a pause delays the body; it neither cuts nor breaks it"
    assert proxy.counts() == FaultCounts(object_gets=1, pause=1, pause_ended=1)
    cut = re.fullmatch(r".* after (\d+) bytes.*", proxy.recent()[0])
    assert cut is not None
    before = int(cut.group(1))
    assert 0 < before < len(expected)
    assert received[:before] == expected[:before]
    rest = bytes(255 - b for b in expected[before:]) if garbled else expected[before:]
    assert received[before:] == rest, "the rest inverted" if garbled else "the rest as it is"


@pytest.mark.parametrize("proxy", [FaultRates()], indirect=True, ids=["no-faults"])
def test_requests_signed_with_an_expired_token_are_refused_as_s3_refuses_them(proxy: FaultProxy) -> None:
    import botocore.exceptions

    expired = _botocore_client(proxy.endpoint_url, "old-token", retries={"total_max_attempts": 1})
    fresh = _botocore_client(proxy.endpoint_url, "new-token")
    assert expired.get_object(Bucket=BUCKET, Key=KEY, Range="bytes=0-9")["Body"].read() == BODY[:10]

    proxy.expire_token("old-token")

    with pytest.raises(botocore.exceptions.ClientError) as caught:
        expired.get_object(Bucket=BUCKET, Key=KEY, Range="bytes=0-9")
    assert caught.value.response["Error"]["Code"] == "ExpiredToken"
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    with pytest.raises(botocore.exceptions.ClientError, match=r"\(400\)"):  # a HEAD's error has no body to name it
        expired.head_object(Bucket=BUCKET, Key=KEY)
    response, body, _ = _presigned_get(proxy, {}, token="old-token")  # the token in the presigned URL's query
    assert response.status == 400 and b"<Code>ExpiredToken</Code>" in body
    assert fresh.get_object(Bucket=BUCKET, Key=KEY, Range="bytes=0-9")["Body"].read() == BODY[:10]
    assert proxy.counts().expired_token >= 3  # botocore may ask a HEAD's 400 again, as a region mismatch


@pytest.mark.parametrize("proxy", [FaultRates()], indirect=True, ids=["no-faults"])
def test_the_rates_change_while_the_proxy_runs(proxy: FaultProxy) -> None:
    import botocore.exceptions

    client = _botocore_client(proxy.endpoint_url, retries={"total_max_attempts": 1})
    assert client.get_object(Bucket=BUCKET, Key=KEY, Range="bytes=0-9")["Body"].read() == BODY[:10]
    proxy.set_rates(FaultRates(slowdown=1.0))
    with pytest.raises(botocore.exceptions.ClientError, match="SlowDown"):
        client.get_object(Bucket=BUCKET, Key=KEY, Range="bytes=0-9")
    proxy.set_rates(FaultRates())
    assert client.get_object(Bucket=BUCKET, Key=KEY, Range="bytes=0-9")["Body"].read() == BODY[:10]
    assert proxy.counts() == FaultCounts(object_gets=3, slowdown=1)
