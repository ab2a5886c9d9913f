"""The AIMD concurrency limit (prefetchd/fetch/aimd.py): every figure exact, no clock, no server."""

from __future__ import annotations

import pytest

from prefetchd.fetch.aimd import AimdLimit, AimdStatistics


def succeed(limit: AimdLimit, times: int) -> None:
    for _ in range(times):
        limit.on_success()


def test_a_fresh_limit_is_the_ceiling() -> None:
    assert AimdLimit(16).statistics() == AimdStatistics(limit=16, ceiling=16, lowest=16, throttles=0, decreases=0)


def test_a_throttle_halves_what_was_in_flight() -> None:
    limit = AimdLimit(256)

    assert limit.on_throttle(limit.generation, in_flight=32)
    assert limit.limit == 16  # half of the 32 in flight, not of the 256 allowed


def test_a_throttle_with_more_in_flight_than_the_limit_halves_the_limit() -> None:
    limit = AimdLimit(10)

    limit.on_throttle(0, in_flight=40)

    assert limit.limit == 5


def test_throttles_of_requests_sent_before_a_cut_do_not_cut_again() -> None:
    limit = AimdLimit(64)
    sent_together = limit.generation

    cuts = [limit.on_throttle(sent_together, in_flight=32 - i) for i in range(8)]

    assert cuts == [True] + [False] * 7
    assert limit.limit == 16
    assert limit.statistics().throttles == 8 and limit.statistics().decreases == 1


def test_a_request_sent_after_a_cut_can_cut_again() -> None:
    limit = AimdLimit(64)
    limit.on_throttle(limit.generation, in_flight=64)

    assert limit.on_throttle(limit.generation, in_flight=32)
    assert limit.limit == 16
    assert limit.statistics().lowest == 16


def test_the_limit_never_falls_below_the_floor() -> None:
    limit = AimdLimit(8, floor=2)
    for _ in range(10):
        limit.on_throttle(limit.generation, in_flight=1)

    assert limit.limit == 2


def test_one_more_request_per_limit_of_successes() -> None:
    limit = AimdLimit(16)
    limit.on_throttle(0, in_flight=8)
    assert limit.limit == 4

    grown = []
    for _ in range(4 + 5 + 6):
        limit.on_success()
        grown.append(limit.limit)

    assert grown == [4, 4, 4, 5] + [5] * 4 + [6] + [6] * 5 + [7]


def test_successes_bring_it_back_to_the_ceiling_and_no_further() -> None:
    limit = AimdLimit(16)
    limit.on_throttle(0, in_flight=2)
    assert limit.limit == 1

    succeed(limit, sum(range(1, 16)))  # 1 + 2 + ... + 15 successes: one limit's worth per step

    assert limit.limit == 16
    succeed(limit, 1000)
    assert limit.limit == 16
    assert limit.statistics().lowest == 1


def test_a_cut_forgets_the_successes_counted_towards_the_next_step() -> None:
    limit = AimdLimit(32)
    limit.on_throttle(0, in_flight=20)  # 10
    succeed(limit, 9)  # one short of 11
    limit.on_throttle(limit.generation, in_flight=10)  # 5
    succeed(limit, 4)

    assert limit.limit == 5
    limit.on_success()
    assert limit.limit == 6


@pytest.mark.parametrize(("ceiling", "floor", "decrease"), [(0, 1, 0.5), (4, 5, 0.5), (4, 0, 0.5), (4, 1, 1.0)])
def test_limits_that_cannot_work_are_refused(ceiling: int, floor: int, decrease: float) -> None:
    with pytest.raises(ValueError, match=r"floor|factor"):
        AimdLimit(ceiling, floor=floor, decrease=decrease)
