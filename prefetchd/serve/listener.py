"""The control socket's place on disk: a 0700 directory, a lock that says who serves it, a 0600 socket.

The lock (flock on `<socket>.lock`, which holds the daemon's pid) is held for the daemon's lifetime and
released by the kernel however the daemon dies, so a socket file whose lock is free is stale by definition
and is removed. On the way out the daemon removes what it created: the socket, the lock file, and the
directories it made, if nothing else is in them.

With `allowed_uids` other users must reach the socket, so the directory is 0711 (they may pass through, not
list it) and the socket 0666; who is served is then decided by the peer's uid (SO_PEERCRED), not the modes.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import stat
from pathlib import Path

from prefetchd_client.errors import PrefetchdError

PRIVATE_DIRECTORY_MODE = 0o700
PRIVATE_SOCKET_MODE = 0o600
SHARED_DIRECTORY_MODE = 0o711  # allowed_uids: others may reach the socket but not list the directory
SHARED_SOCKET_MODE = 0o666
_LOCK_ATTEMPTS = 8  # a daemon on its way out removes the lock file (and its directory) under our feet


class DaemonBusy(PrefetchdError):
    """Another live daemon already serves this socket path."""

    code = "daemon_busy"


class SocketPathError(PrefetchdError):
    """The socket's directory is unsafe (not ours, or open to others) or the path is unusable."""

    code = "socket_path"


def prepare_directory(directory: Path, *, shared: bool = False) -> list[Path]:
    """Create the socket's directory 0700 (0711 if `shared`), or check that an existing one is ours and closed
    to others. Returns the directories created here, the socket's own first."""
    missing = []
    for level in (directory, *directory.parents):
        if level.exists():
            break
        missing.append(level)
    created: list[Path] = []
    try:
        directory.mkdir(mode=PRIVATE_DIRECTORY_MODE, parents=True)
        created = missing
    except FileExistsError:
        pass
    st = directory.stat()
    if st.st_uid != os.getuid():
        raise SocketPathError(f"{directory} belongs to uid {st.st_uid}, not this daemon's uid {os.getuid()}")
    if stat.S_IMODE(st.st_mode) & 0o022:
        raise SocketPathError(f"{directory} is writable by other users (mode {stat.S_IMODE(st.st_mode):o})")
    if shared:
        os.chmod(directory, stat.S_IMODE(st.st_mode) | SHARED_DIRECTORY_MODE)
    return created


def _same_file(fd: int, path: Path) -> bool:
    try:
        on_disk = path.stat()
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (on_disk.st_dev, on_disk.st_ino)


class Listener:
    """Owns the lock file and the listening socket at `path` (and the directory, if it made it)."""

    def __init__(self, path: Path, *, shared: bool = False) -> None:
        self.path = path
        self.lock_path = path.with_name(path.name + ".lock")
        self.shared = shared
        self._lock_fd = -1
        self._made: list[Path] = []  # directories this daemon created, deepest first
        self.sock: socket.socket | None = None

    def __enter__(self) -> Listener:
        try:
            self._lock()
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()  # stale: its daemon no longer holds the lock
            self.sock = self._listen()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _lock(self) -> None:
        """Take the lock on the lock file that is at the path now; DaemonBusy if a live daemon holds it."""
        for _ in range(_LOCK_ATTEMPTS):
            self._made = prepare_directory(self.path.parent, shared=self.shared) or self._made
            try:
                fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except FileNotFoundError:
                continue  # the directory went with a daemon that was leaving; make it again
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise DaemonBusy(f"another prefetchd daemon (pid {owner}) already serves {self.path}") from None
            if not _same_file(fd, self.lock_path):
                os.close(fd)  # we locked a file its daemon had already removed: another may hold the new one
                continue
            self._lock_fd = fd
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            return
        raise SocketPathError(f"cannot lock {self.lock_path}: it kept disappearing ({_LOCK_ATTEMPTS} attempts)")

    def _listen(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            old_umask = os.umask(0o177)  # the socket is created 0600, never briefly wider
            try:
                sock.bind(os.fspath(self.path))
            finally:
                os.umask(old_umask)
            if self.shared:
                os.chmod(self.path, SHARED_SOCKET_MODE)
            sock.listen(128)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise SocketPathError(f"cannot listen at {self.path}: {exc}") from exc
        return sock

    def __exit__(self, *exc: object) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        if self._lock_fd >= 0:
            # removed while still locked: a daemon starting now either finds no file and creates its own, or
            # locks this one after we let go, sees it is no longer at the path, and tries again
            with contextlib.suppress(FileNotFoundError):
                self.lock_path.unlink()
            os.close(self._lock_fd)
            self._lock_fd = -1
        made, self._made = self._made, []
        for directory in made:
            try:
                directory.rmdir()
            except OSError:  # not empty (a log file, another daemon's lock): it stays, and so do those above
                break
