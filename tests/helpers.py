"""Small helpers shared by the tests: IDX bytes, reference arrays read straight from the files."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file holding `array` (uint8 only, as MNIST's)."""
    assert array.dtype == np.uint8
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.tobytes()


def reference_arrays(fashion_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) uint8 and labels (N,) uint8 of a split, read straight from the files."""
    images = np.fromfile(fashion_dir / f"{split}-images-idx3-ubyte", dtype=np.uint8, offset=16).reshape(-1, 28, 28)
    labels = np.fromfile(fashion_dir / f"{split}-labels-idx1-ubyte", dtype=np.uint8, offset=8)
    return images, labels
