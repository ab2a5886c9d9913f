"""RecordIO framing, image headers, .idx parsing and partitions (prefetchd/formats/recordio.py).

The pure tests build records with `encode`, a transcription of dmlc-core's RecordIOWriter::WriteRecord; the
tests marked mxnet check that transcription, the framer and the partition rules against MXNet 1.9.1 itself.
"""

from __future__ import annotations

import itertools
import math
import struct
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prefetchd.formats import recordio
from prefetchd.formats.recordio import FIRST, LAST, MAGIC_BYTES, MIDDLE, WHOLE
from prefetchd_client.errors import CorruptRecord, FormatError, InvalidRequest, PrefetchdError

URL = "s3://bucket-name/training-data/train.rec"
IDX_URL = "s3://bucket-name/training-data/train.idx"
T = TypeVar("T")


def header(flag: int, length: int) -> bytes:
    return struct.pack("<II", recordio.MAGIC, flag << 29 | length)


def part(flag: int, data: bytes) -> bytes:
    return header(flag, len(data)) + data + bytes(-len(data) % 4)


def encode(payload: bytes) -> bytes:
    """dmlc-core's WriteRecord: cut the payload at each 4-byte-aligned magic word, which is dropped."""
    pieces, start = [], 0
    for i in range(0, len(payload) // 4 * 4, 4):
        if payload[i : i + 4] == MAGIC_BYTES:
            pieces.append(payload[start:i])
            start = i + 4
    pieces.append(payload[start:])
    if len(pieces) == 1:
        return part(WHOLE, pieces[0])
    flags = [FIRST] + [MIDDLE] * (len(pieces) - 2) + [LAST]
    return b"".join(part(flag, piece) for flag, piece in zip(flags, pieces, strict=True))


def encode_all(payloads: list[bytes]) -> tuple[bytes, list[int]]:
    """The file's bytes and each record's offset."""
    encoded = [encode(payload) for payload in payloads]
    offsets = np.cumsum([0] + [len(record) for record in encoded])[:-1]
    return b"".join(encoded), [int(offset) for offset in offsets]


def ends(offsets: list[int], size: int) -> list[int]:
    """Where each record ends: at the next one's offset, the last at the end of the stream."""
    return [*offsets[1:], size] if offsets else []


def frame(data: bytes, cuts: list[int], start_offset: int = 0) -> list[recordio.Record]:
    framer = recordio.RecordFramer(url=URL, start_offset=start_offset)
    records = []
    bounds = [0, *sorted(cuts), len(data)]
    for begin, end in itertools.pairwise(bounds):
        records += framer.feed(memoryview(data)[begin:end])
    framer.finish()
    return records


def framing_error(data: bytes, cuts: list[int] | None = None) -> CorruptRecord:
    with pytest.raises(CorruptRecord) as caught:
        frame(data, cuts or [])
    return caught.value


def read_error(data: bytes, pos: int = 0, base_offset: int = 0) -> CorruptRecord:
    with pytest.raises(CorruptRecord) as caught:
        recordio.read_record(data, pos, url=URL, base_offset=base_offset)
    return caught.value


# Payloads with the magic word at aligned and unaligned positions, and sizes on and off 4-byte boundaries.
payloads = st.one_of(
    st.binary(max_size=300),
    st.lists(st.one_of(st.binary(max_size=40), st.just(MAGIC_BYTES)), max_size=8).map(b"".join),
    st.integers(0, 75).map(lambda words: b"\x01\x02\x03\x04" * words),
)
payload_lists = st.lists(payloads, max_size=12)


@settings(max_examples=200, deadline=None)
@given(payload_list=payload_lists, data=st.data())
def test_framer_returns_every_payload_and_offset_wherever_the_stream_is_cut(
    payload_list: list[bytes], data: st.DataObject
) -> None:
    stream, offsets = encode_all(payload_list)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=10))
    start_offset = data.draw(st.sampled_from([0, 4096, 1 << 40]))

    records = frame(stream, cuts, start_offset)

    assert [record.payload for record in records] == payload_list
    assert [record.offset for record in records] == [start_offset + offset for offset in offsets]
    assert [record.end for record in records] == [start_offset + end for end in ends(offsets, len(stream))]


@settings(max_examples=100, deadline=None)
@given(payload_list=payload_lists)
def test_read_record_reads_each_record_at_its_offset(payload_list: list[bytes]) -> None:
    stream, offsets = encode_all(payload_list)

    for payload, offset, end in zip(payload_list, offsets, ends(offsets, len(stream)), strict=True):
        assert recordio.read_record(stream, offset, url=URL) == (payload, end)
        # as the daemon calls it: exactly the record's byte range, fetched through the index
        assert recordio.read_record(stream[offset:end], 0, url=URL, base_offset=offset) == (payload, end - offset)


def test_split_record_is_joined_with_the_magic_put_back() -> None:
    payload = b"abcd" + MAGIC_BYTES + MAGIC_BYTES + b"xy" + MAGIC_BYTES + b"z"
    stream = encode(payload)

    assert stream == part(FIRST, b"abcd") + part(MIDDLE, b"") + part(LAST, b"xy" + MAGIC_BYTES + b"z")
    assert frame(stream, [3, 17]) == [recordio.Record(0, len(stream), payload)]
    assert recordio.read_record(stream, 0, url=URL) == (payload, len(stream))


def test_magic_at_an_unaligned_position_does_not_split_the_record() -> None:
    payload = b"ab" + MAGIC_BYTES + b"cd"

    assert encode(payload) == part(WHOLE, payload)
    assert frame(encode(payload), [1]) == [recordio.Record(0, 16, payload)]


def test_stream_fed_one_byte_at_a_time_frames_the_same_records() -> None:
    payload_list = [b"", b"a", MAGIC_BYTES, b"abcd" + MAGIC_BYTES * 3 + b"xy", bytes(range(256)), b"ab" + MAGIC_BYTES]
    stream, offsets = encode_all(payload_list)

    records = frame(stream, list(range(len(stream))))

    assert [(record.offset, record.payload) for record in records] == list(zip(offsets, payload_list, strict=True))


def test_framer_keeps_only_the_unfinished_record() -> None:
    stream, _ = encode_all([b"x" * 100, b"y" * 100])
    framer = recordio.RecordFramer(url=URL, start_offset=8)

    first = framer.feed(stream[:150])

    assert [record.payload for record in first] == [b"x" * 100]
    assert framer.offset == 8 + 108
    assert "42 bytes buffered" in repr(framer)
    assert [record.payload for record in framer.feed(stream[150:])] == [b"y" * 100]
    framer.finish()


def test_large_record_fed_in_small_chunks_is_framed_once_complete() -> None:
    payload = bytes(range(256)) * 4096 + MAGIC_BYTES + b"tail"
    stream = encode(payload) + encode(b"next")
    framer = recordio.RecordFramer(url=URL)

    records = [record for begin in range(0, len(stream), 1000) for record in framer.feed(stream[begin : begin + 1000])]

    assert [record.payload for record in records] == [payload, b"next"]


@pytest.mark.parametrize("flag", [MIDDLE, LAST])
def test_part_with_no_first_part_is_reported_where_it_is(flag: int) -> None:
    stream = part(WHOLE, b"ok!!") + part(flag, b"orphan") + part(WHOLE, b"ok")

    for error in (framing_error(stream, [13]), read_error(stream, 12)):
        assert error.offset == 12
        assert error.url == URL
        assert f"{URL} at byte 12" in str(error)
        assert "no first part" in str(error)


@pytest.mark.parametrize("flag", [WHOLE, FIRST])
def test_split_record_without_its_last_part_is_reported_at_its_start(flag: int) -> None:
    stream = part(WHOLE, b"ok!!") + part(FIRST, b"abcd") + part(MIDDLE, b"efgh") + part(flag, b"new")

    for error in (framing_error(stream), read_error(stream, 12)):
        assert error.offset == 12
        assert f"{URL} at byte 12" in str(error)
        assert "no last part" in str(error)
        assert "byte 36" in str(error)


@pytest.mark.parametrize("flag", [4, 5, 7])
def test_unknown_continuation_flag_is_reported(flag: int) -> None:
    stream = part(WHOLE, b"ok!!") + part(flag, b"what")

    error = framing_error(stream)

    assert error.offset == 12
    assert f"unknown RecordIO continuation flag {flag}" in str(error)


@pytest.mark.parametrize("cut", [None, 1, 13, 14])
def test_bad_magic_is_reported_where_the_header_should_be(cut: int | None) -> None:
    stream = part(WHOLE, b"ok!!") + b"PK\x03\x04" + part(WHOLE, b"x")[4:]

    for error in (framing_error(stream, [] if cut is None else [cut]), read_error(b"\x00" * 12 + stream, 24, 100)):
        assert error.offset in (12, 124)
        assert f"at byte {error.offset}: bad RecordIO magic 50 4b 03 04" in str(error)
        assert str(error).startswith(URL)


def test_bad_magic_is_found_from_its_first_four_bytes() -> None:
    error = framing_error(part(WHOLE, b"ok!!") + b"\x00\x00\x00\x00")

    assert error.offset == 12
    assert "bad RecordIO magic 00 00 00 00" in str(error)


@pytest.mark.parametrize("present", [1, 4, 7])
def test_truncated_header_is_reported_at_the_unfinished_record(present: int) -> None:
    stream = part(WHOLE, b"ok!!") + part(WHOLE, b"second")[:present]

    for error in (framing_error(stream), read_error(stream, 12, 1000)):
        assert error.offset in (12, 1012)
        assert f"at byte {error.offset}: truncated record" in str(error)
        assert str(error).startswith(URL)


@pytest.mark.parametrize("present", [8, 10, 14, 15])
def test_truncated_payload_or_padding_is_reported_at_the_unfinished_record(present: int) -> None:
    stream = part(WHOLE, b"ok!!") + part(WHOLE, b"second")[:present]

    error = framing_error(stream, [5])

    assert error.offset == 12
    assert f"{URL} at byte 12: truncated record: the data ends at byte {12 + present}" in str(error)
    assert "up to 28" in str(error)


def test_stream_ending_between_the_parts_of_a_split_record_is_truncated() -> None:
    stream = part(WHOLE, b"ok!!") + part(FIRST, b"abcd") + part(MIDDLE, b"efgh")

    for error in (framing_error(stream), read_error(stream, 12)):
        assert error.offset == 12
        assert "truncated record: the data ends at byte 36" in str(error)


def test_read_record_past_the_data_is_truncated() -> None:
    assert read_error(b"", 0).offset == 0
    assert read_error(part(WHOLE, b"ok!!"), 12, 4).offset == 16


def test_empty_stream_has_no_records() -> None:
    framer = recordio.RecordFramer(url=URL)

    assert framer.feed(b"") == []
    framer.finish()


def test_find_record_start_skips_the_inner_parts_of_split_records() -> None:
    split = encode(b"abcd" + MAGIC_BYTES + b"efgh" + MAGIC_BYTES + b"ij")
    stream = part(WHOLE, b"one!") + split + part(WHOLE, b"three")

    assert recordio.find_record_start(stream, 0) == 0
    assert recordio.find_record_start(stream, 4) == 12
    assert recordio.find_record_start(stream, 16) == 12 + len(split)
    assert recordio.find_record_start(stream, 12 + len(split) + 4) is None
    assert recordio.find_record_start(stream[4:], 4, base_offset=4) == 8  # positions are relative to data


def test_find_record_start_scans_past_long_payloads() -> None:
    stream = part(WHOLE, bytes(300_000)) + part(WHOLE, b"next")

    assert recordio.find_record_start(stream, 4) == 300_008
    assert recordio.find_record_start(stream[:300_012], 4) is None  # the flag word is not there yet


def test_find_record_start_refuses_unaligned_positions() -> None:
    with pytest.raises(ValueError, match="4-byte aligned"):
        recordio.find_record_start(bytes(16), 2)
    with pytest.raises(ValueError, match="4-byte aligned"):
        recordio.find_record_start(bytes(16), 0, base_offset=6)


@given(size=st.integers(0, 10**7).map(lambda n: n * 4), num_parts=st.integers(1, 64), data=st.data())
def test_byte_partitions_are_aligned_and_tile_the_object(size: int, num_parts: int, data: st.DataObject) -> None:
    ranges = [recordio.byte_partition(size, num_parts, part_index) for part_index in range(num_parts)]

    assert ranges[0][0] == 0 and ranges[-1][1] == size
    assert all(end == begin for (_, end), (begin, _) in itertools.pairwise(ranges))
    assert all(begin % 4 == 0 and begin <= end for begin, end in ranges)
    part_index = data.draw(st.integers(0, num_parts - 1))
    step = math.ceil(math.ceil(size / num_parts) / 4) * 4
    assert ranges[part_index] == (min(step * part_index, size), min(step * (part_index + 1), size))


def test_byte_partition_rounds_the_step_up_to_4_bytes() -> None:
    # ceil(1000 / 3) = 334, aligned to 336
    assert [recordio.byte_partition(1000, 3, i) for i in range(3)] == [(0, 336), (336, 672), (672, 1000)]
    assert recordio.byte_partition(8, 4, 3) == (8, 8)


@given(count=st.integers(0, 500), num_parts=st.integers(1, 40))
def test_index_partitions_are_consecutive_blocks_of_ceil_count_over_parts(count: int, num_parts: int) -> None:
    parts = [recordio.index_partition(count, num_parts, part_index) for part_index in range(num_parts)]

    assert [entry for part_range in parts for entry in part_range] == list(range(count))
    step = -(-count // num_parts)
    assert all(len(part_range) == step for part_range in parts if part_range.stop < count)


def test_index_partition_leaves_trailing_parts_empty() -> None:
    # ceil(5 / 4) = 2: parts get 2, 2, 1, 0 records
    assert [recordio.index_partition(5, 4, i) for i in range(4)] == [range(2), range(2, 4), range(4, 5), range(5, 5)]


@pytest.mark.parametrize(("num_parts", "part_index"), [(0, 0), (3, 3), (3, -1), (-1, 0)])
def test_bad_part_arguments_are_invalid_requests(num_parts: int, part_index: int) -> None:
    with pytest.raises(InvalidRequest, match="part_index"):
        recordio.index_partition(10, num_parts, part_index)
    with pytest.raises(InvalidRequest, match="part_index"):
        recordio.byte_partition(1000, num_parts, part_index)


def test_index_is_read_in_offset_order_whatever_the_keys() -> None:
    text = b"7\t120\n3\t0\n\n9\t48\r\n  1   16  \n7\t64"

    offsets = recordio.parse_index(text, url=IDX_URL)

    assert offsets.dtype == np.int64
    assert offsets.tolist() == [0, 16, 48, 64, 120]


def test_empty_index_lists_no_records() -> None:
    assert recordio.parse_index(b"", url=IDX_URL).tolist() == []
    assert recordio.parse_index(b"\n\n", url=IDX_URL).tolist() == []


@pytest.mark.parametrize(
    ("text", "line", "offset"),
    [
        (b"0\t0\n1\n2\t32\n", 2, 4),
        (b"0\t0\n1\t16\t5\n", 2, 4),
        (b"cat\t0\n", 1, 0),
        (b"0\t0\n\n1\t-16\n", 3, 5),
        (b"0\t0x10\n", 1, 0),
        (b"0\t99999999999999999999\n", 1, 0),
        (b"0,0\n", 1, 0),
    ],
)
def test_malformed_index_line_is_reported_with_its_number(text: bytes, line: int, offset: int) -> None:
    with pytest.raises(FormatError) as caught:
        recordio.parse_index(text, url=IDX_URL)

    assert caught.value.url == IDX_URL
    assert caught.value.offset == offset
    assert str(caught.value).startswith(f"{IDX_URL} line {line}: expected 'key<TAB>offset'")


def test_record_spans_run_to_the_next_offset_and_the_last_to_the_end() -> None:
    spans = recordio.record_spans(np.array([0, 16, 48], dtype=np.int64), 100)

    assert spans.dtype == np.int64
    assert spans.tolist() == [16, 32, 52]
    assert recordio.record_spans(np.zeros(0, dtype=np.int64), 100).tolist() == []


@pytest.mark.parametrize(
    ("offsets", "bad", "words"),
    [
        ([0, 48, 16], 48, "must be sorted and distinct"),
        ([0, 16, 16, 32], 16, "must be sorted and distinct"),
        ([0, 16, 100], 100, "0 bytes before the end of the 100-byte object"),
        ([0, 16, 200], 200, "-100 bytes before the end"),
        ([0, 4, 16], 0, "4 bytes before the next offset, too few for a record header"),
        ([0, 18], 18, "multiples of 4"),
        ([-4, 16], -4, "non-negative"),
    ],
)
def test_record_spans_refuse_offsets_that_cannot_be_records(offsets: list[int], bad: int, words: str) -> None:
    with pytest.raises(FormatError) as caught:
        recordio.record_spans(np.array(offsets, dtype=np.int64), 100, url=IDX_URL)

    assert caught.value.offset == bad
    assert str(caught.value).startswith(f"{IDX_URL} at byte {bad}: ")
    assert words in str(caught.value)


def test_index_byte_range_runs_from_the_first_entry_to_the_next_entry() -> None:
    offsets = np.array([0, 16, 48, 64], dtype=np.int64)

    assert recordio.index_byte_range(offsets, 100, range(1, 3)) == (16, 64)
    assert recordio.index_byte_range(offsets, 100, range(2, 4)) == (48, 100)
    assert recordio.index_byte_range(offsets, 100, range(4, 4)) == (100, 100)


def image_payload(flag: int, label: float, labels: list[float], image: bytes, ids: tuple[int, int] = (7, 0)) -> bytes:
    return struct.pack("<IfQQ", flag, label, *ids) + np.array(labels, dtype="<f4").tobytes() + image


def test_image_with_one_label_takes_it_from_the_header() -> None:
    payload = image_payload(0, 3.5, [], b"\xff\xd8jpeg", (2**40 + 1, 9))

    header, image = recordio.unpack_image(payload, url=URL, offset=64)

    assert (header.flag, header.id, header.id2) == (0, 2**40 + 1, 9)
    assert header.label.dtype == np.float32 and header.label.tolist() == [3.5]
    assert bytes(image) == b"\xff\xd8jpeg"
    assert image.obj is payload  # a view, not a copy


def test_image_with_several_labels_takes_them_after_the_header() -> None:
    payload = image_payload(3, 99.0, [1.0, -2.5, 1e6], b"\xff\xd8jpeg")

    header, image = recordio.unpack_image(memoryview(payload), url=URL, offset=64)

    assert header.flag == 3
    assert header.label.dtype == np.float32 and header.label.tolist() == [1.0, -2.5, 1e6]
    assert bytes(image) == b"\xff\xd8jpeg"


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        (b"", "24-byte IRHeader but this record's payload has 0 bytes"),
        (image_payload(0, 1.0, [], b"")[:23], "has 23 bytes"),
        (image_payload(3, 0.0, [1.0, 2.0], b""), "3 float32 labels follow it (36 bytes with the header)"),
        (image_payload(2**32 - 1, 0.0, [], b"jpeg"), "4294967295 float32 labels"),
    ],
)
def test_truncated_image_header_is_reported_at_the_record(payload: bytes, words: str) -> None:
    with pytest.raises(CorruptRecord) as caught:
        recordio.unpack_image(payload, url=URL, offset=4096)

    assert caught.value.offset == 4096
    assert str(caught.value).startswith(f"{URL} at byte 4096: ")
    assert words in str(caught.value)


# ---- against MXNet itself ----


@pytest.mark.mxnet
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload_list=payload_lists, data=st.data())
def test_framer_agrees_with_mxnet_reader_and_writer(payload_list: list[bytes], data: st.DataObject) -> None:
    import mxnet as mx

    with tempfile.TemporaryDirectory() as directory:
        rec, idx = f"{directory}/r.rec", f"{directory}/r.idx"
        writer = mx.recordio.MXIndexedRecordIO(idx, rec, "w")
        tells = []
        for key, payload in enumerate(payload_list):
            tells.append(writer.tell())
            writer.write_idx(key, payload)
        writer.close()
        stream, index = Path(rec).read_bytes(), Path(idx).read_bytes()
        reader = mx.recordio.MXRecordIO(rec, "r")
        read = [reader.read() for _ in payload_list]
        assert reader.read() is None
        reader.close()

    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=10))
    records = frame(stream, cuts)

    assert read == payload_list
    assert [record.payload for record in records] == read
    assert [record.offset for record in records] == tells
    assert recordio.parse_index(index, url=IDX_URL).tolist() == tells
    assert [recordio.read_record(stream, tell, url=URL)[0] for tell in tells] == read
    assert stream == encode_all(payload_list)[0]


@pytest.mark.mxnet
@pytest.mark.parametrize("label", [4.0, [1.0, 2.0, 3.0], [7.5]])
def test_unpack_image_agrees_with_mxnet(label: float | list[float]) -> None:
    import mxnet as mx

    payload = mx.recordio.pack(mx.recordio.IRHeader(0, label, 12345, 6), b"\xff\xd8 image bytes")
    want_header, want_image = mx.recordio.unpack(payload)

    header, image = recordio.unpack_image(payload, url=URL, offset=0)

    assert (header.flag, header.id, header.id2) == (want_header.flag, want_header.id, want_header.id2)
    assert header.label.tolist() == np.atleast_1d(np.asarray(want_header.label, dtype=np.float32)).tolist()
    assert bytes(image) == want_image


@dataclass
class RecFile:
    """A .rec of 8x8 JPEGs whose label is the record number, its .idx, and its record offsets."""

    rec: Path
    idx: Path
    offsets: list[int]


def write_images(directory: Path, count: int, seed: int) -> RecFile:
    """Records of varied sizes (noise or flat images, random quality, junk after the JPEG); some split in parts."""
    import cv2  # noqa: F401  (mxnet.recordio.pack_img needs it)
    import mxnet as mx

    rng = np.random.default_rng(seed)
    rec, idx = directory / f"images-{count}-{seed}.rec", directory / f"images-{count}-{seed}.idx"
    writer = mx.recordio.MXIndexedRecordIO(str(idx), str(rec), "w")
    offsets = []
    for number in range(count):
        noisy = rng.random() < 0.6
        image = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) if noisy else np.full((8, 8, 3), number, np.uint8)
        header = mx.recordio.IRHeader(0, float(number), number, 0)
        payload = mx.recordio.pack_img(header, image, quality=int(rng.integers(20, 100)))
        payload += bytes(int(rng.integers(0, 1500)) if rng.random() < 0.3 else 0)  # decoders ignore it
        if number % 3 == 0:
            payload += bytes(-len(payload) % 4) + MAGIC_BYTES + b"tail"  # split into parts on disk
        offsets.append(writer.tell())
        writer.write_idx(number, payload)
    writer.close()
    return RecFile(rec, idx, offsets)


def mxnet_labels(rec: Path, num_parts: int, part_index: int, idx: Path | None = None) -> list[int]:
    """The labels, in order, that MXNet's ImageRecordIter gives part `part_index` (batch 1, so no padding)."""
    import mxnet as mx

    extra = {} if idx is None else {"path_imgidx": str(idx)}
    batches = mx.io.ImageRecordIter(
        path_imgrec=str(rec),
        data_shape=(3, 8, 8),
        batch_size=1,
        num_parts=num_parts,
        part_index=part_index,
        preprocess_threads=1,
        **extra,
    )
    return [int(batch.label[0].asnumpy()[0]) for batch in batches]


def byte_part_records(stream: bytes, num_parts: int, part_index: int) -> list[int]:
    """Record numbers of a part without an index, by byte_partition + find_record_start + the framer."""
    begin, end = recordio.byte_partition(len(stream), num_parts, part_index)
    begin, end = (recordio.find_record_start(stream, pos) for pos in (begin, end))
    offsets = [record.offset for record in frame(stream, [])]
    begin, end = (len(stream) if pos is None else pos for pos in (begin, end))
    return [number for number, offset in enumerate(offsets) if begin <= offset < end]


PARTITION_CASES = [(7, 3), (10, 4), (61, 8), (13, 13), (5, 8)]


@pytest.mark.mxnet
@pytest.mark.parametrize(("count", "num_parts"), PARTITION_CASES)
def test_byte_partition_gives_each_part_the_records_mxnet_gives_it(tmp_path: Path, count: int, num_parts: int) -> None:
    files = write_images(tmp_path, count, seed=count)
    stream = files.rec.read_bytes()

    parts = [byte_part_records(stream, num_parts, part_index) for part_index in range(num_parts)]

    assert [number for part_records in parts for number in part_records] == list(range(count))
    for part_index, part_records in enumerate(parts):
        if part_records:
            assert mxnet_labels(files.rec, num_parts, part_index) == part_records
        else:
            with pytest.raises(StopIteration):  # MXNet 1.9.1 cannot build an iterator on an empty part
                mxnet_labels(files.rec, num_parts, part_index)


@pytest.mark.mxnet
@pytest.mark.parametrize(("count", "num_parts"), PARTITION_CASES)
def test_index_partition_gives_each_part_the_records_mxnet_gives_it(tmp_path: Path, count: int, num_parts: int) -> None:
    files = write_images(tmp_path, count, seed=count)
    offsets = recordio.parse_index(files.idx.read_bytes(), url=IDX_URL)
    assert offsets.tolist() == files.offsets
    recordio.record_spans(offsets, files.rec.stat().st_size, url=IDX_URL)

    for part_index in range(num_parts):
        entries = recordio.index_partition(len(offsets), num_parts, part_index)
        if entries:  # an empty part crashes MXNet 1.9.1 (segfault), so it is not asked
            assert mxnet_labels(files.rec, num_parts, part_index, files.idx) == list(entries)


@pytest.mark.mxnet
def test_mxnet_visits_an_index_in_offset_order_whatever_its_keys_and_line_order(tmp_path: Path) -> None:
    files = write_images(tmp_path, 10, seed=1)
    rng = np.random.default_rng(3)
    shuffled = tmp_path / "shuffled.idx"
    keys = rng.permutation(10) + 100
    shuffled.write_text(
        "".join(f"{key}\t{files.offsets[line]}\n" for key, line in zip(keys, rng.permutation(10), strict=True))
    )

    offsets = recordio.parse_index(shuffled.read_bytes(), url=IDX_URL)

    assert offsets.tolist() == files.offsets
    assert mxnet_labels(files.rec, 1, 0, shuffled) == list(range(10))
    for part_index in range(3):
        entries = recordio.index_partition(10, 3, part_index)
        assert mxnet_labels(files.rec, 3, part_index, shuffled) == list(entries)


@pytest.mark.mxnet
def test_mxnet_reads_records_an_index_leaves_out_with_the_entry_before_them(tmp_path: Path) -> None:
    files = write_images(tmp_path, 10, seed=2)
    partial = tmp_path / "partial.idx"
    partial.write_text("".join(f"{key}\t{offset}\n" for key, offset in enumerate(files.offsets[::3])))
    offsets = recordio.parse_index(partial.read_bytes(), url=IDX_URL)
    size = files.rec.stat().st_size

    for part_index in range(2):
        begin, end = recordio.index_byte_range(offsets, size, recordio.index_partition(len(offsets), 2, part_index))
        want = [number for number, offset in enumerate(files.offsets) if begin <= offset < end]
        assert mxnet_labels(files.rec, 2, part_index, partial) == want


# ---- hostile input: only the documented errors, whatever the bytes ----


def _damaged(stream: bytes, flips: list[tuple[int, int]], cut: int | None) -> bytes:
    """`stream` with some bytes overwritten and maybe cut short: what a corrupt or truncated .rec holds."""
    data = bytearray(stream)
    for position, value in flips:
        if data:
            data[position % len(data)] = value
    return bytes(data[:cut] if cut is not None else data)


hostile_streams = st.one_of(
    st.binary(max_size=400),
    st.builds(
        _damaged,
        payload_lists.map(lambda payloads: encode_all(payloads)[0]),
        st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), max_size=4),
        st.none() | st.integers(0, 2000),
    ),
)


def _outcome(call: Callable[[], T]) -> tuple[T | None, PrefetchdError | None]:
    """What `call()` returns, or the documented error it raises; anything else propagates and fails the test."""
    try:
        return call(), None
    except (CorruptRecord, FormatError) as error:
        return None, error


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=hostile_streams, cuts=st.lists(st.integers(0, 2000), max_size=6))
def test_the_framer_takes_any_bytes_and_raises_nothing_but_corrupt_record(data: bytes, cuts: list[int]) -> None:
    records, error = _outcome(lambda: frame(data, [cut % (len(data) + 1) for cut in cuts]))
    if error is not None:
        assert isinstance(error, CorruptRecord) and error.url == URL
        assert error.offset is not None and 0 <= error.offset <= len(data)
    else:
        assert records is not None and all(0 <= r.offset < r.end <= len(data) for r in records)


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=hostile_streams, pos=st.integers(0, 500))
def test_reading_a_record_from_any_bytes_raises_nothing_but_corrupt_record(data: bytes, pos: int) -> None:
    pos -= pos % 4
    read, error = _outcome(lambda: recordio.read_record(data, pos, url=URL))
    if error is not None:
        assert isinstance(error, CorruptRecord) and error.url == URL and error.offset is not None
    else:
        assert read is not None
        payload, end = read
        assert pos < end <= len(data) and len(payload) <= end - pos


@settings(max_examples=2000, deadline=None)
@given(payload=st.binary(max_size=64))
def test_any_image_payload_unpacks_or_is_a_corrupt_record(payload: bytes) -> None:
    unpacked, error = _outcome(lambda: recordio.unpack_image(payload, url=URL, offset=4096))
    if error is not None:
        assert isinstance(error, CorruptRecord) and error.offset == 4096
    else:
        assert unpacked is not None and len(unpacked[1]) <= len(payload)


@settings(max_examples=2000, deadline=None)
@given(
    text=st.one_of(
        st.binary(max_size=200),
        st.lists(st.tuples(st.integers(-5, 10**6), st.integers(-5, 10**9)), max_size=10).map(
            lambda rows: "".join(f"{key}\t{offset}\n" for key, offset in rows).encode()
        ),
    ),
    object_size=st.integers(0, 10**9),
)
def test_any_index_parses_or_is_a_format_error(text: bytes, object_size: int) -> None:
    def spans() -> Any:
        return recordio.record_spans(recordio.parse_index(text, url=IDX_URL), object_size, url=URL)

    lengths, error = _outcome(spans)
    if error is not None:
        assert isinstance(error, FormatError) and error.url in (URL, IDX_URL)
    else:
        assert lengths is not None and all(length >= 8 for length in lengths)  # room for a record's header at least
