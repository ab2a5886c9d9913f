"""Range sizes, retry backoff and the retry budget (prefetchd/fetch/policy.py): pure figures, randomness passed in."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prefetchd.fetch.policy import Retries, RetryBudget, RetryPolicy, choose_chunk_bytes

MiB = 1 << 20
MNIST_RECORD = 784  # one 28×28 uint8 image


def requests_for(object_bytes: int, chunk_bytes: int) -> int:
    return -(-object_bytes // chunk_bytes)


def test_55_mb_object_is_cut_for_32_connections_not_into_7_chunks() -> None:
    chunk = choose_chunk_bytes(55_000_000, concurrency=32, max_chunk_bytes=8 * MiB, min_chunk_bytes=1 * MiB)

    assert chunk == 1_718_750
    assert requests_for(55_000_000, chunk) == 32


def test_record_granule_keeps_ranges_whole_and_still_32_requests() -> None:
    chunk = choose_chunk_bytes(
        55_000_000, concurrency=32, max_chunk_bytes=8 * MiB, min_chunk_bytes=1 * MiB, granule=MNIST_RECORD
    )

    assert chunk % MNIST_RECORD == 0
    assert 1_718_750 <= chunk < 1_718_750 + MNIST_RECORD
    assert requests_for(55_000_000, chunk) == 32


def test_partition_of_whole_records_takes_no_extra_straggler_request() -> None:
    object_bytes = 60_001 * MNIST_RECORD

    chunk = choose_chunk_bytes(
        object_bytes, concurrency=32, max_chunk_bytes=8 * MiB, min_chunk_bytes=1 * MiB, granule=MNIST_RECORD
    )

    assert chunk == 1876 * MNIST_RECORD
    assert requests_for(object_bytes, chunk) == 32


def test_small_object_is_cut_no_finer_than_the_minimum() -> None:
    assert choose_chunk_bytes(100_000, concurrency=32, max_chunk_bytes=8 * MiB, min_chunk_bytes=1 * MiB) == MiB


def test_large_object_is_cut_into_maximum_ranges() -> None:
    kwargs = {"concurrency": 32, "max_chunk_bytes": 8 * MiB, "min_chunk_bytes": MiB}

    assert choose_chunk_bytes(10 * 1000**3, **kwargs) == 8 * MiB
    assert choose_chunk_bytes(10 * 1000**3, **kwargs, granule=MNIST_RECORD) == 8 * MiB // MNIST_RECORD * MNIST_RECORD


def test_record_larger_than_the_maximum_is_fetched_whole() -> None:
    chunk = choose_chunk_bytes(10**9, concurrency=32, max_chunk_bytes=8 * MiB, min_chunk_bytes=MiB, granule=10 * MiB)

    assert chunk == 10 * MiB


def test_concurrency_below_1_counts_as_one_connection() -> None:
    assert choose_chunk_bytes(3 * MiB, concurrency=0, max_chunk_bytes=8 * MiB, min_chunk_bytes=MiB) == 3 * MiB


@settings(max_examples=1000, deadline=None)
@given(
    object_bytes=st.integers(0, 10**12),
    concurrency=st.integers(1, 512),
    min_chunk_bytes=st.integers(1, 64 * MiB),
    spread=st.integers(0, 256 * MiB),
    granule=st.one_of(st.just(1), st.integers(1, 4096), st.integers(1, 16 * MiB)),
)
def test_chunk_is_a_whole_granule_multiple_within_the_limits(
    object_bytes: int, concurrency: int, min_chunk_bytes: int, spread: int, granule: int
) -> None:
    max_chunk_bytes = min_chunk_bytes + spread

    chunk = choose_chunk_bytes(
        object_bytes,
        concurrency=concurrency,
        max_chunk_bytes=max_chunk_bytes,
        min_chunk_bytes=min_chunk_bytes,
        granule=granule,
    )

    assert isinstance(chunk, int)
    assert chunk > 0 and chunk % granule == 0
    if granule > max_chunk_bytes:
        assert chunk == granule
        return
    if -(-min_chunk_bytes // granule) * granule <= max_chunk_bytes:  # some multiple lies in [min, max]
        assert min_chunk_bytes <= chunk <= max_chunk_bytes
    else:
        assert chunk <= max_chunk_bytes
    even_share = -(-object_bytes // concurrency)
    if -(-even_share // granule) * granule <= max_chunk_bytes:
        assert requests_for(object_bytes, chunk) <= concurrency
    else:
        assert chunk > max_chunk_bytes - granule  # as large as the maximum allows


@pytest.mark.parametrize("attempt", [1, 2, 3, 5, 6, 7, 10, 30])
def test_backoff_lies_within_full_jitter_bounds(attempt: int) -> None:
    policy = RetryPolicy(max_attempts=5, base_s=0.5, cap_s=20.0)
    rng = random.Random(attempt)
    ceiling = min(20.0, 0.5 * 2 ** (attempt - 1))

    delays = [policy.backoff_s(attempt, rng) for _ in range(500)]

    assert all(0.0 <= delay <= ceiling for delay in delays)
    assert max(delays) > 0.9 * ceiling and min(delays) < 0.1 * ceiling  # spread over the whole interval


def test_backoff_is_one_uniform_draw_from_the_given_random_source() -> None:
    policy = RetryPolicy(base_s=0.25, cap_s=3.0)

    for attempt in range(1, 8):
        expected = random.Random(99).uniform(0.0, min(3.0, 0.25 * 2 ** (attempt - 1)))
        assert policy.backoff_s(attempt, random.Random(99)) == expected


@pytest.mark.parametrize("attempt", [12, 64, 1024, 1025, 5000, 10**6])
def test_backoff_never_passes_the_cap_however_many_attempts(attempt: int) -> None:
    policy = RetryPolicy(base_s=0.5, cap_s=20.0)
    rng = random.Random(0)

    delays = [policy.backoff_s(attempt, rng) for _ in range(200)]

    assert all(0.0 <= delay <= 20.0 for delay in delays)
    assert max(delays) > 18.0


@pytest.mark.parametrize("attempt", [0, -1])
def test_attempt_numbers_start_at_1(attempt: int) -> None:
    with pytest.raises(ValueError, match="start at 1"):
        RetryPolicy().backoff_s(attempt, random.Random(0))


def test_max_attempts_counts_the_first_try() -> None:
    policy = RetryPolicy(max_attempts=5)

    assert [policy.should_retry(attempt) for attempt in range(1, 7)] == [True, True, True, True, False, False]


def test_a_single_attempt_is_never_retried() -> None:
    assert not RetryPolicy(max_attempts=1).should_retry(1)


def _retries(policy: RetryPolicy, seed: int = 7, budget: RetryBudget | None = None) -> Retries:
    return Retries(policy, budget or RetryBudget(policy), random.Random(seed))


def test_the_delays_before_each_retry_are_the_policy_s_draws_in_order() -> None:
    policy = RetryPolicy(max_attempts=5, base_s=0.5, cap_s=3.0)
    retries = _retries(policy, seed=42)

    delays = [retries.next_delay(progressed=False) for _ in range(5)]

    rng = random.Random(42)
    assert delays == [rng.uniform(0, 0.5), rng.uniform(0, 1.0), rng.uniform(0, 2.0), rng.uniform(0, 3.0), None]
    assert retries.stop_reason == "5 tries in a row brought no new byte (max_attempts 5)"


def test_a_try_that_brought_bytes_starts_the_attempts_afresh() -> None:
    retries = _retries(RetryPolicy(max_attempts=3, base_s=1.0, cap_s=100.0), seed=3)

    delays = [retries.next_delay(progressed=p) for p in (False, False, True, False, False)]

    rng = random.Random(3)
    assert delays == [rng.uniform(0, 1), rng.uniform(0, 2), rng.uniform(0, 1), rng.uniform(0, 2), None]


def test_max_tries_ends_a_read_that_keeps_making_progress() -> None:
    retries = _retries(RetryPolicy(max_attempts=2, max_tries=4))

    delays = [retries.next_delay(progressed=True) for _ in range(4)]

    assert [delay is not None for delay in delays] == [True, True, True, False]
    assert retries.stop_reason == "4 tries in all (max_tries 4)"


def test_the_budget_is_shared_and_ends_retries_once_spent() -> None:
    policy = RetryPolicy(max_attempts=10, budget_retries=3, retries_per_success=0.5)
    budget = RetryBudget(policy)
    first, second = _retries(policy, budget=budget), _retries(policy, budget=budget)

    assert first.next_delay(progressed=False) is not None
    assert second.next_delay(progressed=False) is not None
    assert first.next_delay(progressed=False) is not None
    assert second.next_delay(progressed=False) is None
    assert "retry budget is spent" in second.stop_reason
    assert budget.left == 0.0


def test_successes_earn_the_budget_back_up_to_its_size() -> None:
    policy = RetryPolicy(budget_retries=2, retries_per_success=0.25)
    budget = RetryBudget(policy)
    assert budget.spend() and budget.spend() and not budget.spend()

    for _ in range(3):
        budget.earn()
    assert budget.left == 0.75 and not budget.spend()
    budget.earn()
    assert budget.spend()
    for _ in range(100):
        budget.earn()
    assert budget.left == 2.0
