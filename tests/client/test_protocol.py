"""The control protocol's frames: what encode() writes, FrameReader gives back, and every way a peer's bytes fail."""

from __future__ import annotations

import itertools
import json
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prefetchd_client.errors import RemoteProtocolError
from prefetchd_client.protocol import (
    MAX_FRAME_BYTES,
    MESSAGE_TYPES,
    NEED_DATA,
    PEER_CLOSED,
    Batch,
    Close,
    Commit,
    EndOfEpoch,
    Error,
    FrameReader,
    Hello,
    Message,
    Open,
    Opened,
    Part,
    PartFree,
    Release,
    Seek,
    Sentinel,
    Upload,
    Uploaded,
    UploadReady,
    Welcome,
    decode_body,
    encode,
)

# --- strategies -----------------------------------------------------------------------------------------------

ints = st.integers(min_value=-(2**63), max_value=2**64 - 1)
texts = st.text(max_size=20)
json_scalars = (
    st.none() | st.booleans() | ints | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=10)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
json_objects = st.dictionaries(st.text(max_size=6), json_values, max_size=3)

MESSAGE_STRATEGIES: dict[type[Message], st.SearchStrategy[Message]] = {
    Hello: st.builds(Hello, protocol=ints, ring_format=ints, client=texts, pid=ints),
    Welcome: st.builds(Welcome, protocol=ints, ring_format=ints, daemon=texts, pid=ints),
    Open: st.builds(
        Open,
        format=texts,
        sources=st.dictionaries(texts, texts, max_size=3),
        batch_size=ints,
        shuffle=st.booleans(),
        reshuffle=st.booleans(),
        seed=ints,
        num_parts=ints,
        part_index=ints,
        epoch=ints,
        batch=ints,
        last_batch=texts,
        prefetch=ints,
        decode=json_objects,
    ),
    Opened: st.builds(
        Opened,
        stream=ints,
        segment_bytes=ints,
        batches_per_epoch=ints,
        samples_per_epoch=ints,
        objects=st.dictionaries(texts, json_objects, max_size=3),
    ),
    Batch: st.builds(Batch, slot=ints, fill=ints, epoch=ints, seq=ints),
    EndOfEpoch: st.builds(EndOfEpoch, epoch=ints, batches=ints),
    Release: st.builds(Release, slot=ints, fill=ints),
    Seek: st.builds(Seek, epoch=ints, batch=ints),
    Close: st.just(Close()),
    Error: st.builds(
        Error, code=texts, message=texts, url=st.none() | texts, offset=st.none() | ints, fatal=st.booleans()
    ),
    Upload: st.builds(Upload, url=texts, size_hint=st.none() | ints),
    UploadReady: st.builds(UploadReady, upload=ints, part_bytes=ints, slots=ints),
    Part: st.builds(Part, slot=ints, length=ints),
    PartFree: st.builds(PartFree, slot=ints),
    Commit: st.just(Commit()),
    Uploaded: st.builds(Uploaded, url=texts, size=ints, etag=texts),
}
messages = st.one_of(*MESSAGE_STRATEGIES.values())


def frame(body: bytes) -> bytes:
    """A frame around `body`, built from the documented layout rather than encode()."""
    return struct.pack("<I", len(body)) + body


def drain(reader: FrameReader) -> list[Message]:
    """Every whole message the reader holds, stopping at NEED_DATA or PEER_CLOSED."""
    out: list[Message] = []
    while not isinstance(message := reader.next_message(), Sentinel):
        out.append(message)
    return out


def read_all(pieces: list[bytes]) -> list[Message]:
    """Feed `pieces` one by one, draining after each, then EOF; the reader must end cleanly."""
    reader = FrameReader()
    out: list[Message] = []
    for piece in pieces:
        reader.feed(piece)
        out.extend(drain(reader))
    reader.feed(b"")
    out.extend(drain(reader))
    assert reader.next_message() is PEER_CLOSED
    return out


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(set(cuts)), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds) if b > a]


# --- round trips ------------------------------------------------------------------------------------------------


def test_the_strategies_cover_every_message_type() -> None:
    assert {cls.TYPE for cls in MESSAGE_STRATEGIES} == set(MESSAGE_TYPES)


@given(messages)
def test_every_message_round_trips_through_encode_and_frame_reader(message: Message) -> None:
    assert read_all([encode(message)]) == [message]


@given(messages)
def test_encode_writes_a_little_endian_length_then_a_json_object_naming_the_type(message: Message) -> None:
    data = encode(message)
    (length,) = struct.unpack_from("<I", data)
    assert length == len(data) - 4
    body = json.loads(data[4:].decode("utf-8"))
    assert body["type"] == message.TYPE
    assert decode_body(data[4:]) == message


@given(st.lists(messages, max_size=6), st.data())
def test_frame_split_anywhere_gives_the_same_messages(batch: list[Message], data: st.DataObject) -> None:
    stream = b"".join(encode(m) for m in batch)
    cuts = data.draw(st.lists(st.integers(min_value=0, max_value=len(stream)), max_size=12))
    assert read_all(split_at(stream, cuts)) == batch


@given(st.lists(messages, min_size=1, max_size=3))
def test_frames_fed_one_byte_at_a_time_give_the_same_messages(batch: list[Message]) -> None:
    stream = b"".join(encode(m) for m in batch)
    assert read_all([stream[i : i + 1] for i in range(len(stream))]) == batch


def test_several_frames_in_one_feed_come_out_in_order() -> None:
    batch: list[Message] = [Batch(0, 1, 0, 0), Batch(1, 2, 0, 1), EndOfEpoch(0, 2), Close()]
    reader = FrameReader()
    reader.feed(b"".join(encode(m) for m in batch))
    assert drain(reader) == batch
    assert reader.next_message() is NEED_DATA
    assert reader.buffered_bytes == 0


def test_defaults_apply_to_fields_a_peer_leaves_out() -> None:
    body = b'{"type":"open","format":"idx","sources":{"image":"s3://b/k"},"batch_size":10}'
    assert decode_body(body) == Open(format="idx", sources={"image": "s3://b/k"}, batch_size=10)


def test_a_decoder_accepts_any_key_order_and_whitespace() -> None:
    body = b' { "seq" : 4 ,\n "epoch": 3, "fill": 2, "slot": 1, "type": "batch" } '
    assert decode_body(body) == Batch(slot=1, fill=2, epoch=3, seq=4)


# --- need data, end of stream -----------------------------------------------------------------------------------


def test_next_message_needs_data_until_the_whole_frame_has_arrived() -> None:
    data = encode(Release(slot=2, fill=9))
    reader = FrameReader()
    assert reader.next_message() is NEED_DATA
    for i in range(len(data) - 1):
        reader.feed(data[i : i + 1])
        assert reader.next_message() is NEED_DATA
    reader.feed(data[-1:])
    assert reader.next_message() == Release(slot=2, fill=9)
    assert reader.next_message() is NEED_DATA


def test_eof_at_a_frame_boundary_is_peer_closed_after_the_buffered_messages() -> None:
    reader = FrameReader()
    reader.feed(encode(Seek(epoch=1)) + encode(Close()))
    reader.feed(b"")
    assert reader.next_message() == Seek(epoch=1)
    assert reader.next_message() == Close()
    assert reader.next_message() is PEER_CLOSED
    assert reader.next_message() is PEER_CLOSED


def test_eof_before_any_byte_is_peer_closed() -> None:
    reader = FrameReader()
    reader.feed(b"")
    assert reader.next_message() is PEER_CLOSED


@pytest.mark.parametrize("kept", [1, 3, 4, 10], ids=["in-prefix", "prefix-less-one", "prefix-only", "mid-body"])
def test_eof_mid_frame_is_a_remote_protocol_error(kept: int) -> None:
    reader = FrameReader()
    reader.feed(encode(Close()) + encode(Batch(1, 2, 3, 4))[:kept])
    reader.feed(b"")
    assert reader.next_message() == Close()
    with pytest.raises(RemoteProtocolError, match=rf"mid-frame \({kept} bytes\)"):
        reader.next_message()


def test_data_after_eof_is_the_callers_bug() -> None:
    reader = FrameReader()
    reader.feed(b"")
    with pytest.raises(RuntimeError, match="after the peer closed"):
        reader.feed(encode(Close()))


# --- malformed frames -------------------------------------------------------------------------------------------

BATCH_FIELDS = '"slot":3,"fill":7,"epoch":2,"seq":41'
MALFORMED_BODIES = {
    "not-json": (b'{"type":"close"', "not JSON"),
    "empty-body": (b"", "not JSON"),
    "trailing-garbage": (b'{"type":"close"} x', "not JSON"),
    "not-utf8": (b'{"type":"clos\xff"}', "not UTF-8"),
    "utf16-with-bom": ('{"type":"close"}'.encode("utf-16"), "not UTF-8"),
    "utf16-without-bom": ('{"type":"close"}'.encode("utf-16-le"), "not JSON"),
    "utf8-bom": (b'\xef\xbb\xbf{"type":"close"}', "not JSON"),
    "nan": (b'{"type":"open","format":"idx","sources":{},"batch_size":1,"decode":{"mean":NaN}}', "not JSON"),
    "infinity": (b'{"type":"open","format":"idx","sources":{},"batch_size":1,"decode":{"x":-Infinity}}', "not JSON"),
    "json-array": (b'[{"type":"close"}]', "JSON list, not an object"),
    "json-string": (b'"close"', "JSON str, not an object"),
    "json-number": (b"7", "JSON int, not an object"),
    "json-null": (b"null", "not an object"),
    "missing-type": (("{" + BATCH_FIELDS + "}").encode(), "no type field"),
    "type-not-a-string": (b'{"type":5}', "unknown message type 5"),
    "unknown-type": (b'{"type":"launch"}', "unknown message type 'launch'"),
    "type-wrong-case": (b'{"type":"Close"}', "unknown message type 'Close'"),
    "unknown-field": (b'{"type":"close","force":true}', r"close frame has unknown fields \['force'\]"),
    "string-for-int": (b'{"type":"batch","slot":"3","fill":7,"epoch":2,"seq":41}', "batch.slot has the wrong type"),
    "bool-for-int": (b'{"type":"batch","slot":3,"fill":true,"epoch":2,"seq":41}', "batch.fill has the wrong type"),
    "float-for-int": (b'{"type":"batch","slot":3,"fill":7,"epoch":2.0,"seq":41}', "batch.epoch has the wrong type"),
    "null-for-int": (b'{"type":"seek","epoch":null}', "seek.epoch has the wrong type"),
    "int-for-bool": (b'{"type":"error","code":"x","message":"y","fatal":1}', "error.fatal has the wrong type"),
    "int-for-str": (b'{"type":"error","code":7,"message":"y"}', "error.code has the wrong type"),
    "list-for-object": (b'{"type":"open","format":"idx","sources":[],"batch_size":1}', "open.sources has the wrong"),
    "missing-required": (b'{"type":"batch","slot":3,"fill":7,"epoch":2}', "batch frame is incomplete.*seq"),
    "int-over-4300-digits": (b'{"type":"seek","epoch":' + b"9" * 5000 + b"}", "not JSON"),
    "nested-too-deep": (b'{"type":"open","decode":{"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}}", "not JSON"),
    "duplicate-key": (b'{"type":"seek","epoch":1,"epoch":2}', r"duplicate keys \['epoch'\]"),
    "duplicate-nested-key": (b'{"type":"open","format":"idx","sources":{"a":"x","a":"y"},"batch_size":1}', "duplicate"),
    "huge-bad-value": (
        b'{"type":"seek","epoch":"' + b"e" * 100_000 + b'"}',
        r"seek.epoch has the wrong type: 'e+\.\.\.$",
    ),
}


@pytest.mark.parametrize(("body", "problem"), MALFORMED_BODIES.values(), ids=MALFORMED_BODIES.keys())
def test_a_malformed_frame_is_a_remote_protocol_error_naming_the_problem(body: bytes, problem: str) -> None:
    reader = FrameReader()
    reader.feed(frame(body))
    with pytest.raises(RemoteProtocolError, match=problem):
        reader.next_message()


def test_the_body_without_a_type_parses_once_the_type_is_added() -> None:
    good = frame(("{" + '"type":"batch",' + BATCH_FIELDS + "}").encode())
    reader = FrameReader()
    reader.feed(good)
    assert reader.next_message() == Batch(slot=3, fill=7, epoch=2, seq=41)


def test_a_length_prefix_over_the_limit_is_refused_before_the_body_arrives() -> None:
    reader = FrameReader()
    reader.feed(struct.pack("<I", MAX_FRAME_BYTES + 1))
    with pytest.raises(RemoteProtocolError, match=f"frame of {MAX_FRAME_BYTES + 1} bytes exceeds"):
        reader.next_message()


def test_the_largest_length_prefix_is_refused_on_its_own() -> None:
    reader = FrameReader()
    reader.feed(b"\xff\xff\xff\xff")
    with pytest.raises(RemoteProtocolError, match="exceeds"):
        reader.next_message()


def test_a_reader_can_be_given_a_smaller_limit() -> None:
    reader = FrameReader(max_frame_bytes=10)
    reader.feed(encode(Release(slot=1, fill=1))[:4])
    with pytest.raises(RemoteProtocolError, match="exceeds the 10 limit"):
        reader.next_message()


def error_with_body_bytes(n: int) -> Error:
    """An Error message whose frame body is exactly `n` bytes long."""
    overhead = len(encode(Error(code="x", message=""))) - 4
    return Error(code="x", message="m" * (n - overhead))


def test_a_frame_of_exactly_max_frame_bytes_goes_through() -> None:
    message = error_with_body_bytes(MAX_FRAME_BYTES)
    data = encode(message)
    assert len(data) == 4 + MAX_FRAME_BYTES
    assert read_all([data]) == [message]


def test_encode_refuses_a_message_over_max_frame_bytes() -> None:
    with pytest.raises(ValueError, match=f"error frame of {MAX_FRAME_BYTES + 1} bytes exceeds {MAX_FRAME_BYTES}"):
        encode(error_with_body_bytes(MAX_FRAME_BYTES + 1))


def test_encode_refuses_a_float_json_cannot_carry() -> None:
    with pytest.raises(ValueError, match="JSON"):
        encode(Open(format="idx", sources={}, batch_size=1, decode={"mean": float("nan")}))


# --- fuzz -------------------------------------------------------------------------------------------------------

GOOD_FRAMES = [
    encode(Hello(1, 1, "c", 1)),
    encode(Open(format="idx", sources={"image": "s3://b/k"}, batch_size=2, decode={"flat": True})),
    encode(Batch(0, 1, 0, 0)),
    encode(Release(0, 1)),
    encode(Close()),
    encode(Error(code="x", message="y", offset=3)),
]
json_bodies = st.builds(
    lambda kind, fields: json.dumps({"type": kind, **fields}).encode(),
    st.sampled_from([*MESSAGE_TYPES, "nope"]),
    st.dictionaries(
        st.sampled_from(["slot", "fill", "epoch", "seq", "code", "message", "format", "sources", "x"]),
        st.sampled_from([0, -1, 2**70, True, None, "s", 1.5, [], {}, {"k": "v"}]),
    ),
)
frame_like = st.one_of(
    st.binary(max_size=64),  # raw noise: mostly a huge length prefix
    st.binary(max_size=48).map(frame),  # a well-formed prefix around noise
    json_bodies.map(frame),  # a JSON object that may or may not be a valid message
    st.sampled_from(GOOD_FRAMES),
    st.sampled_from(GOOD_FRAMES).map(lambda data: data[: len(data) // 2]),  # a cut-off frame
)


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(frame_like, max_size=4).map(b"".join), st.lists(st.integers(min_value=0, max_value=255), max_size=3))
def test_arbitrary_bytes_only_ever_raise_remote_protocol_error(stream: bytes, cuts: list[int]) -> None:
    reader = FrameReader()
    try:
        for piece in split_at(stream, [cut % (len(stream) + 1) for cut in cuts]):
            reader.feed(piece)
            drain(reader)
        reader.feed(b"")
        # every message consumes at least its 4-byte prefix, so this many calls must reach the end
        for _ in range(len(stream) // 4 + 2):
            result: Any = reader.next_message()
            if result is PEER_CLOSED:
                break
            assert result is not NEED_DATA, "NEED_DATA after EOF"
        else:
            pytest.fail("the reader kept producing messages past the end of its input")
    except RemoteProtocolError:
        pass
