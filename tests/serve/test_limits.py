"""Per-client caps (prefetchd/serve/limits.py): each peer process counted alone, places given back."""

from __future__ import annotations

import pytest

from prefetchd.serve.limits import ClientLimits
from prefetchd_client.errors import InvalidRequest, LimitExceeded

MiB = 1 << 20


def test_a_client_at_its_stream_cap_is_refused_and_another_client_is_not() -> None:
    limits = ClientLimits(max_streams=2, max_ring_bytes=64 * MiB)
    limits.open_stream(100)
    limits.open_stream(100)
    with pytest.raises(LimitExceeded, match="client pid 100 already has 2 open streams"):
        limits.open_stream(100)
    limits.open_stream(200)
    limits.close_stream(100)
    limits.open_stream(100)
    assert limits.usage(100) == (2, 0) and limits.usage(200) == (1, 0)


def test_ring_bytes_are_counted_together_and_refused_before_they_are_taken() -> None:
    limits = ClientLimits(max_streams=8, max_ring_bytes=10 * MiB)
    limits.claim_ring(100, 6 * MiB)
    with pytest.raises(LimitExceeded, match=r"would bring client pid 100's shared memory to 12\.0 MiB"):
        limits.claim_ring(100, 6 * MiB)
    assert limits.usage(100) == (0, 6 * MiB)  # the refused claim took nothing
    limits.claim_ring(200, 10 * MiB)
    limits.release_ring(100, 6 * MiB)
    limits.claim_ring(100, 10 * MiB)


def test_a_limit_is_an_invalid_request_for_clients_that_catch_those() -> None:
    assert issubclass(LimitExceeded, InvalidRequest) and LimitExceeded.code == "limit_exceeded"


def test_clients_that_have_gone_leave_nothing_behind() -> None:
    limits = ClientLimits(max_streams=2, max_ring_bytes=MiB)
    for pid in range(1000):
        limits.open_stream(pid)
        limits.claim_ring(pid, MiB)
        limits.release_ring(pid, MiB)
        limits.close_stream(pid)
    assert repr(limits) == "<ClientLimits clients=0 streams=0>"
