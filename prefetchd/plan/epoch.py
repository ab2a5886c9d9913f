"""What one epoch reads, in what order, cut into batches: pure arithmetic over record numbers.

Partitions follow MXNet (`num_parts`/`part_index`): part i holds records
[floor(count / parts * i), floor(count / parts * (i + 1))) computed in double precision, as
src/io/iter_mnist.cc's GetPart does, so each part gets exactly the records MXNet gives it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from .shuffle import windowed_permutation

LAST_BATCH_MODES = ("discard", "pad", "keep", "round")


def partition(count: int, num_parts: int, part_index: int) -> range:
    """The records of part `part_index` of `num_parts`."""
    if num_parts < 1 or not 0 <= part_index < num_parts:
        raise ValueError(f"part_index must be in [0, num_parts), got part {part_index} of {num_parts}")
    start = int(float(count) / num_parts * part_index)
    stop = int(float(count) / num_parts * (part_index + 1))
    return range(start, stop)


@dataclass(frozen=True, slots=True)
class BatchSpec:
    """One batch: the records to put in it, how many are real and how many repeat earlier ones."""

    seq: int
    records: NDArray[np.int64]  # absolute record numbers, len == valid + pad
    valid: int
    pad: int


@dataclass(frozen=True, slots=True)
class EpochPlan:
    """The order of one epoch of one partition, and its batches."""

    epoch: int
    order: NDArray[np.int64]  # absolute record numbers in visiting order
    batch_size: int
    last_batch: str
    pad_source: NDArray[np.int64] | None = None  # where "round" pads come from: the next epoch's order

    @property
    def batch_count(self) -> int:
        return batch_count(len(self.order), self.batch_size, self.last_batch)

    def batch(self, seq: int) -> BatchSpec:
        if not 0 <= seq < self.batch_count:
            raise IndexError(f"batch {seq} is outside the epoch's {self.batch_count} batches")
        start = seq * self.batch_size
        stop = start + self.batch_size
        records = self.order[start:stop]
        valid = len(records)
        pad = 0
        if valid < self.batch_size and self.last_batch in ("pad", "round"):
            # "pad": wrap around to the start of this epoch's order; "round": borrow the next epoch's first records
            pad = self.batch_size - valid
            source = self.order if self.pad_source is None else self.pad_source
            records = np.concatenate([records, np.resize(source, pad)])
        return BatchSpec(seq, records, valid, pad)

    def records_from(self, first_batch: int) -> NDArray[np.int64]:
        """Every record the epoch reads from batch `first_batch` on, pads included, in visiting order."""
        count = self.batch_count
        if first_batch >= count:
            return np.empty(0, dtype=np.int64)
        whole = self.order[first_batch * self.batch_size : (count - 1) * self.batch_size]
        return np.concatenate([whole, self.batch(count - 1).records])


def batch_count(samples: int, batch_size: int, last_batch: str) -> int:
    if last_batch == "discard":
        return samples // batch_size
    return -(-samples // batch_size)


def plan_epoch(
    part: range,
    *,
    epoch: int,
    batch_size: int,
    shuffle: bool,
    seed: int,
    reshuffle: bool,
    last_batch: str,
    window: int,
) -> EpochPlan:
    """Plan epoch `epoch`. With `reshuffle=False` every epoch uses epoch 0's permutation (MXNet's MNISTIter).

    "round" is MXNet's ImageRecordIter with round_batch=1: the records are one stream of epochs; a final
    partial batch is completed with the next epoch's first records, and that epoch starts after them.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    if last_batch not in LAST_BATCH_MODES:
        raise ValueError(f"last_batch must be one of {LAST_BATCH_MODES}, not {last_batch!r}")

    def order(k: int) -> NDArray[np.int64]:
        records = np.arange(part.start, part.stop, dtype=np.int64)
        if shuffle and len(records) > 1:
            records = records[windowed_permutation(len(records), window, seed=seed, epoch=k if reshuffle else 0)]
        return records

    if last_batch != "round" or not len(part):
        return EpochPlan(epoch, order(epoch), batch_size, last_batch)
    start = round_start(len(part), batch_size, epoch)
    this = order(epoch)[start:]
    pad = -len(this) % batch_size
    return EpochPlan(epoch, this, batch_size, last_batch, order(epoch + 1)[:pad] if pad else None)


def round_start(samples: int, batch_size: int, epoch: int) -> int:
    """Where epoch `epoch` starts in its own order in "round" mode: after the records the previous one borrowed."""
    start = 0
    for _ in range(epoch):
        start = -(samples - start) % batch_size if start < samples else 0
        start = min(start, samples)  # a batch larger than the partition borrows it whole; the next starts afresh
        if start == samples:
            start = 0
    return start
