"""The control server: accept, check the peer, shake hands, open the stream, serve it, clean up.

Whatever one client does (a malformed frame, a missing object, a crash), the error is reported to that
client and its stream alone is closed; the daemon keeps serving the others. A client is held to the
daemon's per-client caps and its allowlist of prefixes before any memory is taken or byte fetched, and
what it is told passes through the redactor, as the log does. On shutdown every client is told so.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import os
import socket
from collections.abc import Callable
from concurrent.futures import Executor

from prefetchd_client import layout
from prefetchd_client.errors import (
    AccessDenied,
    DaemonError,
    DaemonUnavailable,
    InvalidRequest,
    PrefetchdError,
    ProtocolError,
    RemoteProtocolError,
)
from prefetchd_client.protocol import PROTOCOL_VERSION, Error, Hello, Message, Open, Opened, Upload, Welcome

from .. import __version__
from ..config import Config
from ..decode.pool import DecodePool
from ..fetch.router import SourceRouter
from ..fetch.source import parse_s3_url, scheme_of
from ..observe.snapshot import DaemonSnapshot, FinishedStreams
from ..readers.base import Reader
from ..readers.idx import IdxReader
from ..readers.raw import RawReader
from ..readers.recordio import RecordIOReader
from ..redaction import Redactor
from ..ring.segment import Segment
from ..ring.writer import RingWriter
from .allowlist import check_local_sources_for, check_sources
from .limits import ClientLimits
from .peer import PeerConnection, PeerGone
from .stream import Stream
from .upload import UploadSession, buffer_bytes_for

log = logging.getLogger("prefetchd.serve.control")

HANDSHAKE_TIMEOUT_S = 10.0
OPEN_TIMEOUT_S = 60.0


class ControlServer:
    """Serves every connection of one daemon; `streams` is what `prefetchd status` reports."""

    def __init__(self, config: Config, router: SourceRouter, executor: Executor, pool: DecodePool) -> None:
        self.config = config
        self.router = router
        self.executor = executor
        self.pool = pool
        self.streams: dict[int, Stream] = {}
        self._bytes_streams = 0  # bytes streams open or opening, which share the target rate
        self.connections = 0
        self.limits = ClientLimits(config.max_streams_per_client, config.max_ring_bytes_per_client)
        self.redact = Redactor.for_settings(config.s3)
        self.draining = False  # set by the daemon before it cancels serve(): connections say goodbye
        self.finished = FinishedStreams()  # closed streams' counters, so that the daemon's totals never go down
        self._ids = itertools.count(1)
        self.on_idle: Callable[[], None] = lambda: None
        self.on_busy: Callable[[], None] = lambda: None

    def snapshot(self) -> DaemonSnapshot:
        """The daemon as `/metrics`, `/streams` and `/healthz` show it."""
        router = self.router
        return DaemonSnapshot(
            version=__version__,
            pid=os.getpid(),
            connections=self.connections,
            streams=tuple(stream.snapshot() for stream in self.streams.values()),
            finished=self.finished,
            s3=router.s3.statistics() if router.s3 is not None else None,
            cache=router.cache.statistics() if router.cache is not None else None,
        )

    async def serve(self, listening: socket.socket) -> None:
        """Accept until cancelled; each connection is a task in this server's TaskGroup."""
        loop = asyncio.get_running_loop()
        async with asyncio.TaskGroup() as group:
            while True:
                sock, _ = await loop.sock_accept(listening)
                group.create_task(self._serve_connection(sock))

    async def _serve_connection(self, sock: socket.socket) -> None:
        self.connections += 1
        self.on_busy()
        try:
            peer = PeerConnection(sock)
            try:
                await self._converse(peer)
            except PeerGone:
                log.info("client pid %d went away", peer.credentials.pid)
            except Exception as exc:
                await self._report(peer, _first_error(exc))
            except asyncio.CancelledError:
                if self.draining:
                    await self._report(peer, self._shutting_down())
                raise
            finally:
                peer.close()
        finally:
            self.connections -= 1
            if self.connections == 0:
                self.on_idle()

    async def _report(self, peer: PeerConnection, exc: PrefetchdError) -> None:
        code = "protocol_error" if isinstance(exc, RemoteProtocolError) else exc.code
        level = logging.WARNING if isinstance(exc, ProtocolError) else logging.INFO
        log.log(level, "client pid %d: %s", peer.credentials.pid, exc)
        if not peer.can_send():
            return  # a frame was cut short by the cancellation: another would be read as garbage
        message = self.redact(exc.message)
        try:
            await asyncio.wait_for(peer.send(Error(code, message, exc.url, exc.offset, True)), 5.0)
        except (PeerGone, OSError, TimeoutError):
            pass  # the client is gone; nothing more to tell it

    def _shutting_down(self) -> DaemonUnavailable:
        return DaemonUnavailable(
            f"the prefetchd daemon (pid {os.getpid()}) at {self.config.socket_path} is shutting down; "
            "start it again (or let the client start one) and reopen the stream"
        )

    async def _converse(self, peer: PeerConnection) -> None:
        self._check_peer(peer)
        pid = peer.credentials.pid
        self.limits.open_stream(pid)
        try:
            await self._open_and_serve(peer)
        finally:
            self.limits.close_stream(pid)

    async def _open_and_serve(self, peer: PeerConnection) -> None:
        await self._handshake(peer)
        request = await _receive_within(peer, OPEN_TIMEOUT_S, "an open frame")
        if request is None:
            return
        if isinstance(request, Upload):
            await self._serve_upload(peer, request)
            return
        if not isinstance(request, Open):
            raise RemoteProtocolError(f"expected an open or upload frame after the handshake, got {request.TYPE}")
        if self.config.allowed_prefixes:  # local paths are resolved on disk: off the loop
            await asyncio.to_thread(check_sources, request.sources.values(), self.config.allowed_prefixes)
        else:
            check_local_sources_for(peer.credentials.uid, request.sources.values())
        # `--target-rate` is the host's: the bytes streams open at once share it, each window sized for its
        # share (the first alone gets it all), so that N ranks do not map N windows each sized for the link
        sharing = int(request.format == "bytes")
        self._bytes_streams += sharing
        try:
            target = max(1, self.config.target_bytes_per_s // max(1, self._bytes_streams))
            config = dataclasses.replace(self.config, target_bytes_per_s=target) if sharing else self.config
            reader = await open_reader(request, self.router, config, self.executor, self.pool)
            await self._serve_reader(peer, request, reader)
        finally:
            self._bytes_streams -= sharing

    async def _serve_reader(self, peer: PeerConnection, request: Open, reader: Reader) -> None:
        shape = reader.shape
        if shape.batches_per_epoch == 0 and not (request.format == "bytes" and shape.samples_per_epoch == 0):
            # an empty object read as bytes is empty, not a batch_size too large for the data
            raise InvalidRequest(
                f"the partition holds {shape.samples_per_epoch} samples, not one whole batch of "
                f"{request.batch_size}; use a smaller batch_size or last_batch='keep', 'pad' or 'round'"
            )
        stream_id = next(self._ids)
        geometry = layout.RingGeometry.build(2, shape.arrays)
        ring_bytes = shape.ring_bytes or self.config.ring_bytes
        slots = max(request.prefetch + 2, min(self.config.max_slots, ring_bytes // geometry.slot_bytes))
        slots = min(slots, max(shape.batches_per_epoch, 2) + 2)  # more than an epoch ahead only costs memory
        geometry = layout.RingGeometry.build(slots, shape.arrays)
        self.limits.claim_ring(peer.credentials.pid, geometry.segment_bytes)
        try:
            await self._serve_stream(peer, request, reader, stream_id, geometry)
        finally:
            self.limits.release_ring(peer.credentials.pid, geometry.segment_bytes)

    async def _serve_stream(
        self, peer: PeerConnection, request: Open, reader: Reader, stream_id: int, geometry: layout.RingGeometry
    ) -> None:
        shape = reader.shape
        ring = RingWriter(Segment(f"prefetchd-stream-{stream_id}", geometry.segment_bytes, seal=False), geometry)
        stream = Stream(stream_id, peer, reader, ring, request)
        self.streams[stream_id] = stream
        try:
            await reader.attach(stream_id, ring.segment)
            ring.segment.seal()  # the client's fd must never map it writable
            opened = Opened(
                stream_id,
                geometry.segment_bytes,
                shape.batches_per_epoch,
                shape.samples_per_epoch,
                {role: info.describe() for role, info in shape.objects.items()},
                shape.shuffle_window,
            )
            await peer.send(opened, fds=(ring.segment.fd,))
            log.info(
                "stream %d opened for pid %d: %s %s, %d batches of %d, %d slots",
                stream_id,
                peer.credentials.pid,
                request.format,
                request.sources,
                shape.batches_per_epoch,
                request.batch_size,
                geometry.slot_count,
            )
            await stream.run()
        finally:
            del self.streams[stream_id]
            self.finished = self.finished.plus(stream.snapshot())
            reader.detach()
            ring.close()
            log.info("stream %d closed", stream_id)

    async def _serve_upload(self, peer: PeerConnection, request: Upload) -> None:
        """Write one object for the client (serve/upload.py), inside the allowlist and its shared-memory cap."""
        if scheme_of(request.url) != "s3" or self.router.s3 is None:
            raise InvalidRequest(f"{request.url}: uploads go to s3://bucket/key URLs only", url=request.url)
        parse_s3_url(request.url)
        if self.config.allowed_prefixes:
            await asyncio.to_thread(check_sources, [request.url], self.config.allowed_prefixes)
        buffer_bytes = buffer_bytes_for(request)
        self.limits.claim_ring(peer.credentials.pid, buffer_bytes)
        try:
            await UploadSession(next(self._ids), peer, self.router.s3, request).run()
        finally:
            self.limits.release_ring(peer.credentials.pid, buffer_bytes)

    def _check_peer(self, peer: PeerConnection) -> None:
        uid = peer.credentials.uid
        if uid != os.getuid() and uid not in self.config.allowed_uids:
            raise AccessDenied(
                f"uid {uid} may not use this daemon (it runs as uid {os.getuid()}; allow more users with allowed_uids)"
            )

    async def _handshake(self, peer: PeerConnection) -> None:
        hello = await _receive_within(peer, HANDSHAKE_TIMEOUT_S, "its hello frame")
        if hello is None:
            raise RemoteProtocolError("client closed the connection before its handshake")
        if not isinstance(hello, Hello):
            raise RemoteProtocolError(f"expected a hello frame first, got {hello.TYPE}")
        if hello.protocol != PROTOCOL_VERSION or hello.ring_format != layout.FORMAT_VERSION:
            raise RemoteProtocolError(
                f"client {hello.client} speaks protocol {hello.protocol} / ring format {hello.ring_format}; "
                f"this daemon (prefetchd {__version__}) speaks protocol {PROTOCOL_VERSION} / ring format "
                f"{layout.FORMAT_VERSION}: install matching prefetchd and prefetchd-client releases"
            )
        await peer.send(Welcome(PROTOCOL_VERSION, layout.FORMAT_VERSION, f"prefetchd/{__version__}", os.getpid()))


async def _receive_within(peer: PeerConnection, timeout_s: float, what: str) -> Message | None:
    try:
        async with asyncio.timeout(timeout_s):
            return await peer.receive()
    except TimeoutError:
        raise RemoteProtocolError(f"the client sent no {what} within {timeout_s:.0f} s") from None


def _first_error(exc: Exception) -> PrefetchdError:
    """The error to tell the client: ours as they are; anything else is a daemon bug, logged in full."""
    if isinstance(exc, ExceptionGroup):
        ours = exc.subgroup(PrefetchdError)
        if ours is not None:
            leaf: BaseException = ours
            while isinstance(leaf, BaseExceptionGroup):
                leaf = leaf.exceptions[0]
            assert isinstance(leaf, PrefetchdError)
            return leaf
    if isinstance(exc, PrefetchdError):
        return exc
    log.error("internal error serving a client", exc_info=exc)
    return DaemonError(f"internal daemon error: {type(exc).__name__}: {exc}; the daemon log has the traceback")


async def open_reader(
    request: Open, router: SourceRouter, config: Config, executor: Executor, pool: DecodePool
) -> Reader:
    """The reader for the request's format."""
    if request.format == "idx":
        return await IdxReader.open(request, router=router, config=config, executor=executor)
    if request.format == "recordio":
        return await RecordIOReader.open(request, router=router, config=config, executor=executor, pool=pool)
    if request.format == "bytes":
        return await RawReader.open(request, router=router, config=config, executor=executor)
    raise InvalidRequest(f"unknown format {request.format!r} (this daemon serves: idx, recordio, bytes)")
