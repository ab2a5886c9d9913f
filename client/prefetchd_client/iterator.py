"""The numpy iterator: decoded batches as read-only views of the ring, valid until the next `next()`.

One `BatchIterator` is one stream: one socket, one ring. A `for` loop over it runs one epoch; the next
`for` loop runs the next epoch (the daemon has been filling it already). `reset()` mid-epoch drops what
is in flight and starts the next epoch, as MXNet's `DataIter.reset()` does. `state_dict()` and
`load_state_dict()` carry the position across processes and daemons (`resume.py` says what it holds).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .autostart import connect
from .connection import Connection
from .errors import IncompatibleState, PrefetchdError, RemoteProtocolError, StreamClosed, error_from_wire
from .partition import choose_partition
from .protocol import Batch as BatchFrame
from .protocol import Close, EndOfEpoch, Error, Open, Opened, Release, Seek
from .resume import check_state, differences, make_state, stream_identity
from .ring import RingReader

DEFAULT_TIMEOUT_S = 120.0
_RELEASES_PER_WRITE = 8
log = logging.getLogger("prefetchd_client")


@dataclass(frozen=True, slots=True)
class Batch:
    """One batch. Unpacks as `data, label`; the arrays are views into shared memory until the next `next()`."""

    data: NDArray[Any]
    label: NDArray[Any]
    index: NDArray[Any]  # each sample's record number in the dataset
    pad: int  # trailing samples that repeat earlier ones to fill the batch (MXNet's getpad())
    epoch: int
    seq: int  # batch number within the epoch

    def __iter__(self) -> Iterator[NDArray[Any]]:
        return iter((self.data, self.label))


@dataclass(frozen=True, slots=True)
class IteratorStatistics:
    batches: int
    epochs_finished: int
    wait_s: float  # time `next()` spent blocked on the daemon: the trainer's stall
    stale_batches_dropped: int


class BatchIterator:
    """Iterate the batches of one stream, epoch after epoch."""

    def __init__(
        self,
        request: Open,
        *,
        socket_path: str | os.PathLike[str] | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        autostart: bool | None = None,
    ) -> None:
        self.request = request
        self.timeout_s = timeout_s
        self._owner_pid = os.getpid()  # a forked child inherits the socket, not the stream: see close()
        self._socket_path = socket_path
        self._autostart = autostart
        self._conn, self._ring, self.opened = self._open(request)
        self._identity = stream_identity(request, self.opened)
        geometry = self._ring.geometry
        self.data_shape = geometry.array("data").shape
        self.label_shape = geometry.array("label").shape
        self.data_dtype = np.dtype(geometry.array("data").dtype)
        self.label_dtype = np.dtype(geometry.array("label").dtype)
        self.batch_size = request.batch_size
        self._epoch = request.epoch
        self._next_seq = request.batch
        self._epoch_done = False
        self._held: int | None = None
        self._held_fill = 0
        self._broken: PrefetchdError | None = None
        self.skipped: list[PrefetchdError] = []  # records the daemon skipped (skip mode), in the order told
        self._closed = False
        self._stats = {"batches": 0, "epochs": 0, "stale": 0}
        self._wait_s = 0.0

    def _open(self, request: Open) -> tuple[Connection, RingReader, Opened]:
        """A connection with `request`'s stream open on it, and the stream's ring mapped."""
        conn = connect(self._socket_path, timeout_s=min(self.timeout_s, 30.0), autostart=self._autostart)
        try:
            conn.send(request)
            opened = conn.receive(timeout_s=self.timeout_s, waiting_for="the stream to open")
            if not isinstance(opened, Opened):
                raise RemoteProtocolError(f"daemon answered Open with {opened.TYPE}")
            fd = conn.take_fd()
            try:
                ring = RingReader(fd, opened.segment_bytes)
            finally:
                os.close(fd)
        except BaseException:
            conn.close()
            raise
        return conn, ring, opened

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def batches_per_epoch(self) -> int:
        return self.opened.batches_per_epoch

    @property
    def samples_per_epoch(self) -> int:
        return self.opened.samples_per_epoch

    @property
    def position(self) -> tuple[int, int]:
        """(epoch, next batch): where the next `next()` reads from."""
        return self._epoch, self._next_seq

    def __iter__(self) -> BatchIterator:
        if self._epoch_done:
            self.reset()
        return self

    def __next__(self) -> Batch:
        self._check_usable()
        self._release_held()
        if self._epoch_done:
            raise StopIteration
        if self.opened.batches_per_epoch == 0:  # an empty object's bytes: each epoch ends before it begins
            self._epoch_done = True
            self._stats["epochs"] += 1
            raise StopIteration
        started = time.perf_counter()
        try:
            return self._receive_batch()
        finally:
            self._wait_s += time.perf_counter() - started

    def _receive_batch(self) -> Batch:
        assert self._ring is not None
        while True:
            try:
                message = self._conn.receive(timeout_s=self.timeout_s, waiting_for="the next batch")
            except PrefetchdError as exc:
                self._broken = exc
                raise
            if isinstance(message, BatchFrame):
                header = self._ring.deliver(message.slot, message.fill)
                if (message.epoch, message.seq) != (self._epoch, self._next_seq):
                    if (message.epoch, message.seq) > (self._epoch, self._next_seq):
                        raise RemoteProtocolError(
                            f"daemon sent batch {message.seq} of epoch {message.epoch}, "
                            f"expected batch {self._next_seq} of epoch {self._epoch}"
                        )
                    self._ring.release(message.slot)  # left over from before a seek
                    self._conn.send(Release(message.slot, message.fill))
                    self._stats["stale"] += 1
                    continue
                views = self._ring.take(message.slot)
                self._held = message.slot
                self._held_fill = message.fill
                self._next_seq += 1
                self._stats["batches"] += 1
                size = header.valid + header.pad  # "keep" mode's last batch is short
                return Batch(
                    views["data"][:size],
                    views["label"][:size],
                    views["index"][:size],  # a bytes stream has one index, the batch's offset
                    header.pad,
                    message.epoch,
                    message.seq,
                )
            if isinstance(message, EndOfEpoch):
                if message.epoch < self._epoch:
                    continue
                if message.epoch > self._epoch or message.batches != self._next_seq:
                    raise RemoteProtocolError(
                        f"daemon ended epoch {message.epoch} after {message.batches} batches; "
                        f"this client is at batch {self._next_seq} of epoch {self._epoch}"
                    )
                self._epoch_done = True
                self._stats["epochs"] += 1
                self._conn.flush()  # the trainer may do other work now (validation): the daemon gets its slots back
                raise StopIteration
            if isinstance(message, Error):  # not fatal: a record the daemon skipped (skip mode)
                skipped = error_from_wire(
                    {"code": message.code, "message": message.message, "url": message.url, "offset": message.offset}
                )
                self.skipped.append(skipped)
                log.warning("skipped a record: %s", skipped)
                continue
            raise RemoteProtocolError(f"unexpected {message.TYPE} frame in the middle of a stream")

    def _release_held(self) -> None:
        if self._held is None:
            return
        assert self._ring is not None
        slot, self._held = self._held, None
        self._ring.release(slot)
        self._conn.send_later(Release(slot, self._held_fill))
        # Releases go to the daemon a few per write (and all before next() waits): a write per batch woke the
        # daemon per batch, which on 2 cores took the trainer's core. Held back, they keep <= 1/4 of the ring.
        if self._conn.queued >= max(1, min(_RELEASES_PER_WRITE, self._ring.geometry.slot_count // 4)):
            self._conn.flush()

    def reset(self) -> None:
        """Start the next epoch. A no-op before the first batch of an epoch, as in MXNet."""
        self._check_usable()
        if self._next_seq == 0 and not self._epoch_done:
            return
        self._release_held()
        if not self._epoch_done:
            self._conn.send(Seek(self._epoch + 1, 0))
        self._epoch += 1
        self._next_seq = 0
        self._epoch_done = False

    def seek(self, epoch: int, batch: int = 0) -> None:
        """Continue from batch `batch` of `epoch` (deterministic: the same batch an uninterrupted run gets)."""
        self._check_usable()
        self._release_held()
        if (epoch, batch) < self._sent_from():
            # frames from the old position may be on their way, and some come after the new one: the client
            # cannot tell them from the new ones, so a seek back opens the stream afresh where it should start
            self._reopen(epoch, batch)
        else:
            # frames still on their way are either before the new position (dropped as stale) or the very
            # batches the new position yields next (an epoch is a pure function of its plan): both are right
            self._conn.send(Seek(epoch, batch))
        self._epoch, self._next_seq, self._epoch_done = epoch, batch, False

    def _sent_from(self) -> tuple[int, int]:
        """The first position the daemon may have sent frames for that this client has not read yet."""
        return (self._epoch + 1, 0) if self._epoch_done else (self._epoch, self._next_seq)

    def _reopen(self, epoch: int, batch: int) -> None:
        request = dataclasses.replace(self.request, epoch=epoch, batch=batch)
        conn, ring, opened = self._open(request)
        old_conn, old_ring = self._conn, self._ring
        self._conn, self._ring, self.opened = conn, ring, opened
        try:
            old_conn.send(Close())
        except PrefetchdError:
            pass  # the daemon is gone already; nothing to tell it
        old_conn.close()
        old_ring.close()
        changed = differences(self._identity, stream_identity(self.request, opened))
        if changed:  # the objects were overwritten since this iterator first opened them
            self._broken = IncompatibleState("the stream changed when it was reopened: " + "; ".join(changed))
            raise self._broken

    def state_dict(self) -> dict[str, Any]:
        """Where this iterator is, and what it reads: a small JSON-serialisable dict to save with a checkpoint.

        The batch the trainer holds counts as taken: loaded into an iterator over the same data and settings
        (in another process, through another daemon), the next `next()` returns the batch an uninterrupted
        run would have returned after this one.
        """
        epoch, batch = self._sent_from()
        return make_state(copy.deepcopy(self._identity), epoch, batch)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue where `state_dict()` was taken; `IncompatibleState` if it belongs to another stream."""
        self._check_usable()
        point = check_state(state, self._identity)
        if point.shuffle_window != self._identity["shuffle_window"]:
            self._pin_shuffle_window(point.shuffle_window, point.epoch, point.batch)
        elif (point.epoch, point.batch) != self._sent_from():
            self.seek(point.epoch, point.batch)
        elif self._epoch_done:
            self.reset()  # the state says the next epoch's first batch: so does the iterator, without a seek

    def _pin_shuffle_window(self, window: int, epoch: int, batch: int) -> None:
        """Reopen at (epoch, batch) with the saved stream's shuffle window: this daemon chose another one."""
        self._release_held()
        request, identity = self.request, self._identity
        self.request = dataclasses.replace(request, shuffle_window=window)
        self._identity = {**identity, "shuffle_window": window}
        try:
            self._reopen(epoch, batch)
        except BaseException:
            if self._broken is None:  # the daemon refused the window: the stream open until now goes on
                self.request, self._identity = request, identity
            raise
        self._epoch, self._next_seq, self._epoch_done = epoch, batch, False

    def statistics(self) -> IteratorStatistics:
        return IteratorStatistics(self._stats["batches"], self._stats["epochs"], self._wait_s, self._stats["stale"])

    def _check_usable(self) -> None:
        if self._closed:
            raise StreamClosed("this iterator was closed; open a new one")
        if os.getpid() != self._owner_pid:
            raise StreamClosed(
                f"this stream belongs to process {self._owner_pid}, which opened it; a forked process "
                "(a DataLoader worker, say) must open a stream of its own"
            )
        if self._broken is not None:
            raise self._broken

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if os.getpid() == self._owner_pid:  # a forked child's Close would end its parent's stream
            try:
                self._conn.send(Close())
            except PrefetchdError:
                pass  # the daemon is gone already; nothing to tell it
        self._conn.close()
        if self._ring is not None:
            self._ring.close()

    def __enter__(self) -> BatchIterator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            self.close()

    def __repr__(self) -> str:
        return (
            f"<BatchIterator {self.request.format} epoch={self._epoch} batch={self._next_seq}/"
            f"{self.batches_per_epoch} batch_size={self.batch_size} {self._ring!r}>"
        )


def idx_iter(
    image: str,
    label: str,
    *,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    reshuffle: bool = True,
    flat: bool = False,
    num_parts: int | None = None,
    part_index: int | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    last_batch: str = "discard",
    dtype: str = "float32",
    prefetch: int = 4,
    epoch: int = 0,
    socket_path: str | os.PathLike[str] | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    autostart: bool | None = None,
) -> BatchIterator:
    """Batches of an IDX (MNIST-format) image file and its label file, scaled as `mx.io.MNISTIter` scales them.

    `last_batch`: "discard" drops a final partial batch (MXNet's MNISTIter), "pad" fills it with samples
    from the start of the partition and reports how many in `Batch.pad`, "keep" yields it short.
    `num_parts`/`part_index` (or `world_size`/`rank`, the same) pick this trainer's part, as MXNet splits.
    """
    num_parts, part_index = choose_partition(
        num_parts=num_parts, part_index=part_index, world_size=world_size, rank=rank
    )
    request = Open(
        format="idx",
        sources={"image": image, "label": label},
        batch_size=batch_size,
        shuffle=shuffle,
        reshuffle=reshuffle,
        seed=seed,
        num_parts=num_parts,
        part_index=part_index,
        epoch=epoch,
        last_batch=last_batch,
        prefetch=prefetch,
        decode={"flat": flat, "dtype": dtype},
    )
    return BatchIterator(request, socket_path=socket_path, timeout_s=timeout_s, autostart=autostart)


def recordio_iter(
    rec: str,
    idx: str | None = None,
    *,
    batch_size: int,
    data_shape: tuple[int, int, int],
    label_width: int = 1,
    shuffle: bool = False,
    seed: int = 0,
    reshuffle: bool = True,
    resize: int = -1,
    rand_crop: bool = False,
    rand_mirror: bool = False,
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0),
    std: tuple[float, float, float] = (1.0, 1.0, 1.0),
    scale: float = 1.0,
    dtype: str = "float32",
    pad: int = 0,
    fill_value: int = 255,
    mirror: bool = False,
    inter_method: int = 1,
    num_parts: int | None = None,
    part_index: int | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    last_batch: str = "pad",
    preprocess_threads: int = 0,
    skip_bad: bool = False,
    prefetch: int = 4,
    epoch: int = 0,
    socket_path: str | os.PathLike[str] | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    autostart: bool | None = None,
) -> BatchIterator:
    """Batches of decoded images from a RecordIO file (`.rec`, and its `.idx` if there is one), CHW.

    Preprocessing is `mx.io.ImageRecordIter`'s: `resize` the shorter side, crop to `data_shape` (centre, or
    random with `rand_crop`), `rand_mirror`, then `(pixel - mean) / std * scale` per channel (r, g, b).
    `preprocess_threads` caps the daemon's decode workers used per batch (0: all of them). With
    `skip_bad=True` an undecodable or corrupt record is dropped from its batch (counted in `Batch.pad`,
    listed in `BatchIterator.skipped`) instead of ending the stream with an error naming its offset.
    """
    sources = {"rec": rec} if idx is None else {"rec": rec, "idx": idx}
    num_parts, part_index = choose_partition(
        num_parts=num_parts, part_index=part_index, world_size=world_size, rank=rank
    )
    request = Open(
        format="recordio",
        sources=sources,
        batch_size=batch_size,
        shuffle=shuffle,
        reshuffle=reshuffle,
        seed=seed,
        num_parts=num_parts,
        part_index=part_index,
        epoch=epoch,
        last_batch=last_batch,
        prefetch=prefetch,
        decode={
            "data_shape": [int(v) for v in data_shape],
            "resize": int(resize),
            "rand_crop": bool(rand_crop),
            "rand_mirror": bool(rand_mirror),
            "mean": [float(v) for v in mean],
            "std": [float(v) for v in std],
            "scale": float(scale),
            "dtype": dtype,
            "pad": int(pad),
            "fill_value": int(fill_value),
            "mirror": bool(mirror),
            "inter_method": int(inter_method),
            "label_width": int(label_width),
            "preprocess_threads": int(preprocess_threads),
            "skip_bad": bool(skip_bad),
        },
    )
    return BatchIterator(request, socket_path=socket_path, timeout_s=timeout_s, autostart=autostart)


def bytes_iter(
    url: str,
    *,
    batch_bytes: int = 8 << 20,
    shuffle: bool = False,
    seed: int = 0,
    num_parts: int | None = None,
    part_index: int | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    prefetch: int = 8,
    epoch: int = 0,
    socket_path: str | os.PathLike[str] | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    autostart: bool | None = None,
) -> BatchIterator:
    """An object's raw bytes, `batch_bytes` per batch (the last one shorter): `Batch.data` is a uint8 view.

    The daemon reads each batch with one ranged GET straight into shared memory, up to `prefetch` of them
    at once; `Batch.index[0]` is the batch's byte offset. With `shuffle=True` the blocks come in a seeded
    order; `num_parts`/`part_index` split the object into contiguous runs of blocks.
    """
    num_parts, part_index = choose_partition(
        num_parts=num_parts, part_index=part_index, world_size=world_size, rank=rank
    )
    request = Open(
        format="bytes",
        sources={"object": url},
        batch_size=batch_bytes,
        shuffle=shuffle,
        seed=seed,
        num_parts=num_parts,
        part_index=part_index,
        epoch=epoch,
        last_batch="keep",
        prefetch=prefetch,
    )
    return BatchIterator(request, socket_path=socket_path, timeout_s=timeout_s, autostart=autostart)
