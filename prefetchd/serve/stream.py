"""One client's stream: reader → ring slots → Batch frames, and Release/Seek/Close coming back.

Two tasks in one TaskGroup: the producer fills and publishes slots epoch after epoch (bounded by the ring,
which only the client's Releases free), and the receiver applies the client's frames. A Seek replaces the
producer; a Close, an EOF or the death of the client's process ends the stream and frees its ring.

The trainer's stall is measured here, from the daemon's side: the client sends its Releases a few per
write, and always before `next()` waits, so a Release that leaves it no batch queued means it is blocked
until the next batch is sent (so is a fresh stream, and a Seek). That is `trainer_wait_s`, what
`prefetchd_trainer_wait_seconds_total` shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import traceback
from collections import deque
from dataclasses import dataclass
from typing import Any, NamedTuple

from prefetchd_client.errors import PrefetchdError, RemoteProtocolError
from prefetchd_client.protocol import Batch, Close, EndOfEpoch, Error, Open, Release, Seek

from ..fetch.flow import Flow, current_flow
from ..observe.snapshot import StreamSnapshot
from ..plan.epoch import BatchSpec, EpochPlan
from ..readers.base import EpochFill, FillResult, Reader
from ..ring.writer import RingWriter
from .peer import PeerConnection, PeerGone

log = logging.getLogger("prefetchd.serve.stream")


class _InFlight(NamedTuple):
    """A slot being filled: its epoch's plan, the batch, the slot and the task filling it."""

    plan: EpochPlan
    spec: BatchSpec
    slot: int
    task: asyncio.Task[FillResult | None]


@dataclass(frozen=True, slots=True)
class StreamStatistics:
    stream: int
    epoch: int
    batches_sent: int
    seeks: int
    ring_free: int
    ring_ready: int


class Stream:
    def __init__(self, stream_id: int, peer: PeerConnection, reader: Reader, ring: RingWriter, request: Open):
        self.id = stream_id
        self.peer = peer
        self.reader = reader
        self.ring = ring
        self.request = request
        self._epoch = request.epoch
        self._batches_sent = 0
        self._seeks = 0
        self._skipped = 0
        self._producers: list[asyncio.Task[None]] = []
        self._wait_s = 0.0  # the trainer's stall so far
        self._waiting_since: float | None = time.monotonic()  # a new stream's trainer waits for its first batch
        self._end_sent = False  # an EndOfEpoch is the next thing the trainer reads: it is not waiting on a batch
        self._fill_s = 0.0
        self._bytes_sent = 0
        # a batch's array bytes per record: one multiply per batch counts the bytes handed over
        first = ring.geometry.arrays[0].shape
        self._records_per_slot = first[0] if first and first[0] > 0 else 1
        self._slot_payload_bytes = sum(array.nbytes for array in ring.geometry.arrays)
        # its GETs at the daemon's shared gates; with a ring full of unread batches they are read-ahead only
        self.flow = Flow(f"stream {stream_id}", ahead=ring.all_ready)

    async def run(self) -> None:
        """Serve until the client closes, goes away or breaks the protocol; errors propagate."""
        current_flow.set(self.flow)  # inherited by every task below: the producer's fetches count as ours
        async with asyncio.TaskGroup() as group:
            self._producers = [group.create_task(self._produce(self.request.epoch, self.request.batch))]
            watcher = group.create_task(wait_for_exit(self.peer.credentials.pid))
            receiver = group.create_task(self._receive(group))
            done, _ = await asyncio.wait([watcher, receiver], return_when=asyncio.FIRST_COMPLETED)
            if watcher in done and watcher.result():
                log.info("stream %d: client process %d exited", self.id, self.peer.credentials.pid)
            for task in (watcher, receiver, *self._producers):
                task.cancel()
        # a cancelled producer keeps its CancelledError, whose frames hold slot arrays: let go before the ring closes
        self._producers = []

    async def _receive(self, group: asyncio.TaskGroup) -> None:
        while True:
            message = await self.peer.receive()
            if message is None or isinstance(message, Close):
                return
            if isinstance(message, Release):
                self.ring.release(message.slot, message.fill)
                if not self._end_sent and self.ring.statistics().ready == 0:
                    self._start_waiting()  # it let go of its last batch and has none queued
            elif isinstance(message, Seek):
                if message.epoch < 0 or message.batch < 0:
                    raise RemoteProtocolError(f"Seek to epoch {message.epoch} batch {message.batch}")
                old = self._producers.pop()
                old.cancel()
                await asyncio.wait([old])
                self._seeks += 1
                self._start_waiting()
                self._producers.append(group.create_task(self._produce(message.epoch, message.batch)))
            else:
                raise RemoteProtocolError(f"a {message.TYPE} frame is not expected on an open stream")

    async def _produce(self, epoch: int, batch: int) -> None:
        try:
            await self._produce_epochs(epoch, batch)
        except PeerGone:
            pass  # the receiver sees the EOF and ends the stream
        except BaseException as exc:
            release_frames(exc)
            raise

    async def _produce_epochs(self, epoch: int, batch: int) -> None:
        """Fill up to `reader.fill_depth` slots at once (decode workers stay busy); publish them in order.

        A reader whose epochs share nothing (`epochs_overlap`: raw bytes) has the next epoch's first fills
        start while this one's last are still coming, so its fetch window stays full across the boundary
        (a drained window cost a 1 GB stream ~0.16 s an epoch at 30 ms); any other reader's fills finish
        inside their epoch's context.
        """
        in_flight: deque[_InFlight] = deque()
        try:
            async with asyncio.TaskGroup() as group:
                while True:
                    plan = self.reader.plan(epoch)
                    if not plan.batch_count:  # an empty object read as bytes: the client ends its epochs by itself
                        await asyncio.Event().wait()
                    async with self.reader.start_epoch(plan, batch) as filling:
                        self._epoch = epoch
                        for seq in range(batch, plan.batch_count):
                            # publish before filling more when the depth is reached, or when every free slot is
                            # in flight: waiting for a slot the client cannot free (it has not got those
                            # batches) deadlocks
                            while in_flight and (
                                len(in_flight) >= self.reader.fill_depth or not self.ring.has_free_slot()
                            ):
                                await self._publish_first(in_flight)
                            spec = plan.batch(seq)
                            slot = await self.ring.acquire()
                            fill = group.create_task(self._timed_fill(filling, spec, self.ring.arrays(slot)))
                            in_flight.append(_InFlight(plan, spec, slot, fill))
                        if batch >= plan.batch_count or not self.reader.epochs_overlap:
                            while in_flight:
                                await self._publish_first(in_flight)
                        if batch >= plan.batch_count:  # a seek to an epoch's end: nothing to fill, its end told
                            await self._end_epoch(plan)
                    epoch, batch = epoch + 1, 0
        except BaseExceptionGroup as group_error:
            errors = group_error.exceptions
            raise errors[0] if len(errors) == 1 else group_error from None
        finally:
            for filling_slot in in_flight:  # fills that failed or were cancelled: every one has finished by now
                self.ring.abort(filling_slot.slot)

    async def _timed_fill(self, filling: EpochFill, spec: BatchSpec, out: dict[str, Any]) -> FillResult | None:
        started = time.monotonic()
        try:
            return await filling.fill(spec, out)
        except BaseException as exc:
            del out
            release_frames(exc)
            raise
        finally:
            self._fill_s += time.monotonic() - started

    def _start_waiting(self) -> None:
        if self._waiting_since is None:
            self._waiting_since = time.monotonic()

    def _stop_waiting(self) -> None:
        if self._waiting_since is not None:
            self._wait_s += time.monotonic() - self._waiting_since
            self._waiting_since = None

    async def _publish_first(self, in_flight: deque[_InFlight]) -> None:
        """Publish the oldest fill once it is done; after an epoch's last batch, tell the client its end."""
        plan, spec, slot, task = in_flight[0]
        result = await task
        in_flight.popleft()
        valid, pad = (spec.valid, spec.pad) if result is None else (result.valid, result.pad)
        fill = self.ring.publish(slot, epoch=plan.epoch, seq=spec.seq, valid=valid, pad=pad)
        await self.peer.send(Batch(slot, fill, plan.epoch, spec.seq))
        self._batches_sent += 1
        self._bytes_sent += self._slot_payload_bytes * valid // self._records_per_slot
        self._end_sent = False
        self._stop_waiting()
        if result is not None:
            await self._report_skipped(result.skipped)
        if spec.seq == plan.batch_count - 1:
            await self._end_epoch(plan)

    async def _end_epoch(self, plan: EpochPlan) -> None:
        await self.peer.send(EndOfEpoch(plan.epoch, plan.batch_count))
        self._end_sent = True

    async def _report_skipped(self, skipped: list[PrefetchdError]) -> None:
        """Skip mode: each skipped record is logged here and told to the client, which counts it."""
        for error in skipped:
            self._skipped += 1
            log.warning("stream %d skipped a record: %s", self.id, error)
            await self.peer.send(Error(error.code, error.message, error.url, error.offset, fatal=False))

    def statistics(self) -> StreamStatistics:
        ring = self.ring.statistics()
        return StreamStatistics(self.id, self._epoch, self._batches_sent, self._seeks, ring.free, ring.ready)

    def snapshot(self) -> StreamSnapshot:
        """What `/streams` and the metrics show of this stream; a wait in progress counts up to now."""
        ring = self.ring.statistics()
        waiting = 0.0 if self._waiting_since is None else time.monotonic() - self._waiting_since
        return StreamSnapshot(
            stream=self.id,
            pid=self.peer.credentials.pid,
            format=self.request.format,
            sources=dict(self.request.sources),
            epoch=self._epoch,
            batches_sent=self._batches_sent,
            seeks=self._seeks,
            ring_slots=ring.slots,
            ring_free=ring.free,
            ring_filling=ring.filling,
            ring_ready=ring.ready,
            trainer_wait_s=self._wait_s + waiting,
            fill_s=self._fill_s,
            bytes_sent=self._bytes_sent,
            decode_s=self.reader.decode_s,
            fetches_in_flight=self.flow.in_flight,
            fetches_waiting=self.flow.waiting,
            fetches_admitted=self.flow.admitted,
        )

    def __repr__(self) -> str:
        s = self.statistics()
        return f"<Stream {s.stream} {self.request.format} epoch={s.epoch} sent={s.batches_sent} {self.ring!r}>"


async def wait_for_exit(pid: int) -> bool:
    """Returns True when process `pid` exits (a pidfd fires at once); waits forever if it cannot watch.

    EOF on the socket is not proof of death: a trainer that forked DataLoader workers after connecting
    leaves them holding the socket open.
    """
    try:
        pidfd = os.pidfd_open(pid) if pid > 0 else -1
    except OSError:
        pidfd = -1
    if pidfd < 0:
        await asyncio.Event().wait()
        return False
    loop = asyncio.get_running_loop()
    exited = loop.create_future()
    loop.add_reader(pidfd, lambda: _settle(exited, True))
    try:
        return bool(await exited)
    finally:
        loop.remove_reader(pidfd)
        with contextlib.suppress(OSError):
            os.close(pidfd)


def _settle(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


def release_frames(error: BaseException) -> None:
    """Drop the locals of the frames `error` went through: they have run, and they hold views of ring slots.

    A task keeps the exception it ended with, and the traceback keeps every frame's locals: the task group
    (whose parent is the task: a cycle), the slot arrays, the buffers the fetches wrote into. Left there, a
    closed stream's ring could not be unmapped without a full collection, which holds the loop.
    """
    traceback.clear_frames(error.__traceback__)
