"""The lean path for bulk bytes: ranged GETs whose bodies the kernel hands straight to the caller's memory.

aiobotocore reads a body through aiohttp's stream reader: a fresh `bytes` per socket read, joined and then
copied into the destination, ~1.7 CPU-s per GB on this machine. Here an `asyncio.BufferedProtocol` gives the
socket the caller's own buffer (a ring slot, a chunk), so a body costs one copy, the kernel's (measured in
docs/benchmarks.md). It does one thing: GET a byte range over kept-alive HTTP/1.1 connections, with TLS,
timeouts and reconnects. Signing, HEAD, errors, retries of refused requests and redirects stay with
aiobotocore: any answer other than the exact 206 asked for is `Refused`, and the caller takes that path.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import cast

from .http11 import (
    HEAD_END,
    MAX_HEAD_BYTES,
    MalformedResponse,
    ResponseHead,
    Target,
    parse_head,
    parse_target,
    range_request,
)

Accept = Callable[[ResponseHead], bool]  # whether a head announces the body the caller asked for


class Refused(Exception):
    """The server answered, but not with the body asked for: an error, a redirect, another range, or an
    answer this path does not read (chunked, malformed). `status` is None where there was no usable head."""

    def __init__(self, reason: str, status: int | None) -> None:
        super().__init__(reason)
        self.status = status


class BodyBroken(Exception):
    """The exchange broke off after `received` body bytes reached the caller's buffer (0: before the body)."""

    def __init__(self, received: int, reason: str) -> None:
        super().__init__(f"{reason} after {received} body bytes")
        self.received = received


class Progress:
    """How far a GET has got: when its answer's head came (`clock`'s time; None: not yet), and how many body
    bytes have reached the caller's buffer (what a hedge need not ask for)."""

    __slots__ = ("_clock", "_on_first_byte", "first_byte_at", "received", "started_at")

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, on_first_byte: Callable[[float], None] | None = None
    ) -> None:
        self._clock = clock
        self._on_first_byte = on_first_byte  # told the GET's start time when its first byte comes
        self.started_at = clock()
        self.first_byte_at: float | None = None
        self.received = 0

    def arrived(self) -> None:
        """The head of the answer asked for has come: the first byte's time."""
        if self.first_byte_at is None:
            self.first_byte_at = self._clock()
            if self._on_first_byte is not None:
                self._on_first_byte(self.started_at)


class _StaleConnection(Exception):
    """A kept-alive connection the server had closed: nothing was received, the request may go again."""


class _Exchange(asyncio.BufferedProtocol):
    """One connection, one response at a time: the head into a scratch buffer, an accepted body into `out`."""

    def __init__(self, origin: tuple[str, str, int]) -> None:
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self._scratch = bytearray(MAX_HEAD_BYTES)
        self._scratch_view = memoryview(self._scratch)
        self._used = 0  # head bytes in the scratch buffer
        self._target = memoryview(b"")  # where the body goes if the head is the one asked for
        self._out: memoryview | None = None  # the accepted body's destination
        self.accepted = False
        self._received = 0
        self._accept: Accept | None = None
        self._done: asyncio.Future[ResponseHead] | None = None
        self.head: ResponseHead | None = None
        self.closed = False
        self.last_progress_s = 0.0
        self._progress: Progress | None = None

    # the caller's side

    def begin(self, out: memoryview, accept: Accept, progress: Progress | None) -> asyncio.Future[ResponseHead]:
        self._out, self._accept, self._received, self._used, self.head = None, accept, 0, 0, None
        self._progress = progress
        self._target, self.accepted = out, False
        self._done = asyncio.get_running_loop().create_future()
        self.last_progress_s = time.monotonic()
        return self._done

    @property
    def received(self) -> int:
        return self._received

    @property
    def reusable(self) -> bool:
        """Whether the last response ended cleanly and the server keeps the connection open."""
        return (
            not self.closed
            and self._done is not None
            and self._done.done()
            and not self._done.exception()
            and self.head is not None
            and self.head.keep_alive
            and self.accepted
        )

    def abort(self) -> None:
        """Stop writing into the caller's buffer now, and drop the connection."""
        self._out = None
        self._target = memoryview(b"")
        self.closed = True
        if self._done is not None and not self._done.done():
            self._done.cancel()  # nobody waits for this answer any more: no "exception never retrieved"
        if self.transport is not None:
            self.transport.abort()

    # the transport's side

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio's subclasses

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._out is not None and self._received < len(self._out):
            return self._out[self._received :]
        if self.head is None and self._used < MAX_HEAD_BYTES:
            return self._scratch_view[self._used :]
        return self._scratch_view  # bytes nobody asked for; buffer_updated fails the exchange

    def buffer_updated(self, nbytes: int) -> None:
        self.last_progress_s = time.monotonic()
        if self._out is not None and self._received < len(self._out):
            self._received += nbytes
            if self._received == len(self._out):
                self._finish()
        elif self.head is None and self._done is not None and not self._done.done():
            self._used += nbytes
            self._head_bytes_arrived(nbytes)
        else:
            self._fail(MalformedResponse(f"{nbytes} bytes arrived that no request asked for"))
        if self._progress is not None and self.accepted:
            self._progress.received = self._received

    def _head_bytes_arrived(self, nbytes: int) -> None:
        end = self._scratch.find(HEAD_END, max(0, self._used - nbytes - len(HEAD_END) + 1), self._used)
        if end < 0:
            if self._used == MAX_HEAD_BYTES:
                self._fail(MalformedResponse(f"no end of the response head in {MAX_HEAD_BYTES} bytes"))
            return
        try:
            head = parse_head(self._scratch_view[:end])
            wanted = self._accept is not None and self._accept(head) and head.content_length == len(self._target)
        except MalformedResponse as exc:
            self._fail(exc)
            return
        self.head = head
        if not wanted:
            self._finish()  # refused: the caller closes the connection rather than read the body
            return
        early = self._scratch_view[end + len(HEAD_END) : self._used]
        if len(early) > len(self._target):
            self._fail(MalformedResponse(f"{len(early) - len(self._target)} bytes past the body's end"))
            return
        self.accepted = True
        if self._progress is not None:
            self._progress.arrived()
        self._out = self._target
        self._out[: len(early)] = early
        self._received = len(early)
        if self._received == len(self._out):
            self._finish()

    def _finish(self) -> None:
        if self._done is not None and not self._done.done():
            assert self.head is not None
            self._done.set_result(self.head)

    def _fail(self, exc: Exception) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_exception(exc)
        self.abort()

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._out = None
        if self._done is not None and not self._done.done():
            reason = f"connection closed ({exc})" if exc else "connection closed by the server"
            self._done.set_exception(ConnectionResetError(reason))


@dataclass(frozen=True, slots=True)
class RangeGetStatistics:
    requests: int
    refused: int
    broken: int
    connections_opened: int
    stale_reconnects: int
    idle_connections: int


class RangeGetter:
    """Ranged GETs into caller memory over a pool of kept-alive connections, one pool per origin."""

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext | None = None,
        connect_timeout_s: float = 10.0,
        idle_timeout_s: float = 30.0,
        max_idle_per_origin: int = 64,
        max_connections: int = 256,
    ) -> None:
        self._ssl = ssl_context
        self.connect_timeout_s = connect_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self._max_idle = max_idle_per_origin
        # each GET holds one connection: this bounds the sockets of all streams together (a request waits)
        self._connections = asyncio.Semaphore(max_connections)
        self._idle: dict[tuple[str, str, int], list[_Exchange]] = {}
        self._requests = self._refused = self._broken = self._opened = self._stale = 0

    async def get_into(
        self,
        url: str,
        first: int,
        out: memoryview,
        *,
        if_match: str | None,
        accept: Accept,
        progress: Progress | None = None,
        fresh: bool = False,
    ) -> None:
        """Fill `out` with bytes [first, first + len(out)) of `url`; `progress` follows the bytes received, and
        `fresh` asks for a new connection rather than a kept-alive one (a hedge: not the path that was slow).

        Raises `Refused` when the head is not what `accept` wants, `BodyBroken` when the exchange breaks off
        (its `received` bytes are in `out`), `OSError`/`TimeoutError` when no connection can be made.
        Cancelled, it has stopped writing into `out` by the time the cancellation reaches the caller.
        """
        target = parse_target(url)
        request = range_request(target, first, first + len(out) - 1, if_match)
        self._requests += 1
        async with self._connections:
            while True:
                exchange, reused = await self._connection(target, fresh)
                try:
                    await self._exchange(exchange, request, out, accept, reused, progress)
                    return
                except _StaleConnection:
                    self._stale += 1  # the server closed it while it sat idle: go again on a new one

    async def _exchange(
        self,
        exchange: _Exchange,
        request: bytes,
        out: memoryview,
        accept: Accept,
        reused: bool,
        progress: Progress | None,
    ) -> None:
        done = exchange.begin(out, accept, progress)
        assert exchange.transport is not None
        try:
            exchange.transport.write(request)
            head = await self._wait(exchange, done)
        except BaseException as exc:
            exchange.abort()
            if isinstance(exc, MalformedResponse):
                self._refused += 1
                raise Refused(f"an answer this path does not read: {exc}", None) from exc
            if isinstance(exc, ConnectionError | TimeoutError):
                if reused and exchange.head is None and exchange.received == 0 and isinstance(exc, ConnectionError):
                    raise _StaleConnection from exc
                self._broken += 1
                raise BodyBroken(exchange.received, f"{type(exc).__name__}: {exc}") from exc
            raise  # cancelled: the buffer is the caller's again, nothing writes into it any more
        if not exchange.accepted:
            exchange.abort()  # its body is an error document or the wrong bytes: not worth reading
            self._refused += 1
            raise Refused(f"HTTP {head.status} {head.reason}", head.status)
        if exchange.reusable:
            self._put_back(exchange)
        else:
            exchange.abort()

    async def _wait(self, exchange: _Exchange, done: asyncio.Future[ResponseHead]) -> ResponseHead:
        """The response, or `TimeoutError` once no byte has come for `idle_timeout_s`."""
        while True:
            remaining = exchange.last_progress_s + self.idle_timeout_s - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no byte for {self.idle_timeout_s:g} s")
            await asyncio.wait([done], timeout=remaining)
            if done.done():
                return done.result()

    async def _connection(self, target: Target, fresh: bool) -> tuple[_Exchange, bool]:
        idle = None if fresh else self._idle.get(target.origin)
        while idle:
            exchange = idle.pop()
            if not exchange.closed:
                return exchange, True
        loop = asyncio.get_running_loop()
        secure = target.scheme == "https"
        if secure and self._ssl is None:
            self._ssl = ssl.create_default_context()
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that lands as the
            # connection is made, and a killed client's stream then outlives it
            async with asyncio.timeout(self.connect_timeout_s):
                _, exchange = await self._connect(loop, target, secure)
        except ssl.SSLError as exc:  # a certificate that does not verify will not verify on a retry either
            self._refused += 1
            raise Refused(f"TLS with {target.host}:{target.port} failed: {exc}", None) from exc
        self._opened += 1
        return exchange, False

    def _connect(
        self, loop: asyncio.AbstractEventLoop, target: Target, secure: bool
    ) -> Awaitable[tuple[asyncio.BaseTransport, _Exchange]]:
        return loop.create_connection(
            lambda: _Exchange(target.origin),
            target.host,
            target.port,
            ssl=self._ssl if secure else None,
            server_hostname=target.host if secure else None,
        )

    def _put_back(self, exchange: _Exchange) -> None:
        idle = self._idle.setdefault(exchange.origin, [])
        if len(idle) < self._max_idle:
            idle.append(exchange)
        else:
            exchange.abort()

    def close(self) -> None:
        for idle in self._idle.values():
            for exchange in idle:
                exchange.abort()
        self._idle.clear()

    def statistics(self) -> RangeGetStatistics:
        return RangeGetStatistics(
            self._requests,
            self._refused,
            self._broken,
            self._opened,
            self._stale,
            sum(len(idle) for idle in self._idle.values()),
        )

    def __repr__(self) -> str:
        s = self.statistics()
        return f"<RangeGetter {s.requests} GETs, {s.connections_opened} connections, {s.idle_connections} idle>"
