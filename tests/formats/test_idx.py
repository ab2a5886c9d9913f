"""IDX header parsing and size checks (prefetchd/formats/idx.py), fuzzed and checked against MXNet's reader."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prefetchd.formats import idx
from prefetchd_client.errors import FormatError
from tests.idx_files import idx_bytes, indexed_images, write_mnist_pair

URL = "s3://bucket-name/training-data/train-images-idx3-ubyte"
LABEL_URL = "s3://bucket-name/training-data/train-labels-idx1-ubyte"

TYPE_CODES = [(0x08, "u1"), (0x09, "i1"), (0x0B, ">i2"), (0x0C, ">i4"), (0x0D, ">f4"), (0x0E, ">f8")]
DIMS = [(7,), (5, 3), (4, 28, 28), (2, 3, 4, 5), (0, 9, 9), (1, 1, 1, 1, 1, 1)]


def header(type_code: int, dims: tuple[int, ...]) -> bytes:
    return bytes([0, 0, type_code, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)


def format_error(data: bytes, url: str | None = URL) -> FormatError:
    with pytest.raises(FormatError) as caught:
        idx.parse_header(data, url=url)
    return caught.value


@pytest.mark.parametrize(("type_code", "dtype"), TYPE_CODES)
@pytest.mark.parametrize("dims", DIMS)
def test_header_gives_type_dims_and_record_arithmetic(type_code: int, dtype: str, dims: tuple[int, ...]) -> None:
    parsed = idx.parse_header(header(type_code, dims), url=URL)

    assert parsed.dtype == np.dtype(dtype)
    assert parsed.dims == dims
    assert parsed.count == dims[0]
    assert parsed.record_shape == dims[1:]
    assert parsed.header_bytes == 4 + 4 * len(dims)
    assert parsed.record_bytes == math.prod(dims[1:]) * np.dtype(dtype).itemsize
    assert parsed.expected_size == parsed.header_bytes + dims[0] * parsed.record_bytes
    assert parsed.record_offset(0) == parsed.header_bytes
    assert parsed.record_offset(3) == parsed.header_bytes + 3 * parsed.record_bytes


@pytest.mark.parametrize("dtype", [dtype for _, dtype in TYPE_CODES])
def test_record_offsets_locate_each_record_of_a_real_file(dtype: str) -> None:
    array = (np.arange(5 * 3 * 2) - 7).reshape(5, 3, 2).astype(dtype)
    data = idx_bytes(array)

    parsed = idx.parse_header(data, url=URL)
    idx.check_size(parsed, len(data), url=URL)

    assert parsed.expected_size == len(data)
    for record in range(5):
        start = parsed.record_offset(record)
        got = np.frombuffer(data[start : start + parsed.record_bytes], dtype=parsed.dtype)
        assert np.array_equal(got.reshape(parsed.record_shape), array[record])


def test_bytes_after_the_header_are_not_read() -> None:
    assert idx.parse_header(header(0x08, (3, 2)) + b"\xff" * 100).dims == (3, 2)


def test_header_bytes_needed_reads_ndim_from_the_preamble() -> None:
    assert idx.header_bytes_needed(b"\x00\x00\x08\x03") == 16
    assert idx.header_bytes_needed(b"\x00\x00\x08\xff") == 4 + 4 * 255
    with pytest.raises(FormatError) as caught:
        idx.header_bytes_needed(b"\x00\x00")
    assert caught.value.offset == 0


@pytest.mark.parametrize("data", [b"\x01\x00\x08\x01" + bytes(4), b"\x00\x01\x08\x01" + bytes(4), b"PK\x03\x04" * 4])
def test_bad_magic_is_reported_at_byte_0(data: bytes) -> None:
    error = format_error(data)

    assert error.offset == 0
    assert error.url == URL
    assert f"{URL} at byte 0" in str(error)
    assert "magic" in str(error)
    assert data[:4].hex(" ") in str(error)


@pytest.mark.parametrize("type_code", [0x00, 0x07, 0x0A, 0x0F, 0xFF])
def test_unknown_type_code_is_reported_at_byte_2(type_code: int) -> None:
    error = format_error(header(type_code, (3, 2)))

    assert error.offset == 2
    assert f"{URL} at byte 2" in str(error)
    assert f"0x{type_code:02x}" in str(error)


def test_zero_dimensions_are_reported_at_byte_3() -> None:
    error = format_error(b"\x00\x00\x08\x00" + bytes(8))

    assert error.offset == 3
    assert f"{URL} at byte 3" in str(error)
    assert "0 dimensions" in str(error)


@pytest.mark.parametrize("present", [4, 5, 11, 15])
def test_header_shorter_than_its_dims_is_reported_where_the_bytes_end(present: int) -> None:
    data = header(0x08, (10, 28, 28))[:present]

    error = format_error(data)

    assert error.offset == present
    assert f"{URL} at byte {present}" in str(error)
    assert "3 dimensions (16 bytes)" in str(error)


@pytest.mark.parametrize("data", [b"", b"\x00", b"\x00\x00\x08"])
def test_too_short_for_a_preamble_is_reported_at_byte_0(data: bytes) -> None:
    error = format_error(data)

    assert error.offset == 0
    assert f"{URL} at byte 0" in str(error)
    assert f"({len(data)} bytes)" in str(error)


def test_error_without_a_url_still_says_where() -> None:
    error = format_error(b"\x00\x00\x08\x00", url=None)

    assert error.url is None
    assert str(error).startswith("at byte 3: ")


def test_exact_size_passes_the_size_check() -> None:
    parsed = idx.parse_header(header(0x08, (10, 28, 28)))

    idx.check_size(parsed, 16 + 10 * 784, url=URL)


@pytest.mark.parametrize("size", [0, 15, 16, 16 + 9 * 784, 16 + 10 * 784 - 1])
def test_truncated_object_is_reported_where_it_ends(size: int) -> None:
    parsed = idx.parse_header(header(0x08, (10, 28, 28)))

    with pytest.raises(FormatError) as caught:
        idx.check_size(parsed, size, url=URL)

    assert caught.value.offset == size
    assert caught.value.url == URL
    assert f"{URL} at byte {size}: truncated" in str(caught.value)
    assert str(16 + 10 * 784) in str(caught.value)


@pytest.mark.parametrize("extra", [1, 784, 10_000])
def test_trailing_bytes_are_reported_where_the_records_end(extra: int) -> None:
    parsed = idx.parse_header(header(0x08, (10, 28, 28)))
    expected = 16 + 10 * 784

    with pytest.raises(FormatError) as caught:
        idx.check_size(parsed, expected + extra, url=URL)

    assert caught.value.offset == expected
    assert f"{URL} at byte {expected}: {extra} bytes follow" in str(caught.value)


def test_matching_image_and_label_files_pass_the_pair_check() -> None:
    images = idx.parse_header(header(0x08, (10, 28, 28)))
    labels = idx.parse_header(header(0x08, (10,)))

    idx.check_pair(images, labels, image_url=URL, label_url=LABEL_URL)


def test_pair_with_different_counts_names_both_files() -> None:
    images = idx.parse_header(header(0x08, (10, 28, 28)))
    labels = idx.parse_header(header(0x08, (9,)))

    with pytest.raises(FormatError) as caught:
        idx.check_pair(images, labels, image_url=URL, label_url=LABEL_URL)

    message = str(caught.value)
    assert URL in message and LABEL_URL in message
    assert "10 images" in message and "9 labels" in message


def test_label_file_with_two_dimensions_is_refused() -> None:
    images = idx.parse_header(header(0x08, (10, 28, 28)))
    labels = idx.parse_header(header(0x08, (10, 1)))

    with pytest.raises(FormatError) as caught:
        idx.check_pair(images, labels, image_url=URL, label_url=LABEL_URL)

    assert caught.value.url == LABEL_URL
    assert caught.value.offset == 3
    assert f"{LABEL_URL} at byte 3" in str(caught.value)


def test_image_file_with_one_dimension_is_refused() -> None:
    images = idx.parse_header(header(0x08, (10,)))
    labels = idx.parse_header(header(0x08, (10,)))

    with pytest.raises(FormatError) as caught:
        idx.check_pair(images, labels, image_url=URL, label_url=LABEL_URL)

    assert caught.value.url == URL
    assert caught.value.offset == 3


def header_or_error(data: bytes) -> idx.IdxHeader | FormatError:
    try:
        return idx.parse_header(data, url=URL)
    except FormatError as error:
        return error


# Arbitrary bytes, and bytes that start like an IDX header so the later checks are reached too.
idx_like = st.builds(
    lambda type_code, ndim, rest: bytes([0, 0, type_code, ndim]) + rest,
    st.sampled_from([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E, 0x00, 0x0A, 0xFF]),
    st.integers(0, 255),
    st.binary(max_size=80),
)


@settings(max_examples=4000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.one_of(st.binary(max_size=64), idx_like))
def test_parse_header_raises_only_format_error_on_any_bytes(data: bytes) -> None:
    parsed = header_or_error(data)  # any other exception fails the test

    if isinstance(parsed, FormatError):
        assert parsed.offset is not None and 0 <= parsed.offset <= len(data)
        assert parsed.url == URL
        return
    assert parsed.header_bytes <= len(data)
    assert len(parsed.dims) == data[3] >= 1
    assert parsed.dtype == idx.IDX_DTYPES[data[2]]
    assert parsed.header_bytes == idx.header_bytes_needed(data[:4])


@pytest.mark.mxnet
def test_mxnet_reads_the_count_and_shape_the_header_declares(tmp_path: Path) -> None:
    import mxnet as mx

    count, rows, cols = 37, 6, 5
    image_path, label_path = write_mnist_pair(
        tmp_path, indexed_images(count, rows, cols), (np.arange(count) % 10).astype(np.uint8)
    )
    images = idx.parse_header(image_path.read_bytes(), url=str(image_path))
    labels = idx.parse_header(label_path.read_bytes(), url=str(label_path))
    idx.check_size(images, image_path.stat().st_size, url=str(image_path))
    idx.check_pair(images, labels, image_url=str(image_path), label_url=str(label_path))

    batches = list(
        mx.io.MNISTIter(image=str(image_path), label=str(label_path), batch_size=1, shuffle=False, silent=True)
    )

    assert (images.count, images.record_shape) == (count, (rows, cols))
    assert len(batches) == images.count == labels.count
    assert batches[0].data[0].shape == (1, 1, *images.record_shape)
