"""The control socket on disk (prefetchd/serve/listener.py): modes, one daemon per path, and nothing left after."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from prefetchd.serve.listener import DaemonBusy, Listener, SocketPathError


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_private_socket_is_0600_in_a_0700_directory_with_a_pid_file(tmp_path: Path) -> None:
    path = tmp_path / "run" / "control.sock"
    with Listener(path):
        assert (mode(path.parent), mode(path)) == (0o700, 0o600)
        assert path.with_name("control.sock.lock").read_text() == f"{os.getpid()}\n"


def test_a_shared_socket_lets_others_through_but_not_list_the_directory(tmp_path: Path) -> None:
    path = tmp_path / "run" / "control.sock"
    with Listener(path, shared=True):
        assert (mode(path.parent), mode(path)) == (0o711, 0o666)


def test_on_exit_it_removes_the_socket_the_pid_file_and_the_directories_it_made(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "control.sock"
    with Listener(path):
        pass
    assert list(tmp_path.iterdir()) == []


def test_a_directory_it_did_not_make_stays_and_so_does_a_file_it_did_not_write(tmp_path: Path) -> None:
    mine = tmp_path / "made" / "control.sock"
    with Listener(mine):
        (mine.parent / "daemon.log").write_text("a log the autostarting client keeps here")
    assert sorted(p.name for p in mine.parent.iterdir()) == ["daemon.log"]
    theirs = tmp_path / "existing"
    theirs.mkdir(mode=0o700)
    with Listener(theirs / "control.sock"):
        pass
    assert theirs.is_dir() and list(theirs.iterdir()) == []


def test_a_second_listener_on_a_live_path_is_busy_and_names_the_pid(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    with Listener(path), pytest.raises(DaemonBusy, match=f"pid {os.getpid()}"):
        Listener(path).__enter__()
    assert not path.exists()


def test_a_stale_socket_file_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    path.write_text("left by a daemon that was killed")
    with Listener(path) as listener:
        assert path.is_socket() and listener.sock is not None


def test_paths_one_after_another_each_get_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "run" / "control.sock"
    for _ in range(3):
        with Listener(path):
            assert path.is_socket()


def test_a_directory_open_to_other_writers_is_refused(tmp_path: Path) -> None:
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    with pytest.raises(SocketPathError, match="writable by other users"):
        Listener(open_dir / "control.sock").__enter__()
