"""Partitions, epoch orders and batches (prefetchd/plan/epoch.py), partitions checked against MXNet's MNISTIter."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prefetchd.plan.epoch import EpochPlan, batch_count, partition, plan_epoch
from prefetchd.plan.shuffle import windowed_permutation
from tests.idx_files import index_of_images, indexed_images, write_mnist_pair


def get_part(count: int, num_parts: int, part_index: int) -> tuple[int, int]:
    """src/io/iter_mnist.cc GetPart: static_cast<size_t>(static_cast<double>(count) / num_parts * part_index)."""
    start = int(float(count) / float(num_parts) * float(part_index))
    end = int(float(count) / float(num_parts) * float(part_index + 1))
    return start, end


def plan(
    part: range,
    *,
    epoch: int = 0,
    batch_size: int = 5,
    shuffle: bool = False,
    seed: int = 0,
    reshuffle: bool = True,
    last_batch: str = "pad",
    window: int = 1 << 30,
) -> EpochPlan:
    return plan_epoch(
        part,
        epoch=epoch,
        batch_size=batch_size,
        shuffle=shuffle,
        seed=seed,
        reshuffle=reshuffle,
        last_batch=last_batch,
        window=window,
    )


@settings(max_examples=500, deadline=None)
@given(count=st.integers(0, 10**7), num_parts=st.integers(1, 300), data=st.data())
def test_partition_is_mxnets_get_part(count: int, num_parts: int, data: st.DataObject) -> None:
    part_index = data.draw(st.integers(0, num_parts - 1))
    part = partition(count, num_parts, part_index)

    assert (part.start, part.stop) == get_part(count, num_parts, part_index)
    assert part.step == 1


@settings(max_examples=300, deadline=None)
@given(count=st.integers(0, 10**6), num_parts=st.integers(1, 64))
def test_parts_are_disjoint_contiguous_and_cover_the_records(count: int, num_parts: int) -> None:
    parts = [partition(count, num_parts, i) for i in range(num_parts)]

    assert parts[0].start == 0
    assert all(a.stop == b.start for a, b in itertools.pairwise(parts))
    assert all(part.start <= part.stop for part in parts)
    # MXNet computes the last end in doubles too: count / parts * parts can round to count - 1
    assert parts[-1].stop == int(float(count) / num_parts * num_parts) in (count, count - 1)


@pytest.mark.parametrize(("count", "num_parts"), [(1003, 1), (1003, 4), (1003, 7), (60000, 8), (10000, 3)])
def test_parts_cover_every_record_when_the_division_is_exact_in_doubles(count: int, num_parts: int) -> None:
    covered = [record for i in range(num_parts) for record in partition(count, num_parts, i)]

    assert covered == list(range(count))


def test_last_record_is_dropped_exactly_where_mxnet_drops_it() -> None:
    # 61 / 7 * 7 == 60.99999999999999 in doubles: MXNet's part 6 ends at 60, so record 60 is read by no worker
    assert partition(61, 7, 6) == range(52, 60)
    assert partition(60000, 7, 6) == range(51428, 59999)


@pytest.mark.parametrize(("num_parts", "part_index"), [(0, 0), (-1, 0), (3, 3), (3, -1), (1, 1)])
def test_bad_part_arguments_are_refused(num_parts: int, part_index: int) -> None:
    with pytest.raises(ValueError, match="part_index must be in"):
        partition(100, num_parts, part_index)


@pytest.mark.mxnet
@pytest.mark.parametrize("count", [1003, 61])
def test_partitions_hold_the_samples_mxnet_gives_each_worker(tmp_path: Path, count: int) -> None:
    import mxnet as mx

    image_path, label_path = write_mnist_pair(tmp_path, indexed_images(count), np.zeros(count, dtype=np.uint8))
    for num_parts in (1, 2, 3, 7, 16):
        for part_index in range(num_parts):
            iterator = mx.io.MNISTIter(
                image=str(image_path),
                label=str(label_path),
                batch_size=1,
                shuffle=False,
                num_parts=num_parts,
                part_index=part_index,
                silent=True,
            )
            mxnet_samples = [int(index_of_images(batch.data[0].asnumpy())[0]) for batch in iterator]

            assert mxnet_samples == list(partition(count, num_parts, part_index)), (num_parts, part_index)


@pytest.mark.parametrize(
    ("samples", "batch_size", "last_batch", "batches", "last_valid", "last_pad"),
    [
        (20, 5, "discard", 4, 5, 0),
        (20, 5, "pad", 4, 5, 0),
        (20, 5, "keep", 4, 5, 0),
        (17, 5, "discard", 3, 5, 0),
        (17, 5, "pad", 4, 2, 3),
        (17, 5, "keep", 4, 2, 0),
        (3, 8, "pad", 1, 3, 5),
        (3, 8, "keep", 1, 3, 0),
        (1, 1, "pad", 1, 1, 0),
    ],
)
def test_last_batch_mode_sets_batch_count_valid_and_pad(
    samples: int, batch_size: int, last_batch: str, batches: int, last_valid: int, last_pad: int
) -> None:
    epoch = plan(range(40, 40 + samples), batch_size=batch_size, last_batch=last_batch)

    assert epoch.batch_count == batches == batch_count(samples, batch_size, last_batch)
    for seq in range(batches - 1):
        spec = epoch.batch(seq)
        assert (spec.seq, spec.valid, spec.pad) == (seq, batch_size, 0)
        assert spec.records.tolist() == list(range(40 + seq * batch_size, 40 + (seq + 1) * batch_size))
    last = epoch.batch(batches - 1)
    assert (last.valid, last.pad) == (last_valid, last_pad)
    assert len(last.records) == last_valid + last_pad


def test_partition_smaller_than_a_batch_has_no_batch_when_discarding() -> None:
    epoch = plan(range(10, 13), batch_size=8, last_batch="discard")

    assert epoch.batch_count == 0
    with pytest.raises(IndexError):
        epoch.batch(0)


def test_empty_partition_has_no_batches() -> None:
    for last_batch in ("discard", "pad", "keep"):
        assert plan(range(5, 5), last_batch=last_batch, shuffle=True).batch_count == 0


def test_pad_repeats_records_from_the_start_of_the_epochs_order() -> None:
    epoch = plan(range(100, 117), batch_size=5, shuffle=True, seed=3, last_batch="pad")

    last = epoch.batch(3)

    assert last.records.tolist() == [*epoch.order[15:].tolist(), *epoch.order[:3].tolist()]
    assert last.records.dtype == np.int64


def test_pad_wraps_around_a_partition_smaller_than_the_batch() -> None:
    epoch = plan(range(10, 13), batch_size=8, last_batch="pad")

    assert epoch.batch(0).records.tolist() == [10, 11, 12, 10, 11, 12, 10, 11]


@pytest.mark.parametrize("seq", [-1, 4, 100])
def test_batch_outside_the_epoch_is_an_index_error(seq: int) -> None:
    with pytest.raises(IndexError, match="outside the epoch's 4 batches"):
        plan(range(17), batch_size=5, last_batch="keep").batch(seq)


def test_shuffled_order_visits_the_partition_once() -> None:
    epoch = plan(range(1000, 1500), shuffle=True, seed=11, epoch=2)

    assert sorted(epoch.order.tolist()) == list(range(1000, 1500))
    assert epoch.order.tolist() != list(range(1000, 1500))


def test_windowed_shuffle_uses_the_window_over_the_partitions_records() -> None:
    part = range(1000, 1500)

    epoch = plan(part, shuffle=True, seed=11, epoch=2, window=64)

    assert np.array_equal(epoch.order, part.start + windowed_permutation(len(part), 64, seed=11, epoch=2))


def test_without_reshuffle_every_epoch_has_epoch_0s_order() -> None:
    epochs = [plan(range(300), shuffle=True, seed=5, reshuffle=False, epoch=e) for e in range(4)]

    assert all(np.array_equal(e.order, epochs[0].order) for e in epochs)
    assert not np.array_equal(epochs[0].order, np.arange(300))
    assert [e.epoch for e in epochs] == [0, 1, 2, 3]


def test_with_reshuffle_each_epoch_has_its_own_order() -> None:
    orders = [plan(range(300), shuffle=True, seed=5, reshuffle=True, epoch=e).order.tolist() for e in range(4)]

    assert len({tuple(order) for order in orders}) == 4


def test_without_shuffle_the_order_is_the_partition_in_record_order() -> None:
    for epoch in (0, 1, 9):
        order = plan(range(250, 400), shuffle=False, seed=5, epoch=epoch).order
        assert order.tolist() == list(range(250, 400))
        assert order.dtype == np.int64


@pytest.mark.parametrize("batch_size", [0, -4])
def test_batch_size_below_1_is_refused(batch_size: int) -> None:
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        plan(range(10), batch_size=batch_size)


@pytest.mark.parametrize("last_batch", ["roll_over", "PAD", ""])
def test_unknown_last_batch_mode_is_refused(last_batch: str) -> None:
    with pytest.raises(ValueError, match="last_batch must be one of"):
        plan(range(10), last_batch=last_batch)
