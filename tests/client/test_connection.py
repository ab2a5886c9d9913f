"""The client's connection against scripted peers on real Unix sockets (a peer that misbehaves on purpose)."""

from __future__ import annotations

import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from prefetchd_client import layout
from prefetchd_client.connection import Connection
from prefetchd_client.errors import BatchTimeout, DaemonUnavailable, RemoteProtocolError
from prefetchd_client.protocol import PROTOCOL_VERSION, Close, FrameReader, Message, Release, Sentinel, Welcome, encode

Script = Callable[[socket.socket], None]


@pytest.fixture
def peer() -> Iterator[Callable[[Script], Path]]:
    """Serve one connection at a fresh socket path with `script`, in a thread."""
    directory = tempfile.TemporaryDirectory(prefix="pfd-peer-")
    threads: list[threading.Thread] = []
    servers: list[socket.socket] = []

    def start(script: Script) -> Path:
        path = Path(directory.name) / "control.sock"
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(path))
        server.listen(1)
        servers.append(server)

        def serve() -> None:
            conn, _ = server.accept()
            with conn:
                script(conn)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        threads.append(thread)
        return path

    yield start
    for thread in threads:
        thread.join(timeout=10)
    for server in servers:
        server.close()
    directory.cleanup()


def _welcome(protocol: int = PROTOCOL_VERSION, ring_format: int = layout.FORMAT_VERSION) -> bytes:
    return encode(Welcome(protocol, ring_format, "scripted-daemon", 1))


def test_a_handshake_with_our_versions_connects(peer: Callable[[Script], Path]) -> None:
    def script(conn: socket.socket) -> None:
        conn.recv(4096)
        conn.sendall(_welcome())
        conn.recv(4096)

    conn = Connection.connect(peer(script), timeout_s=5)
    assert conn.welcome.daemon == "scripted-daemon"
    conn.send(Close())
    conn.close()


def test_a_welcome_with_other_versions_is_refused(peer: Callable[[Script], Path]) -> None:
    def script(conn: socket.socket) -> None:
        conn.recv(4096)
        conn.sendall(_welcome(protocol=PROTOCOL_VERSION + 1))

    ours = f"{PROTOCOL_VERSION} / {layout.FORMAT_VERSION}"
    theirs = f"protocol {PROTOCOL_VERSION + 1} / ring format {layout.FORMAT_VERSION}"
    with pytest.raises(RemoteProtocolError, match=f"welcomed us with {theirs}, not the {ours}"):
        Connection.connect(peer(script), timeout_s=5)


def test_a_peer_that_hangs_up_mid_frame_is_a_remote_protocol_error(peer: Callable[[Script], Path]) -> None:
    def script(conn: socket.socket) -> None:
        conn.recv(4096)
        conn.sendall(_welcome()[:5])

    with pytest.raises(RemoteProtocolError, match="closed the connection mid-frame"):
        Connection.connect(peer(script), timeout_s=5)


def test_a_peer_that_closes_before_answering_is_daemon_unavailable(peer: Callable[[Script], Path]) -> None:
    with pytest.raises(DaemonUnavailable, match="closed the connection"):
        Connection.connect(peer(lambda conn: conn.recv(4096) and None), timeout_s=5)


def test_a_silent_peer_is_a_timeout_not_a_hang(peer: Callable[[Script], Path]) -> None:
    release = threading.Event()

    def script(conn: socket.socket) -> None:
        release.wait(10)

    with pytest.raises(BatchTimeout, match="while waiting for the daemon's handshake"):
        Connection.connect(peer(script), timeout_s=0.2)
    release.set()


def test_nobody_listening_is_daemon_unavailable(tmp_path: Path) -> None:
    with pytest.raises(DaemonUnavailable, match="no prefetchd daemon is listening at"):
        Connection.connect(tmp_path / "nobody.sock", timeout_s=1)


def _frames_until(conn: socket.socket, stop: Callable[[list[Message]], bool]) -> list[Message]:
    """What the client sent after its Hello, read until `stop` says enough."""
    reader = FrameReader()
    frames: list[Message] = []
    while not stop(frames):
        data = conn.recv(4096)
        assert data, "the client hung up"
        reader.feed(data)
        while not isinstance(message := reader.next_message(), Sentinel):
            frames.append(message)
    return frames


def _connected(peer: Callable[[Script], Path], after_handshake: Script) -> Connection:
    def script(conn: socket.socket) -> None:
        conn.recv(4096)  # the Hello
        conn.sendall(_welcome())
        after_handshake(conn)

    return Connection.connect(peer(script), timeout_s=5)


def test_frames_sent_later_go_before_the_client_waits_in_order(peer: Callable[[Script], Path]) -> None:
    seen: list[Message] = []

    def daemon(conn: socket.socket) -> None:
        seen.extend(_frames_until(conn, lambda frames: len(frames) >= 2))
        conn.sendall(encode(Welcome(PROTOCOL_VERSION, layout.FORMAT_VERSION, "answer", 2)))  # only once it has both
        seen.extend(_frames_until(conn, lambda frames: bool(frames)))
        finished.set()

    finished = threading.Event()
    conn = _connected(peer, daemon)
    conn.send_later(Release(3, 7))
    conn.send_later(Release(4, 8))
    assert conn.queued == 2
    answer = conn.receive(timeout_s=5)  # a client that kept its Releases would wait here for good
    assert isinstance(answer, Welcome) and answer.daemon == "answer"
    conn.send(Close())
    conn.close()
    assert finished.wait(5)
    assert seen == [Release(3, 7), Release(4, 8), Close()]


def test_frames_sent_later_wait_while_what_the_client_reads_has_come(peer: Callable[[Script], Path]) -> None:
    answered = threading.Event()
    seen: list[Message] = []

    def daemon(conn: socket.socket) -> None:
        conn.sendall(encode(Welcome(PROTOCOL_VERSION, layout.FORMAT_VERSION, "early", 2)))
        answered.set()
        seen.extend(_frames_until(conn, lambda frames: bool(frames) and isinstance(frames[-1], Close)))
        finished.set()

    finished = threading.Event()
    conn = _connected(peer, daemon)
    assert answered.wait(5)
    conn.send_later(Release(1, 1))
    assert isinstance(conn.receive(timeout_s=5), Welcome)
    assert conn.queued == 1  # what the client read had come: no write, no wake-up of the daemon
    conn.send(Close())  # the queued Release goes first, in the same write
    conn.close()
    assert finished.wait(5)
    assert seen == [Release(1, 1), Close()]
