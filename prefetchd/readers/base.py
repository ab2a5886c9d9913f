"""What a reader is: the format-specific part of a stream, from an Open request to filled ring slots.

A reader opens its objects (pinning their versions), says what arrays a ring slot holds, plans each epoch,
and fills slots batch by batch while its epoch's ranges are fetched ahead. `serve/stream.py` drives it
and knows nothing about formats.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import Executor
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np
from numpy.typing import NDArray

from prefetchd_client.errors import InvalidRequest, PrefetchdError
from prefetchd_client.protocol import Open

from ..fetch.source import ObjectInfo
from ..plan.epoch import BatchSpec, EpochPlan, plan_epoch
from ..ring.segment import Segment

T = TypeVar("T")

# (name, numpy dtype string, shape) of each array in a slot
ArrayLayout = list[tuple[str, str, tuple[int, ...]]]


@dataclass(frozen=True, slots=True)
class ReaderShape:
    """What a stream looks like from outside: its slot arrays and its epoch's size."""

    arrays: ArrayLayout
    batches_per_epoch: int
    samples_per_epoch: int
    objects: dict[str, ObjectInfo]
    ring_bytes: int | None = None  # the shared memory this stream wants; None: the daemon's ring_bytes
    shuffle_window: int = 0  # records per shuffle window, as `Opened` reports it (0: not shuffled)


@dataclass(frozen=True, slots=True)
class FillResult:
    """A batch that came out other than planned: records were skipped (skip mode) and show up as padding."""

    valid: int
    pad: int
    skipped: list[PrefetchdError]


class EpochFill(Protocol):
    """One epoch in progress: fills slots in batch order while its ranges are fetched ahead."""

    async def fill(self, spec: BatchSpec, out: dict[str, NDArray[Any]]) -> FillResult | None: ...


class Reader(Protocol):
    shape: ReaderShape
    fill_depth: int  # batches filled at once: more than one keeps worker processes busy between batches
    epochs_overlap: bool  # the next epoch's fills may start before this one's finish (its context exited)
    decode_s: float  # time spent decoding batches whose bytes had arrived, for the metrics

    async def attach(self, segment_id: int, segment: Segment) -> None:
        """Called once the stream's ring exists, before it is sealed and sent."""

    def detach(self) -> None:
        """Called when the stream ends."""

    def plan(self, epoch: int) -> EpochPlan: ...

    def start_epoch(self, plan: EpochPlan, first_batch: int) -> AbstractAsyncContextManager[EpochFill]: ...


def plan_for(request: Open, part: range, epoch: int, window: int) -> EpochPlan:
    """Epoch `epoch` of `part` as the stream's Open asks for it."""
    return plan_epoch(
        part,
        epoch=epoch,
        batch_size=request.batch_size,
        shuffle=request.shuffle,
        seed=request.seed,
        reshuffle=request.reshuffle,
        last_batch=request.last_batch,
        window=window,
    )


def shuffle_window(request: Open, chosen: int, limit: int, *, records: int, record_bytes: int, url: str) -> int:
    """Records per shuffle window: `chosen` from this daemon's budget, or the one the client pins.

    A shuffled epoch's order depends on its window, and the daemon's choice on its `--budget` and
    `--chunk-size`; a stream resumed from a saved state pins the window it was saved with, so that a daemon
    started with other settings gives the same order. Up to `limit` records (a budget's worth) are served.
    Every window of the partition's `records` or more is one full permutation, so it is reported as that.
    """
    pinned = request.shuffle_window
    if pinned == 0:
        return min(chosen, max(1, records))
    if pinned < 0:
        raise InvalidRequest(f"shuffle_window must be 0 (the daemon's choice) or more, not {pinned}", url=url)
    if pinned > limit:
        raise InvalidRequest(
            f"the stream asks for a shuffle window of {pinned} records ({pinned * record_bytes} bytes), the one its "
            f"saved state was taken with; this daemon's stream_budget_bytes serves at most {limit}: start it "
            f"with --budget {2 * pinned * record_bytes} or more",
            url=url,
        )
    return pinned


class ChunkUses:
    """Which chunks an epoch reads, in the order it first needs them; a chunk is released after its last use."""

    def __init__(self, visited: NDArray[np.int64]) -> None:
        ids, first_use, uses = np.unique(visited, return_index=True, return_counts=True)
        self.need_order: list[int] = ids[np.argsort(first_use, kind="stable")].tolist()
        self._left = dict(zip(ids.tolist(), uses.tolist(), strict=True))

    def used(self, chunks: NDArray[np.int64], release: Callable[[int], None]) -> None:
        """A batch has used `chunks` (one entry per record); release those it used for the last time."""
        # a batch spans a chunk or two: np.unique costs more
        self.used_counts(Counter(chunks.tolist()).items(), release)

    def used_counts(self, counts: Iterable[tuple[int, int]], release: Callable[[int], None]) -> None:
        """A batch has used `count` records of each `chunk`; release those it used for the last time."""
        for chunk, count in counts:
            left = self._left[chunk] - count
            self._left[chunk] = left
            if left == 0:
                release(chunk)


async def run_to_completion(executor: Executor, work: Callable[[], T]) -> T:
    """Run `work` in `executor`; if we are cancelled meanwhile, wait for it anyway, then re-raise.

    Decode work writes into a ring slot; the slot must not be handed back while a thread still writes it.
    """
    future = asyncio.get_running_loop().run_in_executor(executor, work)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        await asyncio.wait([future])
        raise
