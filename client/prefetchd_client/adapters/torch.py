"""PyTorch: a `torch.utils.data.IterableDataset` over prefetchd streams, whose tensors are the ring's memory.

    dataset = idx_dataset("s3://…/train-images-idx3-ubyte", "s3://…/train-labels-idx1-ubyte", batch_size=100)
    for data, label in torch.utils.data.DataLoader(dataset, batch_size=None):
        ...

The daemon batches, so the DataLoader must not: `batch_size=None`. Lifetimes are the numpy iterator's:
- num_workers=0: `data` and `label` are `torch.from_numpy` views of a ring slot (no copy), valid until the
  loader takes the next batch, when the slot goes back to the daemon and is refilled. `.clone()` what you keep.
  They are read-only: the ring is mapped PROT_READ, so an in-place op on them (`data.sub_(…)`) ends the
  process with SIGSEGV instead of corrupting the daemon's ring. Out-of-place ops (`data - mean`) are fine.
- num_workers=N: each worker process opens its own stream on its own part of the data (part
  `part_index * N + worker_id` of `num_parts * N`), and copies each batch once into torch's shared memory before
  yielding it: the DataLoader pickles a worker's batch in a background thread while the worker goes on, so a
  ring view would be read after its slot was handed back. These tensors are ordinary and may be kept.

Importing this module imports torch; `prefetchd_client` itself never does.
"""

from __future__ import annotations

import inspect
import os
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch.utils.data import IterableDataset, get_worker_info

from ..errors import InvalidRequest
from ..iterator import Batch, BatchIterator, idx_iter, recordio_iter

# torch.from_numpy warns (once per process) that a read-only array makes a tensor torch cannot mark read-only.
# For ring views that is the documented contract, and the PROT_READ mapping turns a write into a crash rather
# than silent corruption, so that one warning is ignored around our own call (not with a module-wide filter,
# which a caller's catch_warnings would undo). As torch emits it once per process, from C++, a from_numpy of
# the trainer's own read-only arrays after ours says nothing. The alternative, torch.from_dlpack, drops the
# read-only flag without a word (numpy 1.x refuses to export a read-only array at all).
NOT_WRITABLE_WARNING = "The given NumPy array is not writable"

# "pad" and "round" fill the last batch with repeats and say how many in Batch.pad, which a tensor pair
# cannot carry: a loss over them would count those samples twice.
LAST_BATCH_MODES = ("keep", "discard")


class StreamDataset(IterableDataset):  # type: ignore[misc]  # torch is Any to mypy (pyproject.toml)
    """One prefetchd stream per process, batches as tensors: `DataLoader(dataset, batch_size=None)`.

    Each `iter()` runs one epoch: the next one, or the one `set_epoch()` named. Yields `(data, label)`, or
    `(data, label, index)` with `with_index=True` (`index`: int64 record numbers, a copy).
    """

    def __init__(
        self,
        open_stream: Callable[..., BatchIterator],
        sources: tuple[str | None, ...],
        options: dict[str, Any],
        *,
        with_index: bool = False,
    ) -> None:
        options = {"last_batch": "keep", **options}
        try:
            inspect.signature(open_stream).bind(*sources, **options)
        except TypeError as exc:
            raise TypeError(f"{open_stream.__name__}() does not take these arguments: {exc}") from None
        if options["last_batch"] not in LAST_BATCH_MODES:
            raise InvalidRequest(
                f"last_batch={options['last_batch']!r} pads the last batch with repeated samples, and a tensor "
                "batch cannot say how many: use 'keep' (DataLoader's drop_last=False) or 'discard' (drop_last=True)"
            )
        self._open_stream = open_stream
        self._sources = sources
        self._num_parts = int(options.pop("num_parts", 1))
        self._part_index = int(options.pop("part_index", 0))
        self._epoch = int(options.pop("epoch", 0))
        self._options = options
        self.with_index = with_index
        self._stream: BatchIterator | None = None
        self._stream_pid = 0
        self._at_start = False  # this process's stream sits at the start of epoch `_epoch`, nothing taken
        self._finished = False  # its last epoch ran to the end: the daemon is filling the next one already
        self._iterations = 0  # which `iter()` owns the stream; an older one stops with an error

    @property
    def stream(self) -> BatchIterator | None:
        """The stream this process reads, once it is open (statistics, position)."""
        return self._stream if self._stream_pid == os.getpid() else None

    def set_epoch(self, epoch: int) -> None:
        """Run `epoch` on the next `iter()`, as DistributedSampler.set_epoch does.

        In one process epochs follow one another without it. With num_workers > 0 and no persistent workers,
        each epoch's workers start from this object, so call it before each epoch or every epoch repeats one;
        persistent workers hold their own copies, which go on by themselves and which this cannot reach.
        """
        self._epoch = epoch

    def __len__(self) -> int:
        """Batches in one epoch of this process's stream (opening it if need be).

        Exact with num_workers=0. With N workers the loader yields the N parts' batches, up to N - 1 more
        (last_batch="keep") or fewer ("discard") than one stream over the whole partition.
        """
        return self._this_process_stream().batches_per_epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        stream = self._stream_at_epoch_start()
        self._epoch += 1
        self._iterations += 1
        return self._batches(stream, self._iterations, shared=get_worker_info() is not None)

    def _batches(self, stream: BatchIterator, iteration: int, *, shared: bool) -> Iterator[tuple[torch.Tensor, ...]]:
        for batch in stream:
            if iteration != self._iterations:
                raise RuntimeError("another iteration over this StreamDataset started; one at a time per process")
            yield self._tensors(batch, shared=shared)
        if iteration == self._iterations:
            self._finished = True

    def _tensors(self, batch: Batch, *, shared: bool) -> tuple[torch.Tensor, ...]:
        tensors = [_ring_tensor(batch.data, shared=shared), _ring_tensor(batch.label, shared=shared)]
        if self.with_index:
            tensors.append(torch.from_numpy(batch.index.astype(np.int64)))
        return tuple(tensors)

    def _this_process_stream(self) -> BatchIterator:
        """This process's stream; a forked DataLoader worker opens its own part rather than use its parent's."""
        if self._stream is not None and self._stream_pid == os.getpid():
            return self._stream
        num_parts, part_index = self._num_parts, self._part_index
        worker = get_worker_info()
        if worker is not None:
            num_parts, part_index = num_parts * worker.num_workers, part_index * worker.num_workers + worker.id
        # an inherited stream is dropped, not closed: its close() in this process tells the daemon nothing
        self._stream = self._open_stream(
            *self._sources, **self._options, num_parts=num_parts, part_index=part_index, epoch=self._epoch
        )
        self._stream_pid = os.getpid()
        self._at_start, self._finished = True, False
        return self._stream

    def _stream_at_epoch_start(self) -> BatchIterator:
        stream = self._this_process_stream()
        position, start = stream.position, (self._epoch, 0)
        if self._at_start and position == start:
            pass  # opened at this epoch and not read yet
        elif self._finished and self._epoch == position[0] + 1:
            stream.reset()  # the daemon went on with this epoch by itself: keep what it prefetched
        elif start > position:
            stream.seek(*start)
        else:
            # Back to an earlier epoch: batches already in flight from later ones would reach the iterator
            # after its Seek with nothing to tell them from the new ones, so start a stream afresh
            self.close()
            stream = self._this_process_stream()
        self._at_start, self._finished = False, False
        return stream

    def close(self) -> None:
        """Close this process's stream; the next `iter()` opens a new one."""
        stream = self.stream
        self._stream = None
        if stream is not None:
            stream.close()

    def __getstate__(self) -> dict[str, Any]:
        """Pickled for a spawned worker: the stream stays behind, the worker opens its own."""
        state = self.__dict__.copy()
        state["_stream"], state["_stream_pid"] = None, 0
        return state

    def __repr__(self) -> str:
        return (
            f"<StreamDataset {self._open_stream.__name__} epoch={self._epoch} "
            f"part={self._part_index}/{self._num_parts} stream={self.stream!r}>"
        )


def _ring_tensor(view: NDArray[Any], *, shared: bool) -> torch.Tensor:
    """The view as a tensor over the same memory, or (`shared`) copied once into torch's shared memory."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=NOT_WRITABLE_WARNING, category=UserWarning)
        tensor = torch.from_numpy(view)
    if not shared:
        return tensor
    copy = torch.empty_like(tensor).share_memory_()
    return copy.copy_(tensor)


def idx_dataset(image: str, label: str, *, with_index: bool = False, **options: Any) -> StreamDataset:
    """`idx_iter`'s batches (same arguments) as a dataset; `last_batch` defaults to "keep", torch's drop_last=False."""
    return StreamDataset(idx_iter, (image, label), options, with_index=with_index)


def recordio_dataset(rec: str, idx: str | None = None, *, with_index: bool = False, **options: Any) -> StreamDataset:
    """`recordio_iter`'s batches (same arguments) as a dataset; `last_batch` defaults to "keep"."""
    return StreamDataset(recordio_iter, (rec, idx), options, with_index=with_index)
