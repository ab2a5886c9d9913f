"""The bookkeeping every reader shares: which chunks an epoch needs, in what order, until when."""

from __future__ import annotations

import numpy as np
import pytest

from prefetchd.plan.epoch import plan_epoch
from prefetchd.readers.base import ChunkUses, shuffle_window
from prefetchd_client.errors import InvalidRequest
from prefetchd_client.protocol import Open


def test_chunks_are_needed_in_first_use_order_and_released_after_their_last_use() -> None:
    visited = np.array([3, 3, 1, 0, 1, 3, 2], dtype=np.int64)
    uses = ChunkUses(visited)
    assert uses.need_order == [3, 1, 0, 2]
    released: list[int] = []
    uses.used(visited[:3], released.append)  # 3, 3, 1
    assert released == []
    uses.used(visited[3:5], released.append)  # 0, 1
    assert released == [0, 1]
    uses.used(visited[5:], released.append)  # 3, 2
    assert sorted(released) == [0, 1, 2, 3]


def test_records_from_a_batch_on_are_the_rest_of_the_epoch_pads_included() -> None:
    plan = plan_epoch(
        range(10, 20), epoch=0, batch_size=4, shuffle=True, seed=1, reshuffle=True, last_batch="pad", window=100
    )
    batches = [plan.batch(seq).records for seq in range(plan.batch_count)]
    for first in range(plan.batch_count + 1):
        expected = np.concatenate(batches[first:]) if first < plan.batch_count else np.empty(0, dtype=np.int64)
        assert plan.records_from(first).tolist() == expected.tolist()


def _request(**fields: object) -> Open:
    return Open(format="idx", sources={}, batch_size=10, shuffle=True, **fields)  # type: ignore[arg-type]


def test_the_daemon_chooses_the_shuffle_window_unless_the_client_pins_one() -> None:
    chosen = shuffle_window(_request(), 2000, 8000, records=5000, record_bytes=784, url="s3://b/k")
    pinned = shuffle_window(_request(shuffle_window=3000), 2000, 8000, records=5000, record_bytes=784, url="s3://b/k")
    assert (chosen, pinned) == (2000, 3000)


def test_a_window_as_large_as_the_partition_is_reported_as_the_partition() -> None:
    """Every window of n records or more is the same full permutation: one number for all of them."""
    assert shuffle_window(_request(), 341190, 700000, records=5000, record_bytes=784, url="s3://b/k") == 5000


def test_a_pinned_window_beyond_the_budget_is_refused_naming_the_flag() -> None:
    with pytest.raises(InvalidRequest, match=r"shuffle window of 9000 records .* start it with --budget 14112000"):
        shuffle_window(_request(shuffle_window=9000), 2000, 8000, records=50000, record_bytes=784, url="s3://b/k")
    with pytest.raises(InvalidRequest, match="shuffle_window must be 0"):
        shuffle_window(_request(shuffle_window=-1), 2000, 8000, records=50000, record_bytes=784, url="s3://b/k")
