"""Bad input gets a clear error in the trainer that names the object (and offset), and the daemon goes on."""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import botocore.session
import numpy as np
import pytest

from prefetchd.testing.daemon_process import DaemonProcess
from prefetchd.testing.embedded_s3 import CREDENTIALS, EmbeddedS3
from prefetchd_client import (
    AccessDenied,
    BatchIterator,
    DaemonUnavailable,
    FormatError,
    InvalidRequest,
    LocalProtocolError,
    ObjectChanged,
    ObjectNotFound,
    idx_iter,
)
from prefetchd_client.protocol import (
    PROTOCOL_VERSION,
    Error,
    FrameReader,
    Hello,
    Message,
    Open,
    Release,
    Sentinel,
    Welcome,
    encode,
)
from tests.conftest import BUCKET, Objects
from tests.helpers import idx_bytes

IMAGES = np.arange(20 * 28 * 28, dtype=np.uint32).astype(np.uint8).reshape(20, 28, 28)
LABELS = (np.arange(20) % 10).astype(np.uint8)


def _open(daemon: DaemonProcess, image: str, label: str, **options: object) -> BatchIterator:
    return idx_iter(image, label, batch_size=options.pop("batch_size", 5), socket_path=daemon.socket_path, **options)  # type: ignore[arg-type]


def _drain_epochs(it: BatchIterator, epochs: int, check: Callable[[np.ndarray], bool] = lambda _: True) -> None:
    for _ in range(epochs):
        for data, _label in it:
            assert check(data), "bytes of another object version leaked into the stream"


def _assert_still_serving(daemon: DaemonProcess, objects: Objects) -> None:
    image = objects.put("ok-images", idx_bytes(IMAGES))
    label = objects.put("ok-labels", idx_bytes(LABELS))
    with _open(daemon, image, label) as it:
        assert sum(len(lb) for _, lb in it) == 20


def test_missing_object_names_the_url(daemon: DaemonProcess, objects: Objects) -> None:
    label = objects.put("labels", idx_bytes(LABELS))
    missing = f"s3://{BUCKET}/{objects.prefix}/no-such-images"
    with pytest.raises(ObjectNotFound, match=re.escape(missing) + r".*HTTP 404.*check the key"):
        _open(daemon, missing, label)
    _assert_still_serving(daemon, objects)


def test_missing_bucket_names_the_url(daemon: DaemonProcess, objects: Objects) -> None:
    label = objects.put("labels", idx_bytes(LABELS))
    with pytest.raises(ObjectNotFound, match=re.escape("s3://no-such-bucket-here/images")):
        _open(daemon, "s3://no-such-bucket-here/images", label)


def test_missing_local_file_names_the_path(daemon: DaemonProcess, tmp_path: Path) -> None:
    with pytest.raises(ObjectNotFound, match=re.escape(str(tmp_path / "nothing"))):
        _open(daemon, str(tmp_path / "nothing"), str(tmp_path / "nothing-either"))


def test_bad_idx_magic_names_the_object_and_offset(daemon: DaemonProcess, objects: Objects) -> None:
    image = objects.put("images", b"\x12\x34" + idx_bytes(IMAGES)[2:])
    label = objects.put("labels", idx_bytes(LABELS))
    with pytest.raises(FormatError, match=re.escape(image) + r" at byte 0: bad IDX magic 12 34 08 03") as info:
        _open(daemon, image, label)
    assert (info.value.url, info.value.offset) == (image, 0)
    _assert_still_serving(daemon, objects)


def test_unknown_idx_type_code_names_the_byte(daemon: DaemonProcess, objects: Objects) -> None:
    image = objects.put("images", b"\x00\x00\x07" + idx_bytes(IMAGES)[3:])
    label = objects.put("labels", idx_bytes(LABELS))
    with pytest.raises(FormatError, match=re.escape(image) + r" at byte 2: unknown IDX type code 0x07"):
        _open(daemon, image, label)


def test_truncated_idx_says_how_many_bytes_are_missing(daemon: DaemonProcess, objects: Objects) -> None:
    image = objects.put("images", idx_bytes(IMAGES)[:-100])
    label = objects.put("labels", idx_bytes(LABELS))
    with pytest.raises(FormatError, match=re.escape(image) + r" at byte 15596: truncated") as info:
        _open(daemon, image, label)
    assert info.value.offset == 16 + 20 * 784 - 100


def test_count_mismatch_names_both_objects(daemon: DaemonProcess, objects: Objects) -> None:
    image = objects.put("images", idx_bytes(IMAGES))
    label = objects.put("labels", idx_bytes(LABELS[:19]))
    with pytest.raises(FormatError, match=re.escape(f"{image} holds 20 images but {label} holds 19 labels")):
        _open(daemon, image, label)
    _assert_still_serving(daemon, objects)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"batch_size": 0}, "batch_size must be at least 1"),
        ({"num_parts": 2, "part_index": 2}, r"part_index must be in \[0, num_parts\)"),
        ({"last_batch": "roll_over"}, "last_batch must be one of"),
        ({"dtype": "int8"}, "dtype must be one of"),
        ({"batch_size": 21}, "not one whole batch of 21"),
    ],
)
def test_bad_arguments_are_refused_clearly(
    daemon: DaemonProcess, objects: Objects, options: dict[str, object], message: str
) -> None:
    image = objects.put("images", idx_bytes(IMAGES))
    label = objects.put("labels", idx_bytes(LABELS))
    with pytest.raises(InvalidRequest, match=message):
        _open(daemon, image, label, **options)


def test_unsupported_url_scheme_is_refused(daemon: DaemonProcess) -> None:
    with pytest.raises(InvalidRequest, match=r"gs:// scheme is not supported"):
        _open(daemon, "gs://bucket/images", "gs://bucket/labels")


def test_unknown_format_is_refused(daemon: DaemonProcess) -> None:
    request = Open(format="tfrecord", sources={"data": "s3://b/k"}, batch_size=4)
    with pytest.raises(InvalidRequest, match="unknown format 'tfrecord'"):
        BatchIterator(request, socket_path=daemon.socket_path)


def test_object_overwritten_mid_stream_fails_the_epoch_not_mixes_it(s3_server: EmbeddedS3, objects: Objects) -> None:
    images = np.zeros((2000, 28, 28), dtype=np.uint8)
    image = objects.put("images", idx_bytes(images))
    label = objects.put("labels", idx_bytes(np.zeros(2000, dtype=np.uint8)))
    # without the epoch cache every epoch refetches, and the pinned ETag catches the overwrite
    uncached = DaemonProcess(env=s3_server.environment(), args=("--cache-size", "0"))
    with uncached, _open(uncached, image, label, batch_size=10) as it:
        next(it)
        objects.put("images", idx_bytes(images + 1))  # same size, new ETag
        with pytest.raises(ObjectChanged, match=re.escape(image) + r" was overwritten after the stream opened it"):
            _drain_epochs(it, 3, check=lambda data: not data.any())  # epoch 1 refetches after the overwrite


def test_with_the_cache_a_stream_keeps_its_version_and_a_new_stream_gets_the_new_one(
    daemon: DaemonProcess, objects: Objects
) -> None:
    images = np.zeros((2000, 28, 28), dtype=np.uint8)
    image = objects.put("images", idx_bytes(images))
    label = objects.put("labels", idx_bytes(np.zeros(2000, dtype=np.uint8)))
    with _open(daemon, image, label, batch_size=1000) as it:
        _drain_epochs(it, 1)  # the whole object is cached now
        objects.put("images", idx_bytes(images + 1))
        _drain_epochs(it, 2, check=lambda data: not data.any())  # the version it pinned, from the cache
    with _open(daemon, image, label, batch_size=1000) as it:
        _drain_epochs(it, 1, check=lambda data: bool((data > 0).all()))


def test_daemon_not_running_fails_at_once(tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(DaemonUnavailable, match=re.escape(str(tmp_path / "none.sock")) + ".*prefetchd serve"):
        idx_iter("s3://b/i", "s3://b/l", batch_size=1, socket_path=tmp_path / "none.sock", autostart=False)
    assert time.monotonic() - started < 2.0


@pytest.fixture(scope="module")
def locked_store() -> Iterator[tuple[EmbeddedS3, dict[str, str]]]:
    """A moto server that checks IAM: a user who may list the bucket but not read its objects."""
    with EmbeddedS3(env={"INITIAL_NO_AUTH_ACTION_COUNT": "5"}) as server:
        admin = server.client()
        admin.create_bucket(Bucket="locked")
        admin.put_object(Bucket="locked", Key="images", Body=idx_bytes(IMAGES))
        iam = botocore.session.get_session().create_client(
            "iam",
            endpoint_url=server.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id="admin",
            aws_secret_access_key="admin",
        )
        iam.create_user(UserName="reader")
        key = iam.create_access_key(UserName="reader")["AccessKey"]
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "*"}],
        }
        iam.put_user_policy(UserName="reader", PolicyName="list-only", PolicyDocument=json.dumps(policy))
        env = {
            "AWS_ENDPOINT_URL_S3": server.endpoint_url,
            "AWS_REGION": CREDENTIALS["AWS_REGION"],
            "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
        }
        yield server, env


def test_access_denied_names_the_url(locked_store: tuple[EmbeddedS3, dict[str, str]]) -> None:
    _, env = locked_store
    with DaemonProcess(env=env) as daemon:
        with pytest.raises(AccessDenied, match=re.escape("s3://locked/images") + r" \(HTTP 403.*may not read it"):
            _open(daemon, "s3://locked/images", "s3://locked/images")
        assert "s3://locked" in daemon.log()
        assert env["AWS_SECRET_ACCESS_KEY"] not in daemon.log()


def _raw_connection(daemon: DaemonProcess) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(str(daemon.socket_path))
    return sock


def _read_until_closed(sock: socket.socket) -> list[Message]:
    reader = FrameReader()
    messages = []
    while True:
        data = sock.recv(65536)
        reader.feed(data)
        while not isinstance(message := reader.next_message(), Sentinel):
            messages.append(message)
        if not data:
            return messages


def test_malformed_frame_gets_an_error_and_the_daemon_goes_on(daemon: DaemonProcess, objects: Objects) -> None:
    with _raw_connection(daemon) as sock:
        sock.sendall(encode(Hello(PROTOCOL_VERSION, 1, "test", 0)))
        sock.sendall(b"\x05\x00\x00\x00{oops")
        messages = _read_until_closed(sock)
    assert isinstance(messages[0], Welcome)
    assert isinstance(messages[1], Error) and messages[1].code == "protocol_error"
    assert "not JSON" in messages[1].message
    _assert_still_serving(daemon, objects)


def test_version_mismatch_is_refused_with_what_to_install(daemon: DaemonProcess) -> None:
    with _raw_connection(daemon) as sock:
        sock.sendall(encode(Hello(PROTOCOL_VERSION + 1, 1, "future-client", 0)))
        (error,) = _read_until_closed(sock)
    assert isinstance(error, Error) and error.code == "protocol_error"
    assert "install matching prefetchd and prefetchd-client releases" in error.message


def test_a_frame_we_got_wrong_comes_back_as_our_own_fault(daemon: DaemonProcess, objects: Objects) -> None:
    image = objects.put("images", idx_bytes(IMAGES))
    label = objects.put("labels", idx_bytes(LABELS))
    with _open(daemon, image, label) as it:
        next(it)
        it._conn.send(Release(999, 1))  # a slot the ring does not have
        with pytest.raises(LocalProtocolError, match="Release names slot 999"):
            _drain_epochs(it, 10)  # the error arrives after the batches already on their way
    _assert_still_serving(daemon, objects)
