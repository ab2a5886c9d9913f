"""Small helpers shared by the tests: IDX bytes, reference arrays read straight from the files."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from prefetchd.testing.embedded_s3 import EmbeddedS3


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


def requests_for(s3_server: EmbeddedS3, key: str, method: str = "GET") -> int:
    """`method` requests for `key` in the S3 server's request log, once the log has stopped growing."""
    count = -1
    for _ in range(50):
        now = sum(1 for line in list(s3_server.log) if f"{method} /" in line and key in line)
        if now == count:
            return now
        count = now
        time.sleep(0.1)
    return count
