"""IDX records → the arrays `mx.io.MNISTIter` yields, written into a caller-given `out=` (pure).

MXNet scales bytes by 1/256, not 1/255 (src/io/iter_mnist.cc: `img_ *= 1.0f / 256.0f`), so pixels lie in
[0, 255/256]. Multiplying by a power of two is exact in float32, which is what makes the output
byte-identical to MXNet's.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

MNIST_SCALE = np.float32(1.0 / 256.0)


def decode_images(records: NDArray[Any], out: NDArray[Any]) -> None:
    """Scale `records` (n records in the file's dtype) into `out` (n samples of any float shape).

    uint8 records are scaled as MXNet scales them; other IDX types are cast unscaled.
    """
    source = records.reshape(out.shape)
    if records.dtype == np.uint8:
        np.multiply(source, MNIST_SCALE, out=out, dtype=np.float32, casting="unsafe")
    else:
        np.copyto(out, source, casting="unsafe")


def decode_labels(labels: NDArray[Any], out: NDArray[Any]) -> None:
    """Labels as MXNet gives them: float32 (or the requested dtype)."""
    np.copyto(out, labels, casting="unsafe")
