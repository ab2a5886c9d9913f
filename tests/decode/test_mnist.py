"""IDX records → MNISTIter's arrays (prefetchd/decode/mnist.py), compared byte for byte with MXNet."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from prefetchd.decode.mnist import decode_images, decode_labels
from tests.idx_files import write_mnist_pair


def every_byte_value(count: int, rows: int, cols: int) -> NDArray[np.uint8]:
    """Images that hold each of the 256 byte values (as many as fit), the rest random."""
    images = np.random.default_rng(5).integers(0, 256, size=(count, rows, cols), dtype=np.uint8)
    flat = images.reshape(-1)
    flat[: min(256, flat.size)] = np.arange(min(256, flat.size), dtype=np.uint8)
    return images


@pytest.mark.mxnet
@pytest.mark.parametrize("flat", [False, True])
def test_uint8_images_decode_bit_identical_to_mnist_iter(tmp_path: Path, flat: bool) -> None:
    import mxnet as mx

    count, rows, cols = 40, 7, 9
    images = every_byte_value(count, rows, cols)
    labels = (np.arange(count) % 10).astype(np.uint8)
    image_path, label_path = write_mnist_pair(tmp_path, images, labels)
    batch = next(
        iter(
            mx.io.MNISTIter(
                image=str(image_path),
                label=str(label_path),
                batch_size=count,
                shuffle=False,
                flat=flat,
                silent=True,
            )
        )
    )
    mxnet_data = batch.data[0].asnumpy()
    mxnet_label = batch.label[0].asnumpy()
    data = np.empty(mxnet_data.shape, dtype=np.float32)
    label = np.empty(count, dtype=np.float32)

    decode_images(images, data)
    decode_labels(labels, label)

    assert mxnet_data.dtype == np.float32
    assert mxnet_data.shape == ((count, rows * cols) if flat else (count, 1, rows, cols))
    assert data.tobytes() == mxnet_data.tobytes()
    assert label.tobytes() == mxnet_label.tobytes()


def test_uint8_pixels_are_scaled_by_1_over_256() -> None:
    records = np.arange(256, dtype=np.uint8).reshape(4, 8, 8)
    out = np.empty((4, 1, 8, 8), dtype=np.float32)

    decode_images(records, out)

    assert out.min() == 0.0 and out.max() == np.float32(255 / 256)
    assert np.array_equal(out.reshape(-1) * 256, np.arange(256, dtype=np.float32))


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_other_float_outputs_equal_the_float32_result_cast(dtype: type[np.floating[Any]]) -> None:
    records = every_byte_value(6, 8, 8)
    reference = np.empty((6, 1, 8, 8), dtype=np.float32)
    decode_images(records, reference)
    out = np.empty((6, 1, 8, 8), dtype=dtype)

    decode_images(records, out)

    assert out.tobytes() == reference.astype(dtype).tobytes()


@pytest.mark.parametrize("dtype", ["i1", ">i2", ">i4", ">f4", ">f8"])
def test_other_idx_types_are_cast_unscaled(dtype: str) -> None:
    large = 100 if dtype == "i1" else 30_000  # int8 holds ±127
    records = np.array([[[-100, 0], [1, 100]], [[-large, 7], [8, large]]]).astype(dtype)
    out = np.empty((2, 2, 2), dtype=np.float32)

    decode_images(records, out)

    assert np.array_equal(out, records.astype(np.float32))
    assert out[0, 0, 0] == -100.0


def test_decode_writes_into_a_view_of_the_callers_buffer() -> None:
    records = every_byte_value(3, 4, 4)
    slot = np.full((5, 1, 4, 4), -1.0, dtype=np.float32)  # a ring slot with room for 5 samples

    decode_images(records, slot[:3])

    assert np.array_equal(slot[:3].reshape(3, 4, 4) * 256, records.astype(np.float32))
    assert (slot[3:] == -1.0).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
def test_labels_are_cast_to_the_output_dtype(dtype: type[np.floating[Any]]) -> None:
    labels = np.array([0, 3, 9, 255], dtype=np.uint8)
    out = np.empty(4, dtype=dtype)

    decode_labels(labels, out)

    assert out.dtype == dtype
    assert out.tolist() == [0.0, 3.0, 9.0, 255.0]
