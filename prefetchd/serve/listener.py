"""The control socket's place on disk: a 0700 directory, a lock that says who serves it, a 0600 socket.

The lock (flock on `<socket>.lock`) is held for the daemon's lifetime and released by the kernel however
the daemon dies, so a socket file whose lock is free is stale by definition and is removed.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import stat
from pathlib import Path

from prefetchd_client.errors import PrefetchdError


class DaemonBusy(PrefetchdError):
    """Another live daemon already serves this socket path."""

    code = "daemon_busy"


class SocketPathError(PrefetchdError):
    """The socket's directory is unsafe (not ours, or open to others) or the path is unusable."""

    code = "socket_path"


def prepare_directory(directory: Path) -> None:
    """Create the socket's directory 0700, or check that an existing one is ours and closed to others."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = directory.stat()
    if st.st_uid != os.getuid():
        raise SocketPathError(f"{directory} belongs to uid {st.st_uid}, not this daemon's uid {os.getuid()}")
    if stat.S_IMODE(st.st_mode) & 0o022:
        raise SocketPathError(f"{directory} is writable by other users (mode {stat.S_IMODE(st.st_mode):o})")


class Listener:
    """Owns the lock file and the listening socket at `path`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock_path = path.with_name(path.name + ".lock")
        self._lock_fd = -1
        self.sock: socket.socket | None = None

    def __enter__(self) -> Listener:
        prepare_directory(self.path.parent)
        self._lock_fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(self._lock_fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(self._lock_fd)
            self._lock_fd = -1
            raise DaemonBusy(f"another prefetchd daemon (pid {owner}) already serves {self.path}") from None
        os.ftruncate(self._lock_fd, 0)
        os.pwrite(self._lock_fd, f"{os.getpid()}\n".encode(), 0)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # stale: its daemon no longer holds the lock
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            old_umask = os.umask(0o177)  # the socket is created 0600, never briefly wider
            try:
                sock.bind(os.fspath(self.path))
            finally:
                os.umask(old_umask)
            sock.listen(128)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            self._release_lock()
            raise SocketPathError(f"cannot listen at {self.path}: {exc}") from exc
        self.sock = sock
        return self

    def __exit__(self, *exc: object) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        self._release_lock()

    def _release_lock(self) -> None:
        # The lock file stays: unlinking it would let a second daemon lock a fresh inode while a third
        # still holds the old one.
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1
