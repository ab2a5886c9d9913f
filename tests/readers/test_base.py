"""The bookkeeping every reader shares: which chunks an epoch needs, in what order, until when."""

from __future__ import annotations

import numpy as np

from prefetchd.plan.epoch import plan_epoch
from prefetchd.readers.base import ChunkUses


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
