"""Ring format 1 and protocol 2 pinned: docs/format.md, tests/golden/*.bin and the code must describe the same bytes.

The expected bytes are built here from the document's tables with explicit offsets, not from layout.py's
structs, so a change to the code that moves a byte fails against both the document and the golden files.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from prefetchd_client import layout, protocol
from prefetchd_client.errors import ERROR_CLASSES
from prefetchd_client.layout import (
    ArraySpec,
    RingGeometry,
    SlotHeader,
    pack_header,
    pack_slot_header,
    unpack_header,
    unpack_slot_header,
)
from prefetchd_client.protocol import (
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
    encode,
)

GOLDEN = Path(__file__).resolve().parent.parent / "golden"

# --- the ring header of docs/format.md, sections 2.3 and 2.4 -----------------------------------------------------

SLOT_COUNT = 4
ARRAYS: list[tuple[str, str, tuple[int, ...]]] = [
    ("data", "<f4", (100, 1, 28, 28)),
    ("label", "<f4", (100,)),
    ("index", "<u8", (100,)),
]
# (offset in slot, nbytes) worked out by hand in docs/format.md section 2.9
ARRAY_PLACES = [(64, 313600), (313664, 400), (314112, 800)]
SLOT_BYTES = 314944
SEGMENT_BYTES = 1260288


def documented_header() -> bytes:
    """The 512-byte segment header, field by field at the offsets the document gives."""
    out = bytearray(512)
    struct.pack_into("<8s", out, 0, b"PFDRING\x00")  # magic
    struct.pack_into("<I", out, 8, 1)  # format_version
    struct.pack_into("<I", out, 12, 0)  # features
    struct.pack_into("<I", out, 16, 512)  # header_bytes
    struct.pack_into("<I", out, 20, SLOT_COUNT)  # slot_count
    struct.pack_into("<Q", out, 24, SLOT_BYTES)  # slot_bytes
    struct.pack_into("<Q", out, 32, 512)  # slots_offset
    struct.pack_into("<I", out, 40, len(ARRAYS))  # array_count
    struct.pack_into("<Q", out, 48, SEGMENT_BYTES)  # segment_bytes
    for i, ((name, dtype, shape), (offset, nbytes)) in enumerate(zip(ARRAYS, ARRAY_PLACES, strict=True)):
        base = 64 + 128 * i
        out[base : base + len(name)] = name.encode()  # name, NUL-padded
        out[base + 16 : base + 16 + len(dtype)] = dtype.encode()  # dtype, NUL-padded
        struct.pack_into("<Q", out, base + 32, offset)
        struct.pack_into("<Q", out, base + 40, nbytes)
        struct.pack_into("<I", out, base + 48, len(shape))  # ndim
        for j, dim in enumerate(shape):
            struct.pack_into("<Q", out, base + 56 + 8 * j, dim)
    return bytes(out)


def test_the_documented_header_matches_the_golden_file_and_pack_header() -> None:
    golden = (GOLDEN / "ring-v1-header.bin").read_bytes()
    assert len(golden) == 512
    assert documented_header() == golden
    assert pack_header(RingGeometry.build(SLOT_COUNT, ARRAYS)) == golden


def test_the_golden_header_unpacks_to_the_documented_geometry() -> None:
    geometry = unpack_header((GOLDEN / "ring-v1-header.bin").read_bytes())
    assert geometry == RingGeometry(
        slot_count=SLOT_COUNT,
        slot_bytes=SLOT_BYTES,
        arrays=tuple(
            ArraySpec(name, dtype, shape, offset, nbytes)
            for (name, dtype, shape), (offset, nbytes) in zip(ARRAYS, ARRAY_PLACES, strict=True)
        ),
        features=0,
        version=1,
    )
    assert geometry.segment_bytes == SEGMENT_BYTES


# --- the slot header of docs/format.md, section 2.6 --------------------------------------------------------------

SLOT_HEADER = SlotHeader(fill=7, epoch=2, seq=41, valid=96, pad=4, state=2)


def documented_slot_header() -> bytes:
    out = bytearray(64)
    struct.pack_into("<Q", out, 0, 7)  # fill
    struct.pack_into("<Q", out, 8, 2)  # epoch
    struct.pack_into("<Q", out, 16, 41)  # seq
    struct.pack_into("<I", out, 24, 96)  # valid
    struct.pack_into("<I", out, 28, 4)  # pad
    struct.pack_into("<I", out, 32, 2)  # state: READY
    return bytes(out)


def test_the_documented_slot_header_matches_the_golden_file_and_pack_slot_header() -> None:
    golden = (GOLDEN / "ring-v1-slot-header.bin").read_bytes()
    assert len(golden) == 64
    assert documented_slot_header() == golden
    packed = bytearray(64)
    pack_slot_header(packed, 0, SLOT_HEADER)
    assert bytes(packed) == golden


def test_the_golden_slot_header_unpacks_to_the_documented_values() -> None:
    assert unpack_slot_header((GOLDEN / "ring-v1-slot-header.bin").read_bytes(), 0) == SLOT_HEADER


# --- the frames of docs/format.md, section 3 ---------------------------------------------------------------------

IMAGES = "s3://bucket/train-images-idx3-ubyte"
LABELS = "s3://bucket/train-labels-idx1-ubyte"
FRAMES: list[Message] = [
    Hello(protocol=2, ring_format=1, client="prefetchd-client/0.1.0", pid=4242),
    Welcome(protocol=2, ring_format=1, daemon="prefetchd/0.1.0", pid=1000),
    Open(
        format="idx",
        sources={"image": IMAGES, "label": LABELS},
        batch_size=100,
        shuffle=True,
        reshuffle=False,
        seed=7,
        num_parts=2,
        part_index=1,
        epoch=0,
        batch=0,
        last_batch="pad",
        prefetch=4,
        decode={"flat": False, "dtype": "float32"},
        shuffle_window=2674,
    ),
    Opened(
        stream=1,
        segment_bytes=1260288,
        batches_per_epoch=300,
        samples_per_epoch=30000,
        objects={
            "image": {"url": IMAGES, "size": 47040016, "version": '"f68f5ba2a4b4f8d6e3b3b3b5c7e3b2a1"'},
            "label": {"url": LABELS, "size": 60008, "version": '"d53b1bd4a4f1c3e7e0b2a9b8c7d6e5f4"'},
        },
        shuffle_window=2674,
    ),
    Batch(slot=3, fill=7, epoch=2, seq=41),
    EndOfEpoch(epoch=2, batches=300),
    Release(slot=3, fill=7),
    Seek(epoch=3, batch=10),
    Close(),
    Error(
        code="object_not_found",
        message="s3://bucket/missing (HTTP 404) — check the key and region",
        url="s3://bucket/missing",
        offset=None,
        fatal=True,
    ),
]
DOCUMENTED_ORDER = ["hello", "welcome", "open", "opened", "batch", "end_of_epoch", "release", "seek", "close", "error"]


def split_frames(data: bytes) -> list[bytes]:
    """The bodies in `data`, cut by the 4-byte little-endian length prefixes the document describes."""
    bodies = []
    at = 0
    while at < len(data):
        (length,) = struct.unpack_from("<I", data, at)
        bodies.append(data[at + 4 : at + 4 + length])
        at += 4 + length
    assert at == len(data)
    return bodies


def test_encode_of_the_fixed_messages_is_the_golden_file() -> None:
    assert b"".join(encode(message) for message in FRAMES) == (GOLDEN / "protocol-v2-frames.bin").read_bytes()


def test_the_golden_frames_hold_one_of_each_message_in_the_documented_order() -> None:
    bodies = split_frames((GOLDEN / "protocol-v2-frames.bin").read_bytes())
    assert [json.loads(body.decode("utf-8"))["type"] for body in bodies] == DOCUMENTED_ORDER
    assert all(body.isascii() for body in bodies)


def test_the_golden_batch_frame_is_the_one_drawn_in_the_document() -> None:
    bodies = split_frames((GOLDEN / "protocol-v2-frames.bin").read_bytes())
    assert bodies[4] == b'{"type":"batch","slot":3,"fill":7,"epoch":2,"seq":41}'
    assert len(bodies[4]) == 0x35


@pytest.mark.parametrize("piece_bytes", [1, 7, 4096])
def test_frame_reader_parses_the_golden_file_back_into_the_fixed_messages(piece_bytes: int) -> None:
    data = (GOLDEN / "protocol-v2-frames.bin").read_bytes()
    reader = FrameReader()
    parsed: list[Message] = []
    for at in range(0, len(data), piece_bytes):
        reader.feed(data[at : at + piece_bytes])
        while not isinstance(message := reader.next_message(), Sentinel):
            parsed.append(message)
    reader.feed(b"")
    assert reader.next_message() is Sentinel.PEER_CLOSED
    assert parsed == FRAMES


# --- the upload frames of docs/format.md, section 3.7: added to version 1 beside its ten, none of those changed ---

CHECKPOINT = "s3://bucket/checkpoints/mnist-0003.params"
UPLOAD_FRAMES: list[Message] = [
    Upload(url=CHECKPOINT, size_hint=20971520),
    UploadReady(upload=7, part_bytes=8388608, slots=2),
    Part(slot=0, length=8388608),
    PartFree(slot=0),
    Commit(),
    Uploaded(url=CHECKPOINT, size=20971520, etag='"e1b4c2d6f0a3b5c7d9e1f3a5b7c9d1e3-3"'),
]
# written out by hand from the section's tables, not by encode()
UPLOAD_BODIES = [
    b'{"type":"upload","url":"s3://bucket/checkpoints/mnist-0003.params","size_hint":20971520}',
    b'{"type":"upload_ready","upload":7,"part_bytes":8388608,"slots":2}',
    b'{"type":"part","slot":0,"length":8388608}',
    b'{"type":"part_free","slot":0}',
    b'{"type":"commit"}',
    b'{"type":"uploaded","url":"s3://bucket/checkpoints/mnist-0003.params","size":20971520,'
    b'"etag":"\\"e1b4c2d6f0a3b5c7d9e1f3a5b7c9d1e3-3\\""}',
]


def test_the_upload_frames_are_the_golden_file_and_the_documented_bodies() -> None:
    golden = (GOLDEN / "protocol-v1-upload-frames.bin").read_bytes()
    assert b"".join(encode(message) for message in UPLOAD_FRAMES) == golden
    assert split_frames(golden) == UPLOAD_BODIES


def test_frame_reader_parses_the_golden_upload_frames_back() -> None:
    reader = FrameReader()
    reader.feed((GOLDEN / "protocol-v1-upload-frames.bin").read_bytes())
    parsed: list[Message] = []
    while not isinstance(message := reader.next_message(), Sentinel):
        parsed.append(message)
    assert parsed == UPLOAD_FRAMES


# --- the document itself ------------------------------------------------------------------------------------------

FORMAT_DOC = Path(__file__).resolve().parent.parent.parent / "docs" / "format.md"


def test_the_document_quotes_the_codes_constants_with_their_values() -> None:
    text = FORMAT_DOC.read_text()
    quoted = {
        "MAGIC": 'b"' + layout.MAGIC.decode().replace("\0", "\\x00") + '"',
        "FORMAT_VERSION": layout.FORMAT_VERSION,
        "FEATURES": layout.FEATURES,
        "ALIGN": layout.ALIGN,
        "HEADER_BYTES": layout.HEADER_BYTES,
        "SLOT_HEADER_BYTES": layout.SLOT_HEADER_BYTES,
        "MAX_ARRAYS": layout.MAX_ARRAYS,
        "MAX_DIMS": layout.MAX_DIMS,
        "PROTOCOL_VERSION": protocol.PROTOCOL_VERSION,
        "MAX_FRAME_BYTES": protocol.MAX_FRAME_BYTES,
    }
    missing = [f"`{name} = {value}`" for name, value in quoted.items() if f"`{name} = {value}`" not in text]
    assert not missing


def test_the_document_describes_every_message_and_error_code() -> None:
    text = FORMAT_DOC.read_text()
    assert [kind for kind in protocol.MESSAGE_TYPES if f"`{kind}` (" not in text] == []
    assert [code for code in ERROR_CLASSES if f"| `{code}`" not in text] == []
