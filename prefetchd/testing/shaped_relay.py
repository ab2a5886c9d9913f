"""A TCP relay that models S3's network: each request reaches the server `latency_s` late, each reply is paced.

It knows no HTTP: every connection accepted is joined to a new connection to the upstream server. Bytes
from the client are handed on `latency_s` after they arrived (so a GET's first byte comes back that much
later); bytes from the server go to the client at `bytes_per_s` per connection (a token bucket holding
`BURST_BYTES`, refilled continuously; the server is not read while it is empty, so TCP's own flow control
holds it back). TLS passes through untouched, end to end.

With `Pauses`, a seeded share of the requests wait longer (a slow GET: S3's tail latency), counted in a
file the benchmark reads.

The replies never enter Python: `os.splice` moves them from one socket through a pipe into the other
inside the kernel. Copying them through user space cost ~1 CPU-s per GB, a third of what the 2 cores of the
benchmark machine had to give, and the readers being measured share those cores.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import os
import random
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

BURST_BYTES = 256 * 1024  # a reply's first 256 KiB go out at once, then the pace holds (as the HTTP proxy)
_PIPE_BYTES = 256 * 1024  # one splice moves at most this: also the pace's granularity
_RECV_BYTES = 64 * 1024
_SPLICE = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK


@dataclass
class Pauses:
    """Which requests wait `seconds` more before they reach the server: a `share` of them, drawn from `seed`.

    A request is what the client sends in one piece while no other is due (an HTTP request on a kept-alive
    connection); the count of paused ones is written to `count_path` (a line of text, rewritten at each).
    """

    share: float
    seconds: float
    seed: int = 0
    count_path: Path | None = None
    count: int = 0
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def draw(self) -> float:
        """The extra wait of the request that just arrived: `seconds` for a share of them, else none."""
        if self.share <= 0 or self._rng.random() >= self.share:
            return 0.0
        self.count += 1
        if self.count_path is not None:
            # rare, and a few bytes to the page cache; renamed into place so that a reader never sees it half-written
            part = self.count_path.with_suffix(".part")
            part.write_text(f"{self.count}\n")
            part.replace(self.count_path)
        return self.seconds


NO_PAUSES = Pauses(0.0, 0.0)


class _Link:
    """One client connection and its own connection to the upstream server."""

    def __init__(
        self,
        client: socket.socket,
        upstream: socket.socket,
        latency_s: float,
        bytes_per_s: float,
        pauses: Pauses = NO_PAUSES,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.pauses = pauses
        self.client, self.upstream = client, upstream
        self.latency_s, self.bytes_per_s = latency_s, bytes_per_s
        self.closed = self.loop.create_future()
        # client → upstream, delayed: (when due, bytes or None for the client's EOF)
        self._due: collections.deque[tuple[float, bytes | None]] = collections.deque()
        self._flush_at: asyncio.TimerHandle | None = None
        self._upstream_full = False  # the upstream took part of a request: wait until it is writable
        # upstream → client, paced, through a pipe
        self._pipe_out, self._pipe_in = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        with contextlib.suppress(OSError):  # a user over their pipe quota keeps the 64 KiB default
            fcntl.fcntl(self._pipe_in, fcntl.F_SETPIPE_SZ, _PIPE_BYTES)
        self._pipe_bytes = fcntl.fcntl(self._pipe_in, fcntl.F_GETPIPE_SZ)
        self._in_pipe = 0
        self._upstream_ended = False
        self._reading_upstream = False
        self._client_full = False
        self._tokens = float(BURST_BYTES)
        self._refilled_at = time.monotonic()
        self._pace_until: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self.loop.add_reader(self.client.fileno(), self._client_readable)
        self._read_upstream(True)

    # client → upstream: each piece `latency_s` after it arrived

    def _client_readable(self) -> None:
        try:
            data: bytes | None = self.client.recv(_RECV_BYTES)
        except BlockingIOError:
            return
        except OSError:
            self.close()
            return
        extra_s = 0.0
        if not data:
            self.loop.remove_reader(self.client.fileno())
            data = None
        elif not self._due:  # a new request, not the rest of one still on its way
            extra_s = self.pauses.draw()
        due = time.monotonic() + self.latency_s + extra_s
        self._due.append((max(due, self._due[-1][0]) if self._due else due, data))
        if self._flush_at is None and not self._upstream_full:
            self._flush_requests()

    def _flush_requests(self) -> None:
        self._flush_at = None
        now = time.monotonic()
        while self._due and self._due[0][0] <= now and not self.closed.done():
            due, data = self._due[0]
            if data is None:
                with contextlib.suppress(OSError):
                    self.upstream.shutdown(socket.SHUT_WR)
                self._due.popleft()
                continue
            try:
                sent = self.upstream.send(data)
            except BlockingIOError:
                sent = 0
            except OSError:
                self.close()
                return
            if sent < len(data):
                self._due[0] = (due, data[sent:])
                self._upstream_full = True
                self.loop.add_writer(self.upstream.fileno(), self._upstream_writable)
                return
            self._due.popleft()
        if self._due and not self.closed.done():
            self._flush_at = self.loop.call_later(self._due[0][0] - now, self._flush_requests)

    def _upstream_writable(self) -> None:
        self.loop.remove_writer(self.upstream.fileno())
        self._upstream_full = False
        self._flush_requests()

    # upstream → client: spliced, paced

    def _read_upstream(self, wanted: bool) -> None:
        wanted = wanted and not self._upstream_ended and not self.closed.done()
        if wanted != self._reading_upstream:
            if wanted:
                self.loop.add_reader(self.upstream.fileno(), self._upstream_readable)
            else:
                self.loop.remove_reader(self.upstream.fileno())
            self._reading_upstream = wanted

    def _upstream_readable(self) -> None:
        try:
            moved = os.splice(self.upstream.fileno(), self._pipe_in, self._pipe_bytes - self._in_pipe, flags=_SPLICE)
        except BlockingIOError:
            return
        except OSError:
            self.close()
            return
        if moved == 0:  # the server closed: send what is left, then close the client
            self._read_upstream(False)
            self._upstream_ended = True
        self._in_pipe += moved
        self._pace(moved)
        self._drain_pipe()

    def _drain_pipe(self) -> None:
        while self._in_pipe:
            try:
                self._in_pipe -= os.splice(self._pipe_out, self.client.fileno(), self._in_pipe, flags=_SPLICE)
            except BlockingIOError:
                break
            except OSError:
                self.close()
                return
        if self._in_pipe:  # the client's socket is full: read no more until it has taken this
            self._read_upstream(False)
            if not self._client_full:
                self._client_full = True
                self.loop.add_writer(self.client.fileno(), self._drain_pipe)
            return
        if self._client_full:
            self._client_full = False
            self.loop.remove_writer(self.client.fileno())
        if self._upstream_ended:
            self.close()
        else:
            self._read_upstream(self._pace_until is None)

    def _pace(self, moved: int) -> None:
        if self.bytes_per_s == float("inf"):
            return
        now = time.monotonic()
        self._tokens = min(BURST_BYTES, self._tokens + (now - self._refilled_at) * self.bytes_per_s) - moved
        self._refilled_at = now
        if self._tokens < 0:
            self._read_upstream(False)
            self._pace_until = self.loop.call_later(-self._tokens / self.bytes_per_s, self._paced)

    def _paced(self) -> None:
        self._pace_until = None
        self._read_upstream(not self._in_pipe)

    def close(self) -> None:
        if self.closed.done():
            return
        self.closed.set_result(None)
        for timer in (self._flush_at, self._pace_until):
            if timer is not None:
                timer.cancel()
        for sock in (self.client, self.upstream):
            with contextlib.suppress(OSError, ValueError):
                self.loop.remove_reader(sock.fileno())
                self.loop.remove_writer(sock.fileno())
            sock.close()
        os.close(self._pipe_in)
        os.close(self._pipe_out)


async def _relay(
    client: socket.socket, upstream: tuple[str, int], latency_s: float, bytes_per_s: float, pauses: Pauses
) -> None:
    loop = asyncio.get_running_loop()
    try:
        (family, kind, protocol, _, address), *_ = await loop.getaddrinfo(*upstream, type=socket.SOCK_STREAM)
        server = socket.socket(family, kind, protocol)
    except OSError:
        client.close()
        return
    try:
        server.setblocking(False)
        await loop.sock_connect(server, address)
    except OSError:  # the server is down: the client sees its connection closed, as with a dead host
        server.close()
        client.close()
        return
    for sock in (client, server):
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    link = _Link(client, server, latency_s, bytes_per_s, pauses)
    try:
        link.start()
        await link.closed
    finally:
        link.close()


async def serve_relay(
    listener: socket.socket,
    upstream: tuple[str, int],
    latency_s: float,
    bytes_per_s: float,
    pauses: Pauses = NO_PAUSES,
) -> None:
    """Relay every connection `listener` accepts to `upstream` until cancelled; `pauses` slow some requests."""
    loop = asyncio.get_running_loop()
    listener.setblocking(False)
    async with asyncio.TaskGroup() as connections:
        while True:
            client, _ = await loop.sock_accept(listener)
            connections.create_task(_relay(client, upstream, latency_s, bytes_per_s, pauses))
