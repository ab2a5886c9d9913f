"""RecordIO image datasets for tests, the demo and the benchmark, written by MXNet's own tools.

`mxnet.recordio.MXIndexedRecordIO` with `pack_img` is what `im2rec` uses, so the files are what users
have. The images are smooth gradients plus noise (JPEG sizes like photographs', not like flat colour).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True, slots=True)
class RecFiles:
    rec: Path
    idx: Path
    count: int


def synthetic_image(rng: np.random.Generator, height: int, width: int, channels: int = 3) -> NDArray[np.uint8]:
    """An HWC (or HW) uint8 image: a random gradient per channel plus mild noise."""
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    x = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    planes = []
    for _ in range(channels):
        a, b, c = rng.uniform(-1.0, 1.0, 3)
        plane = 127.5 + 100.0 * np.sin(3.0 * a * x + 2.0 * b * y + c)
        plane = plane + rng.normal(0.0, 12.0, (height, width))
        planes.append(plane)
    image: NDArray[np.uint8] = np.clip(np.stack(planes, axis=-1), 0, 255).astype(np.uint8)
    return image[:, :, 0] if channels == 1 else image


def images(
    count: int, rng: np.random.Generator, sizes: Sequence[tuple[int, int]], channels: int = 3
) -> Iterator[NDArray[np.uint8]]:
    for i in range(count):
        height, width = sizes[i % len(sizes)]
        yield synthetic_image(rng, height, width, channels)


def write_rec(
    path: Path,
    pictures: Sequence[NDArray[np.uint8]] | Iterator[NDArray[np.uint8]],
    labels: Sequence[float | Sequence[float]],
    *,
    quality: int = 95,
    img_fmt: str = ".jpg",
) -> RecFiles:
    """`path` (.rec) and its .idx, one record per picture, keys 0..n-1, ids = keys, as im2rec writes them."""
    from mxnet import recordio  # MXNet is the reference writer; imported only where tests need it

    idx_path = path.with_suffix(".idx")
    writer = recordio.MXIndexedRecordIO(str(idx_path), str(path), "w")
    count = 0
    try:
        for key, (picture, label) in enumerate(zip(pictures, labels, strict=True)):
            multi = not isinstance(label, int | float)
            header = recordio.IRHeader(len(label) if multi else 0, label, key, 0)  # type: ignore[arg-type]
            writer.write_idx(key, recordio.pack_img(header, picture, quality=quality, img_fmt=img_fmt))
            count += 1
    finally:
        writer.close()
    return RecFiles(path, idx_path, count)
