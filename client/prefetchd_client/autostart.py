"""Find the daemon, or start one for this user's session when none is listening and prefetchd is installed.

A running daemon is always used first. Starting one is announced in a log line and turned off with
`PREFETCHD_AUTOSTART=0`. The daemon detaches (its own session, its own log file) and exits by itself after
a while with no clients, so a one-line opt-in in a training script needs no second terminal.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import select
import subprocess
import sys
import time
from pathlib import Path

from .connection import Connection
from .errors import DaemonUnavailable
from .settings import autostart_enabled, default_socket_path

log = logging.getLogger("prefetchd_client")

AUTOSTART_IDLE_EXIT_S = 600.0  # an autostarted daemon leaves this long after its last client
_LOST_RACE_RETRIES = 8


def resolve_socket_path(socket_path: str | os.PathLike[str] | None) -> Path:
    if socket_path is not None:
        return Path(socket_path)
    return default_socket_path(os.environ, os.getuid())


def connect(
    socket_path: str | os.PathLike[str] | None = None,
    *,
    timeout_s: float = 30.0,
    autostart: bool | None = None,
) -> Connection:
    """A handshaken connection to the daemon at `socket_path` (default: the per-user socket)."""
    path = resolve_socket_path(socket_path)
    try:
        return Connection.connect(path, timeout_s=timeout_s)
    except DaemonUnavailable as exc:
        wanted = autostart_enabled(os.environ) if autostart is None else autostart
        if not wanted:
            raise
        if importlib.util.find_spec("prefetchd") is None:
            raise DaemonUnavailable(
                f"{exc} (the prefetchd daemon package is not installed here, so none was started: "
                "`pip install prefetchd`, or point PREFETCHD_SOCKET at a running daemon)"
            ) from exc
    start_daemon(path, timeout_s=timeout_s)
    return _connect_after_start(path, timeout_s)


def start_daemon(path: Path, *, timeout_s: float) -> None:
    """Start `prefetchd serve` detached and wait until it says it is listening (or that another one is)."""
    log_path = path.parent / "daemon.log"
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    read_end, write_end = os.pipe()
    command = [
        sys.executable,
        "-m",
        "prefetchd",
        "serve",
        "--socket",
        str(path),
        "--detach",
        "--ready-fd",
        str(write_end),
        "--exit-when-idle",
        str(AUTOSTART_IDLE_EXIT_S),
    ]
    try:
        with open(log_path, "ab") as log_file:
            launcher = subprocess.Popen(
                command,
                pass_fds=(write_end,),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                close_fds=True,
            )
        os.close(write_end)
        write_end = -1
        launcher.wait(timeout=timeout_s)  # returns as soon as the daemon has detached
        answer = _read_ready(read_end, timeout_s)
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)
    if answer.startswith("ready"):
        log.warning(
            "prefetchd: no daemon was listening at %s, so this process started one (%s); log: %s; "
            "set PREFETCHD_AUTOSTART=0 to turn this off",
            path,
            answer.strip(),
            log_path,
        )
    elif not answer.startswith("busy"):
        raise DaemonUnavailable(
            f"started `prefetchd serve` for {path} but it did not come up; see its log at {log_path}"
        )


def _read_ready(fd: int, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    chunks = []
    while (remaining := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([fd], [], [], remaining)
        if not readable:
            break
        data = os.read(fd, 256)
        if not data:
            break
        chunks.append(data)
        if b"\n" in data:
            break
    return b"".join(chunks).decode(errors="replace")


def _connect_after_start(path: Path, timeout_s: float) -> Connection:
    # When two trainers start daemons at once, the loser answers "busy" before the winner listens; the
    # only thing to wait on is the winner's socket, so retry the connect a bounded number of times.
    delay_s = 0.01
    for _ in range(_LOST_RACE_RETRIES):
        try:
            return Connection.connect(path, timeout_s=timeout_s)
        except DaemonUnavailable:
            time.sleep(delay_s)
            delay_s *= 2
    return Connection.connect(path, timeout_s=timeout_s)
