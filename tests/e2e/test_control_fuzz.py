"""Hostile control frames sent to a live daemon: each conversation ends with an error or a clean close, the daemon
neither crashes nor hangs, and a well-behaved client's stream goes on throughout.

The fuzzer speaks raw bytes on the socket: garbage, frames announcing a size past the limit, JSON objects of
any shape, and real messages with any values (opens included, some of them valid), with or without a handshake
first. It half-closes its end after sending, so that every conversation has an end the daemon must reach.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from prefetchd.testing.daemon_process import DaemonProcess
from prefetchd.testing.embedded_s3 import EmbeddedS3
from prefetchd_client import BatchIterator, idx_iter
from prefetchd_client.errors import ERROR_CLASSES
from prefetchd_client.layout import FORMAT_VERSION
from prefetchd_client.protocol import (
    LENGTH_PREFIX,
    MAX_FRAME_BYTES,
    MESSAGE_TYPES,
    PROTOCOL_VERSION,
    Batch,
    Close,
    EndOfEpoch,
    Error,
    FrameReader,
    Hello,
    Message,
    Open,
    Opened,
    Release,
    Seek,
    Sentinel,
    Welcome,
    encode,
)
from tests.conftest import BUCKET
from tests.e2e.test_security import IMAGES, LABELS
from tests.helpers import idx_bytes

HANG_S = 20.0  # far past any answer the daemon owes; reaching it means it hung
PREFIX = "tests/fuzz"
HELLO = encode(Hello(PROTOCOL_VERSION, FORMAT_VERSION, "fuzzer", 0))
CODES = set(ERROR_CLASSES) | {"protocol_error"}


@pytest.fixture(scope="module")
def urls(s3_server: EmbeddedS3) -> dict[str, str]:
    client = s3_server.client()
    client.create_bucket(Bucket=BUCKET) if BUCKET not in {b["Name"] for b in client.list_buckets()["Buckets"]} else None
    found = {}
    for name, data in (("images", idx_bytes(IMAGES)), ("labels", idx_bytes(LABELS)), ("blob", bytes(range(256)) * 64)):
        client.put_object(Bucket=BUCKET, Key=f"{PREFIX}/{name}", Body=data)
        found[name] = f"s3://{BUCKET}/{PREFIX}/{name}"
    return found


@pytest.fixture(scope="module")
def fuzzed(
    s3_server: EmbeddedS3, urls: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[DaemonProcess, BatchIterator]]:
    """A daemon of its own (its log is read at the end) and a well-behaved stream kept open on it throughout."""
    config = tmp_path_factory.mktemp("fuzz") / "prefetchd.toml"
    config.write_text('max_ring_bytes_per_client = "256MiB"\n')  # hostile opens must not take the machine's memory
    with DaemonProcess(env=s3_server.environment(), args=("--config", str(config))) as daemon:
        with idx_iter(urls["images"], urls["labels"], batch_size=5, socket_path=daemon.socket_path) as well_behaved:
            yield daemon, well_behaved
        assert daemon.process is not None and daemon.process.poll() is None, "the daemon died"
        assert "Traceback" not in daemon.log(), "a hostile frame reached a code path the daemon did not expect"


def frame(body: bytes) -> bytes:
    return LENGTH_PREFIX.pack(len(body)) + body


def converse(daemon: DaemonProcess, payload: bytes) -> list[Message]:
    """Send `payload`, half-close, and read every frame the daemon sends until it closes the connection."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(HANG_S)
        sock.connect(str(daemon.socket_path))
        try:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the daemon refused it before reading it all
        reader = FrameReader()
        messages: list[Message] = []
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(sock, 1 << 16, 4)
            except ConnectionResetError:
                data, fds = b"", []
            except TimeoutError:
                pytest.fail(f"the daemon neither answered nor closed within {HANG_S:.0f} s")
            for fd in fds:
                socket.close(fd)
            reader.feed(data)  # what the daemon sends must always parse
            while not isinstance(message := reader.next_message(), Sentinel):
                messages.append(message)
            if not data:
                return messages


def next_batch(it: BatchIterator) -> None:
    try:
        next(it)
    except StopIteration:  # the epoch ended: a new `for` loop (iter) starts the next
        next(iter(it))


# --- what the fuzzer sends ------------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
field_names = sorted({name for cls in MESSAGE_TYPES.values() for name in cls.__dataclass_fields__})
json_objects = st.dictionaries(st.sampled_from(field_names) | st.text(max_size=8), json_values, max_size=6).flatmap(
    lambda fields: st.sampled_from([*MESSAGE_TYPES, "nonsense", None]).map(
        lambda kind: fields if kind is None else {**fields, "type": kind}
    )
)
small = st.integers(-3, 8)
huge = st.integers(-(2**63), 2**63)


def open_messages(urls: dict[str, str]) -> st.SearchStrategy[Open]:
    url = st.sampled_from([*urls.values(), f"s3://{BUCKET}/{PREFIX}/missing", "gs://x/y", "", "/etc/shadow"])
    idx_sources = st.just({"image": urls["images"], "label": urls["labels"]})
    return st.builds(
        Open,
        format=st.sampled_from(["idx", "idx", "bytes", "recordio", "tfrecord"]),
        sources=idx_sources
        | st.just({"object": urls["blob"]})
        | st.dictionaries(st.sampled_from(["image", "label", "object", "rec", "idx"]), url, max_size=3),
        batch_size=st.one_of(small, st.integers(1, 2**40)),
        shuffle=st.booleans(),
        reshuffle=st.booleans(),
        seed=huge,
        num_parts=st.one_of(st.just(1), small),
        part_index=st.one_of(st.just(0), small),
        epoch=st.one_of(small, huge),
        batch=st.one_of(small, huge),
        last_batch=st.sampled_from(["discard", "keep", "pad", "round", "roll_over"]),
        prefetch=st.one_of(small, st.integers(0, 2**40)),
        decode=st.just({})
        | st.dictionaries(st.sampled_from(["flat", "dtype", "data_shape", "resize", "bogus"]), json_values),
    )


def served_opens(urls: dict[str, str]) -> st.SearchStrategy[Open]:
    """Opens the daemon serves: what comes after them reaches an open stream."""
    return st.builds(
        Open,
        format=st.just("idx"),
        sources=st.just({"image": urls["images"], "label": urls["labels"]}),
        batch_size=st.integers(1, 20),
        shuffle=st.booleans(),
        seed=st.integers(0, 2**32),
        epoch=st.integers(0, 3),
        batch=st.integers(0, 3),
        last_batch=st.sampled_from(["keep", "pad", "round"]),
        prefetch=st.integers(0, 8),
    )


def messages(urls: dict[str, str]) -> st.SearchStrategy[Message]:
    return st.one_of(
        open_messages(urls),
        st.builds(Release, slot=st.one_of(small, huge), fill=st.one_of(small, huge)),
        st.builds(Seek, epoch=st.one_of(small, huge), batch=st.one_of(small, huge)),
        st.just(Close()),
        st.builds(Hello, protocol=small, ring_format=small, client=st.text(max_size=10), pid=huge),
        st.builds(Welcome, protocol=small, ring_format=small, daemon=st.text(max_size=10), pid=small),
        st.builds(Batch, slot=small, fill=small, epoch=small, seq=small),
        st.builds(EndOfEpoch, epoch=small, batches=small),
        st.builds(Error, code=st.text(max_size=10), message=st.text(max_size=20)),
    )


def conversations(urls: dict[str, str]) -> st.SearchStrategy[bytes]:
    """Garbage from the first byte, or a handshake and an open (hostile or not) and then anything."""
    frames = st.one_of(
        messages(urls).map(encode),
        json_objects.map(lambda obj: frame(json.dumps(obj).encode())),
        st.binary(max_size=48).map(frame),
        st.integers(MAX_FRAME_BYTES + 1, 2**32 - 1).map(LENGTH_PREFIX.pack),  # a frame too large to be buffered
        st.binary(max_size=12),  # a partial frame or loose bytes
    )
    garbage = st.lists(frames, min_size=1, max_size=4).map(b"".join)
    opens = open_messages(urls) | served_opens(urls)
    opened = st.tuples(opens.map(encode), st.lists(frames, max_size=3).map(b"".join))
    return garbage | opened.map(lambda parts: HELLO + parts[0] + parts[1])


# --- the properties ---------------------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_hostile_conversations_end_in_an_error_or_a_close_and_the_daemon_serves_on(
    fuzzed: tuple[DaemonProcess, BatchIterator], urls: dict[str, str], data: st.DataObject
) -> None:
    daemon, well_behaved = fuzzed
    payload = data.draw(conversations(urls), label="payload")
    answered = converse(daemon, payload)
    errors = [m for m in answered if isinstance(m, Error)]
    event(
        "opened"
        if any(isinstance(m, Opened) for m in answered)
        else f"refused: {errors[0].code}"
        if errors
        else "closed"
    )
    assert all(e.code in CODES and e.fatal for e in errors), errors
    assert len(errors) <= 1 and (not errors or answered[-1] is errors[0]), "an error ends the conversation"
    assert not answered or isinstance(answered[0], Welcome | Error)  # nothing is served before a handshake
    assert daemon.process is not None and daemon.process.poll() is None
    next_batch(well_behaved)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (LENGTH_PREFIX.pack(MAX_FRAME_BYTES + 1), "exceeds the 1048576 limit"),
        (frame(b'{"type":"subscribe","topic":"all"}'), "unknown message type 'subscribe'"),
        (frame(b'{"type":"hello","protocol":1}'), "hello frame is incomplete"),
        (frame(b"\xff\xfe"), "not UTF-8"),
        (HELLO + encode(Release(0, 1)), "expected an open or upload frame after the handshake, got release"),
        (HELLO + frame(b'{"type":"open","format":"idx","sources":{},"batch_size":1,"colour":"red"}'), "unknown fields"),
    ],
)
def test_malformed_oversized_or_unknown_frames_get_a_protocol_error(
    fuzzed: tuple[DaemonProcess, BatchIterator], payload: bytes, message: str
) -> None:
    daemon, well_behaved = fuzzed
    answered = [m for m in converse(daemon, payload) if not isinstance(m, Welcome)]
    assert len(answered) == 1 and isinstance(answered[0], Error)
    assert answered[0].code == "protocol_error" and message in answered[0].message
    next_batch(well_behaved)


def test_a_valid_open_among_the_fuzz_is_served(
    fuzzed: tuple[DaemonProcess, BatchIterator], urls: dict[str, str]
) -> None:
    daemon, _ = fuzzed
    request = Open(format="idx", sources={"image": urls["images"], "label": urls["labels"]}, batch_size=5)
    answered = converse(daemon, HELLO + encode(request))
    assert isinstance(answered[0], Welcome) and isinstance(answered[1], Opened)
    assert all(isinstance(m, Batch | EndOfEpoch) for m in answered[2:])
