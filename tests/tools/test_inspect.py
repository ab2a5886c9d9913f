"""`prefetchd inspect`: the pure summaries (prefetchd/tools/inspect.py) and the command against moto's S3 server.

RecordIO test files come from `encode_all`, the transcription of dmlc-core's writer in tests/formats, or, in the
tests marked mxnet, from MXNet's own `MXIndexedRecordIO`, which also reads them back as the reference.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from prefetchd.formats.recordio import MAGIC_BYTES
from prefetchd.testing.embedded_s3 import EmbeddedS3
from prefetchd.tools.inspect import (
    Format,
    RecordScan,
    check_index,
    detect_format,
    finish_recordio,
    label_key,
    summarize_idx,
    summarize_recordio,
)
from prefetchd_client.errors import CorruptRecord, FormatError, InvalidRequest
from tests.conftest import Objects
from tests.formats.test_recordio import encode_all, image_payload
from tests.helpers import idx_bytes
from tests.tools.cli import run_prefetchd

REC_URL = "s3://bucket-name/data/train.rec"
IDX_URL = "s3://bucket-name/data/train.idx"


def image_records(labels: list[float | list[float]]) -> list[bytes]:
    """Image-record payloads as `mxnet.recordio.pack` makes them; the third also holds an aligned magic word."""
    payloads = []
    for number, label in enumerate(labels):
        image = b"\xff\xd8 jpeg " + (MAGIC_BYTES if number == 2 else b"") + bytes(number)
        if isinstance(label, list):
            payloads.append(image_payload(len(label), 0.0, label, image, (number, 0)))
        else:
            payloads.append(image_payload(0, label, [], image, (number, 0)))
    return payloads


def index_text(offsets: list[int]) -> bytes:
    return b"".join(b"%d\t%d\n" % (key, offset) for key, offset in enumerate(offsets))


# the pure summaries


@pytest.mark.parametrize(
    ("name", "head", "expected"),
    [
        ("labels", bytes([0, 0, 8, 1, 0, 0, 0, 3]), Format.IDX),
        ("data.bin", MAGIC_BYTES + bytes(4), Format.RECORDIO),
        ("damaged.rec", b"garbage!", Format.RECORDIO),  # its framing error is then reported, at byte 0
        ("train-images-idx3-ubyte", b"garbage!", Format.IDX),  # its header error is then reported, at byte 0
    ],
)
def test_the_format_is_known_by_its_first_bytes_or_its_name(name: str, head: bytes, expected: Format) -> None:
    assert detect_format(f"s3://bucket-name/{name}", head) is expected


@pytest.mark.parametrize(
    ("name", "head", "hint"),
    [
        ("train.idx", b"0\t0\n1\t5216\n", "inspect the .rec beside it (s3://bucket-name/train.rec)"),
        ("train-labels-idx1-ubyte.gz", b"\x1f\x8b\x08\x00", "gzip-compressed"),
        ("notes.txt", b"hello", "its first bytes are 68 65 6c 6c 6f"),
        ("empty", b"", "absent (empty object)"),
    ],
)
def test_other_objects_are_refused_with_what_they_look_like(name: str, head: bytes, hint: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        detect_format(f"s3://bucket-name/{name}", head)
    assert f"s3://bucket-name/{name} is not a format prefetchd reads" in str(caught.value)
    assert hint in str(caught.value)


def test_an_idx_label_file_gets_its_header_and_histogram() -> None:
    labels = np.array([3, 1, 3, 0, 3, 1], dtype=np.uint8)

    summary = summarize_idx("s3://bucket-name/labels", idx_bytes(labels))

    assert summary.to_json() == {
        "url": "s3://bucket-name/labels",
        "format": "idx",
        "magic": "00 00 08 01",
        "type": "unsigned byte",
        "dtype": "|u1",
        "dims": [6],
        "records": 6,
        "record_bytes": 1,
        "header_bytes": 8,
        "bytes": 14,
        "labels": {"0": 1, "1": 2, "3": 3},
    }
    assert summary.lines()[-4:] == [
        "  labels   3 distinct",
        "    0           1   16.7%",
        "    1           2   33.3%",
        "    3           3   50.0%",
    ]


def test_an_idx_image_file_gets_its_header_only() -> None:
    images = np.zeros((5, 4, 3), dtype=np.uint8)

    summary = summarize_idx("images", idx_bytes(images))

    assert (summary.header.dims, summary.labels, summary.magic) == ((5, 4, 3), None, "00 00 08 03")
    assert "  records  5 of 4 x 3 (12 bytes each), after a 16-byte header" in summary.lines()


def test_a_truncated_idx_file_is_a_format_error_where_it_ends() -> None:
    data = idx_bytes(np.zeros((5, 4), dtype=np.uint8))[:-3]

    with pytest.raises(FormatError) as caught:
        summarize_idx("s3://bucket-name/images", data)
    assert caught.value.offset == len(data)
    assert f"s3://bucket-name/images at byte {len(data)}: truncated" in str(caught.value)


def test_a_recordio_summary_counts_records_labels_and_joined_parts() -> None:
    stream, offsets = encode_all(image_records([1.0, 0.0, 1.0, [2.0, 5.0], 1.0]))

    summary = summarize_recordio(REC_URL, stream, index_text=index_text(offsets), index_url=IDX_URL)

    assert summary.to_json() == {
        "url": REC_URL,
        "format": "recordio",
        "bytes": len(stream),
        "records": 5,
        "split_records": 1,  # the third payload held an aligned magic word
        "unlabelled_records": 0,
        "label_width": 1,
        "labels": {"0": 1, "1": 3, "2": 1},
        "labels_per_record": {"1": 4, "2": 1},
        "index": {"url": IDX_URL, "entries": 5, "records_not_listed": 0},
    }


def test_label_width_counts_that_many_labels_of_each_record() -> None:
    stream, _ = encode_all(image_records([[2.0, 5.0], [2.0, 7.5], 4.0]))

    summary = summarize_recordio(REC_URL, stream, label_width=2)

    assert summary.labels == {"2": 2, "4": 1, "5": 1, "7.5": 1}
    assert summary.index is None


def test_labels_are_written_as_people_write_them() -> None:
    assert [label_key(v) for v in (3.0, 7.5, 0.1, 1234567.0, -1.0)] == ["3", "7.5", "0.1", "1234567", "-1"]


@pytest.mark.parametrize("chunk_bytes", [1, 7, 64, 1 << 20])
def test_a_scan_fed_in_chunks_of_any_size_sums_up_the_same(chunk_bytes: int) -> None:
    stream, _ = encode_all(image_records([float(i % 4) for i in range(30)]))
    scan = RecordScan(REC_URL)

    for start in range(0, len(stream), chunk_bytes):
        scan.feed(memoryview(stream)[start : start + chunk_bytes])

    assert finish_recordio(scan, len(stream), None, None) == summarize_recordio(REC_URL, stream)


def test_a_flipped_magic_byte_is_a_corrupt_record_at_its_offset() -> None:
    stream, offsets = encode_all(image_records([0.0, 1.0, 2.0, 3.0]))
    damaged = bytearray(stream)
    damaged[offsets[3]] ^= 0xFF

    with pytest.raises(CorruptRecord) as caught:
        summarize_recordio(REC_URL, bytes(damaged))
    assert caught.value.offset == offsets[3]
    assert f"{REC_URL} at byte {offsets[3]}: bad RecordIO magic" in str(caught.value)


def test_a_truncated_recordio_object_is_a_corrupt_record_at_its_last_record() -> None:
    stream, offsets = encode_all(image_records([0.0, 1.0, 2.0]))

    with pytest.raises(CorruptRecord) as caught:
        summarize_recordio(REC_URL, stream[:-4])
    assert caught.value.offset == offsets[2]
    assert "truncated record" in str(caught.value)


def test_an_index_offset_where_no_record_starts_is_named() -> None:
    record_offsets = np.array([0, 40, 96, 200], dtype=np.int64)

    with pytest.raises(FormatError) as caught:
        check_index(record_offsets, np.array([0, 40, 100], dtype=np.int64), rec_url=REC_URL, index_url=IDX_URL)
    assert caught.value.offset == 100
    assert f"{IDX_URL} lists byte 100 of {REC_URL}, where no record starts (records start at bytes 96 and 200" in str(
        caught.value
    )


def test_records_the_index_leaves_out_are_counted_not_refused() -> None:
    check = check_index(np.array([0, 40, 96], dtype=np.int64), np.array([0, 96]), rec_url=REC_URL, index_url=IDX_URL)

    assert (check.entries, check.records_not_listed) == (2, 1)


# the command, against moto


def inspect(s3_server: EmbeddedS3, *args: str) -> dict[str, object]:
    result = run_prefetchd(s3_server, "inspect", "--json", *args)
    assert result.returncode == 0, result.stderr
    report: dict[str, object] = json.loads(result.stdout)
    return report


def test_fashion_mnist_labels_histogram_is_numpys(
    s3_server: EmbeddedS3, fashion_urls: dict[str, str], fashion_dir: Path
) -> None:
    labels = np.fromfile(fashion_dir / "train-labels-idx1-ubyte", dtype=np.uint8, offset=8)

    report = inspect(s3_server, fashion_urls["train-labels-idx1-ubyte"])

    assert report["labels"] == {str(label): int(n) for label, n in enumerate(np.bincount(labels)) if n}
    assert (report["dims"], report["records"], report["magic"]) == ([60000], 60000, "00 00 08 01")
    assert report["bytes"] == (fashion_dir / "train-labels-idx1-ubyte").stat().st_size


def test_fashion_mnist_images_show_their_header_in_words(
    s3_server: EmbeddedS3, fashion_urls: dict[str, str], fashion_dir: Path
) -> None:
    url = fashion_urls["t10k-images-idx3-ubyte"]

    result = run_prefetchd(s3_server, "inspect", url)

    assert result.returncode == 0, result.stderr
    size = (fashion_dir / "t10k-images-idx3-ubyte").stat().st_size
    assert result.stdout.splitlines() == [
        f"{url}: IDX, {size:,} bytes",
        "  magic    00 00 08 03 (type 0x08 unsigned byte, 3 dimensions)",
        "  dims     10000 x 28 x 28",
        "  records  10,000 of 28 x 28 (784 bytes each), after a 16-byte header",
        "  check    ok: the size is what the header declares",
    ]


def test_a_local_path_reads_as_its_s3_copy_does(
    s3_server: EmbeddedS3, fashion_urls: dict[str, str], fashion_dir: Path
) -> None:
    local = inspect(s3_server, str(fashion_dir / "t10k-labels-idx1-ubyte"))
    remote = inspect(s3_server, fashion_urls["t10k-labels-idx1-ubyte"])

    assert {**local, "url": None} == {**remote, "url": None}


def test_a_recordio_object_and_its_index_are_checked_with_a_progress_bar(
    s3_server: EmbeddedS3, objects: Objects
) -> None:
    stream, offsets = encode_all(image_records([float(i % 3) for i in range(40)]))
    url = objects.put("train.rec", stream)
    objects.put("train.idx", index_text(offsets))

    result = run_prefetchd(s3_server, "inspect", url)

    assert result.returncode == 0, result.stderr
    assert f"  index    {url[:-4]}.idx: 40 entries, each at a record start" in result.stdout.splitlines()
    assert "  records  40 (1 written in parts and joined)" in result.stdout.splitlines()
    assert "reading train.rec: 100%" in result.stderr


def test_a_flipped_magic_byte_exits_1_naming_the_object_and_offset(s3_server: EmbeddedS3, objects: Objects) -> None:
    stream, offsets = encode_all(image_records([float(i % 3) for i in range(12)]))
    damaged = bytearray(stream)
    damaged[offsets[7] + 1] ^= 0x01
    url = objects.put("damaged.rec", bytes(damaged))

    result = run_prefetchd(s3_server, "inspect", "--no-progress", url)

    assert result.returncode == 1, result.stderr
    assert f"Error: {url} at byte {offsets[7]}: bad RecordIO magic" in result.stderr
    assert result.stdout == ""


def test_an_index_that_belongs_to_another_rec_exits_1(s3_server: EmbeddedS3, objects: Objects) -> None:
    stream, offsets = encode_all(image_records([0.0, 1.0, 2.0, 3.0]))
    url = objects.put("train.rec", stream)
    objects.put("train.idx", index_text([*offsets[:3], offsets[3] + 4]))

    result = run_prefetchd(s3_server, "inspect", url)

    assert result.returncode == 1
    assert f"Error: {url[:-4]}.idx lists byte {offsets[3] + 4} of {url}, where no record starts" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["http://example.com/train.rec"], "the http:// scheme is not supported"),
        (["s3://bucket-name"], "is not an s3://bucket/key URL"),
        (["s3://bucket-name/training-data/no-such-object"], "ObjectNotFound: s3://bucket-name/training-data/no-such"),
        (["s3://no-such-bucket/train.rec"], "(HTTP 404 NoSuchBucket) — check the bucket and region"),
        (["/nonexistent/train-labels-idx1-ubyte"], "/nonexistent/train-labels-idx1-ubyte: no such file"),
        (["s3://bucket-name/tests/inspect-text/notes.txt"], "is not a format prefetchd reads"),
        (["--label-width", "0", "s3://bucket-name/x.rec"], "Invalid value for '--label-width'"),
        ([], "Missing argument 'URL'"),
    ],
)
def test_bad_arguments_exit_2_with_a_clear_message(
    s3_server: EmbeddedS3, fashion_urls: dict[str, str], args: list[str], message: str
) -> None:
    s3_server.client().put_object(Bucket="bucket-name", Key="tests/inspect-text/notes.txt", Body=b"hello\n")

    result = run_prefetchd(s3_server, "inspect", *args)

    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.mxnet
def test_a_rec_mxnet_wrote_has_the_count_and_labels_mxnet_reads(
    s3_server: EmbeddedS3, objects: Objects, tmp_path: Path
) -> None:
    from mxnet import recordio as mx_recordio

    rec, idx = tmp_path / "multi.rec", tmp_path / "multi.idx"
    writer = mx_recordio.MXIndexedRecordIO(str(idx), str(rec), "w")
    for key in range(25):
        label: float | list[float] = [float(key % 4), 9.0] if key % 5 == 0 else float(key % 3)
        flag = len(label) if isinstance(label, list) else 0
        image = struct.pack("<I", 0xCED7230A) * (key % 2) + bytes(key)  # some records split by the magic word
        writer.write_idx(key, mx_recordio.pack(mx_recordio.IRHeader(flag, label, key, 0), image))
    writer.close()
    url = objects.put("multi.rec", rec.read_bytes())
    objects.put("multi.idx", idx.read_bytes())

    reader = mx_recordio.MXRecordIO(str(rec), "r")
    want: dict[str, int] = {}
    count = 0
    while (item := reader.read()) is not None:
        header, _ = mx_recordio.unpack(item)
        first = float(np.atleast_1d(header.label)[0])
        want[f"{first:g}"] = want.get(f"{first:g}", 0) + 1
        count += 1
    reader.close()

    report = inspect(s3_server, url)

    assert (report["records"], report["labels"]) == (count, dict(sorted(want.items(), key=lambda kv: float(kv[0]))))
    assert report["labels_per_record"] == {"1": 20, "2": 5}
    assert report["split_records"] == 12
    assert report["index"] == {"url": url[:-4] + ".idx", "entries": 25, "records_not_listed": 0}


@pytest.mark.mxnet
def test_the_caltech_stand_in_is_intact(s3_server: EmbeddedS3, caltech_rec: str) -> None:
    report = inspect(s3_server, caltech_rec)

    assert (report["records"], report["labels"]) == (10, {"0": 4, "1": 3, "2": 3})
    assert report["index"] == {"url": caltech_rec[:-4] + ".idx", "entries": 10, "records_not_listed": 0}
