"""Exactly once per epoch over all parts, when the number of parts changes between epochs (elastic training).

The promise: in each epoch, the parts used in that epoch hold every record of MXNet's split exactly once among
their valid samples (pads excluded, via `BatchSpec.valid`/`Batch.pad`), whatever number of parts the epoch
before used, shuffled or not. "discard" drops each part's final partial batch: those records, and no others,
are missing. A part's order depends only on (its records, seed, epoch), so a rank that reopens at epoch e
with new parts reads what an uninterrupted rank with those parts would.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from prefetchd.plan.epoch import EpochPlan, partition, plan_epoch


def _epoch(part: range, epoch: int, batch_size: int, last_batch: str, window: int) -> EpochPlan:
    return plan_epoch(
        part, epoch=epoch, batch_size=batch_size, shuffle=True, seed=11, reshuffle=True, last_batch=last_batch,
        window=window,
    )  # fmt: skip


def _valid_records(plan: EpochPlan) -> list[int]:
    return [r for seq in range(plan.batch_count) for r in plan.batch(seq).records[: plan.batch(seq).valid].tolist()]


@settings(max_examples=200, deadline=None)
@given(
    count=st.integers(1, 3000),
    parts_per_epoch=st.lists(st.integers(1, 9), min_size=2, max_size=4),
    batch_size=st.integers(1, 64),
    last_batch=st.sampled_from(["pad", "keep", "discard"]),
    window=st.sampled_from([7, 1 << 30]),
)
def test_every_epoch_reads_each_record_once_over_its_parts(
    count: int, parts_per_epoch: list[int], batch_size: int, last_batch: str, window: int
) -> None:
    for epoch, num_parts in enumerate(parts_per_epoch):
        parts = [partition(count, num_parts, i) for i in range(num_parts)]
        plans = [_epoch(part, epoch, batch_size, last_batch, window) for part in parts]
        read = [r for plan in plans for r in _valid_records(plan)]
        assert len(read) == len(set(read)), f"epoch {epoch} ({num_parts} parts) read a record twice"
        split = {r for part in parts for r in part}  # MXNet's split: every record, but see the test below
        if last_batch == "discard":
            dropped = [set(plan.order[plan.batch_count * batch_size :].tolist()) for plan in plans]
            assert all(len(d) == len(part) % batch_size for d, part in zip(dropped, parts, strict=True))
            assert set(read) == split - set().union(*dropped)
        else:
            assert set(read) == split


def test_the_same_order_whether_a_rank_reopened_with_new_parts_or_ran_through() -> None:
    part = partition(1000, 3, 1)
    straight = [_epoch(part, epoch, 32, "pad", 1 << 30).order for epoch in range(3)]
    reopened = _epoch(part, 2, 32, "pad", 1 << 30).order  # epochs 0 and 1 were read with other parts
    assert np.array_equal(straight[2], reopened)
    assert not np.array_equal(straight[1], straight[2]), "each epoch has its own order"


def test_mxnets_split_can_leave_the_last_record_to_no_part() -> None:
    # GetPart's doubles: 61 / 7 * 7 == 60.99999999999999, so record 60 is in no part of 7; kept for the drop-ins
    assert {r for i in range(7) for r in partition(61, 7, i)} == set(range(60))
    assert {r for i in range(6) for r in partition(61, 6, i)} == set(range(61))
