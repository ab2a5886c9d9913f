"""Nobody gets in who should not, nothing leaks out: file modes, peer uids, credentials, prefixes, per-client caps.

The suite runs as root, so another user is a forked child that switches uid (`as_user`): it runs only code
already imported here (the interpreter's own files are not readable by other users on this machine).
"""

from __future__ import annotations

import fcntl
import mmap
import os
import re
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from prefetchd.ring.segment import F_SEAL_FUTURE_WRITE
from prefetchd.testing.daemon_process import DaemonProcess
from prefetchd.testing.embedded_s3 import EmbeddedS3
from prefetchd_client import AccessDenied, LimitExceeded, ObjectNotFound, idx_iter
from prefetchd_client.connection import Connection
from prefetchd_client.protocol import Open, Opened
from tests.conftest import BUCKET, Objects
from tests.daemon_probe import within
from tests.helpers import idx_bytes

IMAGES = np.arange(20 * 28 * 28, dtype=np.uint32).astype(np.uint8).reshape(20, 28, 28)
LABELS = (np.arange(20) % 10).astype(np.uint8)
ALLOWED_UID = 4242  # no such user is needed: the kernel only compares numbers
OTHER_UID = 4343


def config_file(tmp_path: Path, text: str) -> tuple[str, ...]:
    path = tmp_path / "prefetchd.toml"
    path.write_text(text)
    return ("--config", str(path))


def put_dataset(objects: Objects, name: str = "") -> tuple[str, str]:
    return objects.put(f"{name}images", idx_bytes(IMAGES)), objects.put(f"{name}labels", idx_bytes(LABELS))


def one_epoch(socket_path: Path, image: str, label: str, **options: object) -> int:
    with idx_iter(image, label, batch_size=5, socket_path=socket_path, **options) as it:  # type: ignore[arg-type]
        return sum(len(lb) for _, lb in it)


def as_user(uid: int, action: Callable[[], object]) -> str:
    """`repr` of what `action()` returned, or `ExceptionName: message`, as run by a forked child of uid `uid`."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            try:
                answer = repr(action())
            except BaseException as exc:
                answer = f"{type(exc).__name__}: {exc}"
            os.write(write_end, answer.encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        answer = pipe.read().decode()
    os.waitpid(pid, 0)
    return answer


# --- the socket and the segments ----------------------------------------------------------------------------


def test_the_socket_is_0600_in_a_0700_directory(daemon: DaemonProcess) -> None:
    directory = daemon.socket_path.parent
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(daemon.socket_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(daemon.socket_path.with_name("control.sock.lock").stat().st_mode) == 0o600


def test_the_ring_a_client_receives_is_0600_sealed_and_maps_read_only(daemon: DaemonProcess, objects: Objects) -> None:
    image, label = put_dataset(objects)
    conn = Connection.connect(daemon.socket_path, timeout_s=10)
    try:
        conn.send(Open(format="idx", sources={"image": image, "label": label}, batch_size=5))
        assert isinstance(conn.receive(timeout_s=10), Opened)
        fd = conn.take_fd()
        try:
            assert stat.S_IMODE(os.fstat(fd).st_mode) == 0o600
            seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
            wanted = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL | F_SEAL_FUTURE_WRITE
            assert seals & wanted == wanted
            with pytest.raises(PermissionError):
                mmap.mmap(fd, os.fstat(fd).st_size, flags=mmap.MAP_SHARED, prot=mmap.PROT_WRITE)
            with pytest.raises(PermissionError):
                os.ftruncate(fd, 0)
        finally:
            os.close(fd)
    finally:
        conn.close()


# --- peers of other users -------------------------------------------------------------------------------------


def test_another_user_cannot_even_reach_a_private_daemon(daemon: DaemonProcess) -> None:
    answer = as_user(OTHER_UID, lambda: Connection.connect(daemon.socket_path, timeout_s=5))
    assert answer.startswith("DaemonUnavailable") and "Permission denied" in answer


@pytest.fixture(scope="module")
def shared_daemon(s3_server: EmbeddedS3, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """A daemon that also serves uid 4242: other users may reach its socket, SO_PEERCRED decides."""
    args = config_file(tmp_path_factory.mktemp("shared"), f"allowed_uids = [{ALLOWED_UID}]\n")
    with DaemonProcess(env=s3_server.environment(), args=args) as process:
        yield process


def test_a_shared_daemon_opens_its_socket_to_others_but_not_its_directory(shared_daemon: DaemonProcess) -> None:
    assert stat.S_IMODE(shared_daemon.socket_path.parent.stat().st_mode) == 0o711  # pass through, not list
    assert stat.S_IMODE(shared_daemon.socket_path.stat().st_mode) == 0o666


def test_a_peer_of_a_uid_not_allowed_is_refused_by_its_credentials(
    shared_daemon: DaemonProcess, objects: Objects
) -> None:
    image, label = put_dataset(objects)
    answer = as_user(
        OTHER_UID, lambda: one_epoch(shared_daemon.socket_path, image, label, autostart=False, timeout_s=20)
    )
    assert answer.startswith("AccessDenied")
    assert f"uid {OTHER_UID} may not use this daemon" in answer and "allowed_uids" in answer
    assert one_epoch(shared_daemon.socket_path, image, label) == 20  # and the daemon goes on


def test_a_peer_of_an_allowed_uid_is_served(shared_daemon: DaemonProcess, objects: Objects) -> None:
    image, label = put_dataset(objects)
    assert (
        as_user(ALLOWED_UID, lambda: one_epoch(shared_daemon.socket_path, image, label, autostart=False, timeout_s=20))
        == "20"
    )


def test_local_files_are_not_read_for_another_uid_without_an_allowlist(
    shared_daemon: DaemonProcess, tmp_path: Path
) -> None:
    """The daemon (root here) could read what the peer cannot: without allowed_prefixes it does not try."""
    tmp_path.chmod(0o700)
    (tmp_path / "images").write_bytes(idx_bytes(IMAGES))
    (tmp_path / "labels").write_bytes(idx_bytes(LABELS))
    image, label = str(tmp_path / "images"), str(tmp_path / "labels")
    answer = as_user(
        ALLOWED_UID, lambda: one_epoch(shared_daemon.socket_path, image, label, autostart=False, timeout_s=20)
    )
    assert answer.startswith("AccessDenied") and "local files for its own uid only" in answer and image in answer
    assert one_epoch(shared_daemon.socket_path, image, label) == 20  # its own uid is served the same files


# --- credentials ----------------------------------------------------------------------------------------------

SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCY-prefetchd-test-secret"
TOKEN = "FwoGZXIvYXdzEJr//////////wEaDM+prefetchd/session/token=="


def test_credentials_reach_neither_the_log_at_debug_level_nor_a_client(s3_server: EmbeddedS3, objects: Objects) -> None:
    image, label = put_dataset(objects)
    env = {**s3_server.environment(), "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_SESSION_TOKEN": TOKEN}
    told: list[str] = []
    with DaemonProcess(env=env, args=("--log-level", "DEBUG")) as daemon:
        assert one_epoch(daemon.socket_path, image, label) == 20
        with pytest.raises(ObjectNotFound) as missing:
            one_epoch(daemon.socket_path, f"s3://{BUCKET}/{objects.prefix}/none", label)
        told.append(str(missing.value))
        conn = Connection.connect(daemon.socket_path, timeout_s=10)
        try:
            conn.send(Open(format="idx", sources={"image": image, "label": label}, batch_size=5))
            opened = conn.receive(timeout_s=10)
            told.append(repr(opened))
        finally:
            conn.close()
        log = daemon.log()
    for secret in (SECRET, TOKEN, TOKEN.replace("/", "%2F"), "//////////wEaDM"):
        assert secret not in log
        assert not any(secret in text for text in told)


# --- the allowlist of prefixes ----------------------------------------------------------------------------------


@pytest.fixture
def fenced_daemon(s3_server: EmbeddedS3, objects: Objects, tmp_path: Path) -> Iterator[DaemonProcess]:
    allowed = f"s3://{BUCKET}/{objects.prefix}/allowed/"
    args = config_file(tmp_path, f'allowed_prefixes = ["{allowed}", "{tmp_path / "data"}/"]\n')
    with DaemonProcess(env=s3_server.environment(), args=args) as process:
        yield process


def test_an_object_outside_the_allowed_prefixes_is_refused_by_name(
    fenced_daemon: DaemonProcess, objects: Objects
) -> None:
    image, label = put_dataset(objects, "elsewhere-")
    allowed = f"s3://{BUCKET}/{objects.prefix}/allowed/"
    pattern = re.escape(image) + " is outside this daemon's allowed_prefixes " + re.escape(f"({allowed}, ")
    with pytest.raises(AccessDenied, match=pattern):
        one_epoch(fenced_daemon.socket_path, image, label)
    sneaky = f"s3://{BUCKET}/{objects.prefix}/allowed/../elsewhere-images"
    with pytest.raises(AccessDenied, match=r"\. or \.\. segments"):
        one_epoch(fenced_daemon.socket_path, sneaky, label)
    with pytest.raises(AccessDenied, match="outside this daemon's allowed_prefixes"):
        one_epoch(fenced_daemon.socket_path, f"s3://{BUCKET}-other/{objects.prefix}/allowed/images", label)
    inside = put_dataset(objects, "allowed/")
    assert one_epoch(fenced_daemon.socket_path, *inside) == 20  # the daemon goes on serving what is allowed


def test_a_local_path_must_resolve_inside_the_allowed_prefixes(fenced_daemon: DaemonProcess, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (tmp_path / "images").write_bytes(idx_bytes(IMAGES))
    (data / "labels").write_bytes(idx_bytes(LABELS))
    (data / "images").symlink_to(tmp_path / "images")  # a link out of the allowed directory
    with pytest.raises(AccessDenied, match=re.escape(f"(read as {tmp_path / 'images'})")):
        one_epoch(fenced_daemon.socket_path, str(data / "images"), str(data / "labels"))
    (data / "images").unlink()
    (data / "images").write_bytes(idx_bytes(IMAGES))
    assert one_epoch(fenced_daemon.socket_path, str(data / "images"), str(data / "labels")) == 20


# --- per-client caps ---------------------------------------------------------------------------------------------

OTHER_CLIENT = """
import sys
from prefetchd_client import idx_iter
with idx_iter(sys.argv[1], sys.argv[2], batch_size=5, socket_path=sys.argv[3]) as it:
    print(sum(len(lb) for _, lb in it))
"""


@pytest.fixture
def capped_daemon(s3_server: EmbeddedS3, tmp_path: Path) -> Iterator[DaemonProcess]:
    args = config_file(tmp_path, 'max_streams_per_client = 2\nmax_ring_bytes_per_client = "2MiB"\n')
    with DaemonProcess(env=s3_server.environment(), args=args) as process:
        yield process


def test_a_client_past_its_stream_cap_is_refused_and_others_are_not(
    capped_daemon: DaemonProcess, objects: Objects
) -> None:
    image, label = put_dataset(objects)
    path = capped_daemon.socket_path
    first = idx_iter(image, label, batch_size=5, socket_path=path)
    second = idx_iter(image, label, batch_size=5, socket_path=path)
    try:
        with pytest.raises(LimitExceeded, match=r"already has 2 open streams, this daemon's max_streams_per_client"):
            idx_iter(image, label, batch_size=5, socket_path=path)
        other = subprocess.run(
            [sys.executable, "-c", OTHER_CLIENT, image, label, str(path)], capture_output=True, text=True, check=True
        )
        assert other.stdout.strip() == "20"  # another process has caps of its own
        assert sum(len(lb) for _, lb in first) == 20  # the open streams go on
    finally:
        first.close()
        second.close()
    # closing gives the places back, once the daemon has seen the sockets close
    assert within(5.0, lambda: _opens(path, image, label))


def _opens(path: Path, image: str, label: str) -> bool:
    try:
        return one_epoch(path, image, label) == 20
    except LimitExceeded:
        return False


def test_a_ring_past_the_clients_memory_cap_is_refused_before_it_is_made(
    capped_daemon: DaemonProcess, objects: Objects
) -> None:
    image, label = put_dataset(objects)
    # 20 float32 images a batch, a 2-batch epoch: 4 slots of 63 KiB fit; 400-image batches padded do not
    with pytest.raises(LimitExceeded, match=r"over this daemon's max_ring_bytes_per_client \(2\.0 MiB\)"):
        idx_iter(image, label, batch_size=400, last_batch="pad", socket_path=capped_daemon.socket_path)
    assert one_epoch(capped_daemon.socket_path, image, label) == 20
