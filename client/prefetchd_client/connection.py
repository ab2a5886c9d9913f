"""A blocking connection to the daemon: a thin loop around `protocol.FrameReader` on a Unix socket.

Every wait has a deadline, and a peer that goes away is an exception at once (EOF), never a hang. File
descriptors the daemon passes (the ring's memfd) are collected as they arrive and taken with `take_fd()`.

Frames the daemon needs soon but not now (`send_later`: a batch's Release) wait here and go in one write
with the next frame sent, with `flush()`, or before this side blocks on the daemon. Each write wakes the
daemon, and on 2 cores a woken daemon takes a core from the trainer: on the conv net, one write per 8
batches alone took `next()` from 1.1 ms to 0.45 ms, the daemon's CPU per epoch from 0.48 s to 0.28 s, and
the epoch from 1.15x to 1.08x local (docs/benchmarks.md).
"""

from __future__ import annotations

import os
import socket
import time
from collections import deque
from pathlib import Path

from . import layout
from ._version import __version__
from .errors import (
    BatchTimeout,
    DaemonUnavailable,
    RemoteProtocolError,
    error_from_wire,
)
from .protocol import (
    PEER_CLOSED,
    PROTOCOL_VERSION,
    Error,
    FrameReader,
    Hello,
    Message,
    Sentinel,
    Welcome,
    encode,
)

_RECV_BYTES = 64 * 1024
_MAX_FDS = 4


class Connection:
    """One socket to the daemon, after a successful handshake."""

    def __init__(self, sock: socket.socket, path: Path, welcome: Welcome) -> None:
        self._sock = sock
        self.path = path
        self.welcome = welcome
        self._reader = FrameReader()
        self._fds: deque[int] = deque()
        self._queued: list[bytes] = []  # frames from send_later(), in order
        self._closed = False
        self._peer_gone = False  # EOF or reset seen: a DaemonUnavailable from here on is not the daemon's word

    @classmethod
    def connect(cls, path: Path, *, timeout_s: float) -> Connection:
        """Connect and shake hands; `DaemonUnavailable` if nobody listens at `path`."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout_s)
            sock.connect(os.fspath(path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            sock.close()
            raise DaemonUnavailable(
                f"no prefetchd daemon is listening at {path} ({exc.strerror}); "
                "start one with `prefetchd serve`, or let the client start one (PREFETCHD_AUTOSTART=1)"
            ) from exc
        except OSError as exc:
            sock.close()
            raise DaemonUnavailable(f"cannot connect to the prefetchd daemon at {path}: {exc}") from exc
        conn = cls(sock, path, Welcome(0, 0, "", 0))
        try:
            conn.welcome = conn._handshake(timeout_s)
        except BaseException:
            conn.close()
            raise
        return conn

    def _handshake(self, timeout_s: float) -> Welcome:
        self.send(Hello(PROTOCOL_VERSION, layout.FORMAT_VERSION, f"prefetchd-client/{__version__}", os.getpid()))
        reply = self.receive(timeout_s=timeout_s, waiting_for="the daemon's handshake")
        if not isinstance(reply, Welcome):
            raise RemoteProtocolError(f"daemon answered the handshake with {reply.TYPE}")
        if (reply.protocol, reply.ring_format) != (PROTOCOL_VERSION, layout.FORMAT_VERSION):
            raise RemoteProtocolError(
                f"{reply.daemon} welcomed us with protocol {reply.protocol} / ring format {reply.ring_format}, "
                f"not the {PROTOCOL_VERSION} / {layout.FORMAT_VERSION} we asked for"
            )
        return reply

    def send(self, message: Message) -> None:
        """Send `message` now, after any frames queued by `send_later` (the daemon sees them in order)."""
        if self._closed:
            raise DaemonUnavailable(f"connection to {self.path} is closed")
        self._queued.append(encode(message))
        self.flush()

    def send_later(self, message: Message) -> None:
        """Queue `message`: it goes with the next `send`, `flush`, or before `receive` has to wait."""
        self._queued.append(encode(message))

    @property
    def queued(self) -> int:
        """Frames waiting for `flush`."""
        return len(self._queued)

    def flush(self) -> None:
        if not self._queued:
            return
        if self._closed:
            raise DaemonUnavailable(f"connection to {self.path} is closed")
        frames = self._queued[0] if len(self._queued) == 1 else b"".join(self._queued)
        self._queued.clear()
        try:
            self._sock.sendall(frames)
        except (BrokenPipeError, ConnectionResetError) as exc:
            self._raise_last_words()
            raise DaemonUnavailable(f"the prefetchd daemon at {self.path} went away ({exc.strerror})") from exc
        except TimeoutError as exc:
            raise DaemonUnavailable(f"the prefetchd daemon at {self.path} stopped reading") from exc

    def _raise_last_words(self) -> None:
        """A daemon that ends a stream sends an error frame, then closes: raise that rather than a bare EPIPE."""
        try:
            while True:
                self.receive(timeout_s=0.05, waiting_for="the daemon's last frame")
        except BatchTimeout:
            return
        except DaemonUnavailable:
            if self._peer_gone:
                return
            raise  # the daemon said so in an error frame (it is shutting down): its words, not EPIPE

    def receive(self, *, timeout_s: float | None, waiting_for: str = "a message") -> Message:
        """The next message. Fatal `Error` frames are raised as the error class they name; others are returned."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            message = self._reader.next_message()
            if message is PEER_CLOSED:
                self._peer_gone = True
                raise DaemonUnavailable(f"the prefetchd daemon at {self.path} closed the connection")
            if not isinstance(message, Sentinel):
                if isinstance(message, Error) and message.fatal:
                    raise error_from_wire(
                        {
                            "code": message.code,
                            "message": message.message,
                            "url": message.url,
                            "offset": message.offset,
                        }
                    )
                return message
            self._fill(deadline, waiting_for)

    def _fill(self, deadline: float | None, waiting_for: str) -> None:
        if self._queued:  # what the daemon may be waiting for goes out before we wait for it
            timeout_s = self._sock.gettimeout()  # what sendall runs under
            try:
                if self._read(0.0):
                    return
            finally:
                self._sock.settimeout(timeout_s)
            self.flush()
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            raise BatchTimeout(f"no answer from the prefetchd daemon at {self.path} while waiting for {waiting_for}")
        try:
            self._read(remaining)
        except TimeoutError:
            raise BatchTimeout(
                f"no answer from the prefetchd daemon at {self.path} within {remaining:.1f} s "
                f"while waiting for {waiting_for}"
            ) from None

    def _read(self, timeout_s: float | None) -> bool:
        """Feed the reader what one recv gets within `timeout_s`; False if nothing had come (timeout 0 only)."""
        self._sock.settimeout(timeout_s)
        try:
            data, fds, _flags, _addr = socket.recv_fds(self._sock, _RECV_BYTES, _MAX_FDS, socket.MSG_CMSG_CLOEXEC)
        except BlockingIOError:
            return False
        except ConnectionResetError as exc:
            self._peer_gone = True
            raise DaemonUnavailable(f"the prefetchd daemon at {self.path} reset the connection") from exc
        self._fds.extend(fds)
        self._reader.feed(data)
        return True

    def take_fd(self) -> int:
        if not self._fds:
            raise RemoteProtocolError("the daemon's Opened frame came without the ring's file descriptor")
        return self._fds.popleft()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        while self._fds:
            os.close(self._fds.popleft())
        self._sock.close()

    def fileno(self) -> int:
        return self._sock.fileno()
