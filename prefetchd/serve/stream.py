"""One client's stream: reader → ring slots → Batch frames, and Release/Seek/Close coming back.

Two tasks in one TaskGroup: the producer fills and publishes slots epoch after epoch (bounded by the ring,
which only the client's Releases free), and the receiver applies the client's frames. A Seek replaces the
producer; a Close, an EOF or the death of the client's process ends the stream and frees its ring.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import deque
from dataclasses import dataclass
from typing import Any

from prefetchd_client.errors import PrefetchdError, RemoteProtocolError
from prefetchd_client.protocol import Batch, Close, EndOfEpoch, Error, Open, Release, Seek

from ..plan.epoch import BatchSpec, EpochPlan
from ..readers.base import EpochFill, FillResult, Reader
from ..ring.writer import RingWriter
from .peer import PeerConnection, PeerGone

log = logging.getLogger("prefetchd.serve.stream")


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

    async def run(self) -> None:
        """Serve until the client closes, goes away or breaks the protocol; errors propagate."""
        async with asyncio.TaskGroup() as group:
            self._producers = [group.create_task(self._produce(self.request.epoch, self.request.batch))]
            watcher = group.create_task(_wait_for_exit(self.peer.credentials.pid))
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
            elif isinstance(message, Seek):
                if message.epoch < 0 or message.batch < 0:
                    raise RemoteProtocolError(f"Seek to epoch {message.epoch} batch {message.batch}")
                old = self._producers.pop()
                old.cancel()
                await asyncio.wait([old])
                self._seeks += 1
                self._producers.append(group.create_task(self._produce(message.epoch, message.batch)))
            else:
                raise RemoteProtocolError(f"a {message.TYPE} frame is not expected on an open stream")

    async def _produce(self, epoch: int, batch: int) -> None:
        try:
            await self._produce_epochs(epoch, batch)
        except PeerGone:
            pass  # the receiver sees the EOF and ends the stream

    async def _produce_epochs(self, epoch: int, batch: int) -> None:
        while True:
            self._epoch = epoch
            plan = self.reader.plan(epoch)
            async with self.reader.start_epoch(plan, batch) as filling:
                await self._fill_epoch(filling, plan, batch)
            await self.peer.send(EndOfEpoch(epoch, plan.batch_count))
            epoch, batch = epoch + 1, 0

    async def _fill_epoch(self, filling: EpochFill, plan: EpochPlan, first: int) -> None:
        """Fill up to `reader.fill_depth` slots at once (decode workers stay busy); publish them in order."""
        in_flight: deque[tuple[BatchSpec, int, asyncio.Task[FillResult | None]]] = deque()
        try:
            async with asyncio.TaskGroup() as group:
                for seq in range(first, plan.batch_count):
                    # publish before filling more when the depth is reached, or when every free slot is in
                    # flight: waiting for a slot the client cannot free (it has not got those batches) deadlocks
                    while in_flight and (len(in_flight) >= self.reader.fill_depth or not self.ring.has_free_slot()):
                        await self._publish_first(plan.epoch, in_flight)
                    spec = plan.batch(seq)
                    slot = await self.ring.acquire()
                    in_flight.append((spec, slot, group.create_task(filling.fill(spec, self.ring.arrays(slot)))))
                while in_flight:
                    await self._publish_first(plan.epoch, in_flight)
        except BaseExceptionGroup as group_error:
            errors = group_error.exceptions
            raise errors[0] if len(errors) == 1 else group_error from None
        finally:
            for _, slot, _ in in_flight:  # fills that failed or were cancelled: every one has finished by now
                self.ring.abort(slot)

    async def _publish_first(
        self, epoch: int, in_flight: deque[tuple[BatchSpec, int, asyncio.Task[FillResult | None]]]
    ) -> None:
        spec, slot, task = in_flight[0]
        result = await task
        in_flight.popleft()
        valid, pad = (spec.valid, spec.pad) if result is None else (result.valid, result.pad)
        fill = self.ring.publish(slot, epoch=epoch, seq=spec.seq, valid=valid, pad=pad)
        await self.peer.send(Batch(slot, fill, epoch, spec.seq))
        self._batches_sent += 1
        if result is not None:
            await self._report_skipped(result.skipped)

    async def _report_skipped(self, skipped: list[PrefetchdError]) -> None:
        """Skip mode: each skipped record is logged here and told to the client, which counts it."""
        for error in skipped:
            self._skipped += 1
            log.warning("stream %d skipped a record: %s", self.id, error)
            await self.peer.send(Error(error.code, error.message, error.url, error.offset, fatal=False))

    def statistics(self) -> StreamStatistics:
        ring = self.ring.statistics()
        return StreamStatistics(self.id, self._epoch, self._batches_sent, self._seeks, ring.free, ring.ready)

    def __repr__(self) -> str:
        s = self.statistics()
        return f"<Stream {s.stream} {self.request.format} epoch={s.epoch} sent={s.batches_sent} {self.ring!r}>"


async def _wait_for_exit(pid: int) -> bool:
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
