"""One client socket on the daemon's loop: a thin shell around `prefetchd_client.protocol`.

Plain non-blocking sockets and the loop's `sock_*` calls, because the ring's file descriptor rides on a
frame as SCM_RIGHTS, which asyncio's stream transports cannot send.
"""

from __future__ import annotations

import array
import asyncio
import socket
import struct
from dataclasses import dataclass
from typing import Any

from prefetchd_client.protocol import PEER_CLOSED, FrameReader, Message, Sentinel, encode

_RECV_BYTES = 64 * 1024
_PEERCRED = struct.Struct("3i")


class PeerGone(Exception):
    """The client closed its socket or died; nothing more can be sent to it."""


@dataclass(frozen=True, slots=True)
class PeerCredentials:
    pid: int
    uid: int
    gid: int


class PeerConnection:
    """Frames in and out of one accepted Unix socket; `receive()` returns None once the peer has gone."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self._reader = FrameReader()
        self._send_lock = asyncio.Lock()
        self._cut_short = False  # a send was cancelled mid-frame: the byte stream is no longer at a frame boundary
        self._loop = asyncio.get_running_loop()
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
        self.credentials = PeerCredentials(*_PEERCRED.unpack(raw))

    async def receive(self) -> Message | None:
        """The next message; None at EOF. A malformed frame raises `RemoteProtocolError`."""
        while True:
            message = self._reader.next_message()
            if message is PEER_CLOSED:
                return None
            if not isinstance(message, Sentinel):
                return message
            try:
                data = await self._loop.sock_recv(self.sock, _RECV_BYTES)
            except (ConnectionResetError, BrokenPipeError):
                data = b""
            self._reader.feed(data)

    async def send(self, message: Message, *, fds: tuple[int, ...] = ()) -> None:
        data = encode(message)
        async with self._send_lock:
            if self._cut_short:
                raise PeerGone(f"an earlier frame to client pid {self.credentials.pid} was cut short")
            self._cut_short = True
            try:
                if fds:
                    data = data[await self._send_with_fds(data, fds) :]
                if data:
                    await self._loop.sock_sendall(self.sock, data)
            except (BrokenPipeError, ConnectionResetError) as exc:
                raise PeerGone(f"client pid {self.credentials.pid} went away") from exc
            self._cut_short = False

    def can_send(self) -> bool:
        """False once a send was cancelled partway: a frame after it would be read as garbage."""
        return not self._cut_short

    async def _send_with_fds(self, data: bytes, fds: tuple[int, ...]) -> int:
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
        while True:
            try:
                return self.sock.sendmsg([data], ancillary)
            except BlockingIOError:
                await self._writable()

    async def _writable(self) -> None:
        ready = self._loop.create_future()
        fd = self.sock.fileno()
        self._loop.add_writer(fd, lambda: _settle(ready, None))
        try:
            await ready
        finally:
            self._loop.remove_writer(fd)

    def close(self) -> None:
        self.sock.close()


def _settle(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)
