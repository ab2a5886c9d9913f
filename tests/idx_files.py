"""Small IDX files written with numpy, for tests that compare prefetchd with MXNet's own reader."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

IDX_TYPE_CODES = {"u1": 0x08, "i1": 0x09, ">i2": 0x0B, ">i4": 0x0C, ">f4": 0x0D, ">f8": 0x0E}


def idx_bytes(array: NDArray[Any]) -> bytes:
    """`array` as an IDX file: magic 00 00 <type> <ndim>, big-endian u32 dims, big-endian data."""
    dtype = array.dtype.newbyteorder(">") if array.dtype.itemsize > 1 else array.dtype
    code = IDX_TYPE_CODES[dtype.str.lstrip("|")]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(dtype).tobytes()


def write_idx(path: Path, array: NDArray[Any]) -> Path:
    path.write_bytes(idx_bytes(array))
    return path


def indexed_images(count: int, rows: int = 4, cols: int = 5) -> NDArray[np.uint8]:
    """Images whose first two pixels hold the sample's index (high byte, low byte); the rest is noise."""
    rng = np.random.default_rng(1234)
    images = rng.integers(0, 256, size=(count, rows, cols), dtype=np.uint8)
    index = np.arange(count)
    images[:, 0, 0] = index >> 8
    images[:, 0, 1] = index & 0xFF
    return images


def index_of_images(images: NDArray[Any]) -> NDArray[np.int64]:
    """The indices `indexed_images` wrote, from uint8 pixels or MXNet's pixels scaled by 1/256."""
    flat = np.asarray(images).reshape(len(images), -1)
    if flat.dtype != np.uint8:
        flat = np.rint(flat * 256).astype(np.int64)
    return flat[:, 0].astype(np.int64) * 256 + flat[:, 1].astype(np.int64)


def write_mnist_pair(directory: Path, images: NDArray[np.uint8], labels: NDArray[np.uint8]) -> tuple[Path, Path]:
    """An image file (count, rows, cols) and a label file (count,), both type 0x08, as MNISTIter reads them."""
    return write_idx(directory / "images-idx3-ubyte", images), write_idx(directory / "labels-idx1-ubyte", labels)
