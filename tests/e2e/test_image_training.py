"""Training with real MXNet from a RecordIO file over s3://, and MXNet's own constructor through the opt-in.

The images are real (Fashion-MNIST, packed as PNG records by MXNet's `pack_img`, as im2rec would), so the
network has something to learn; PNG decodes exactly, so both sides see the same pixels.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from prefetchd.testing.daemon_process import DaemonProcess
from prefetchd.testing.image_records import RecFiles, images, write_rec
from prefetchd.testing.mnist_net import fit_one_epoch
from tests.conftest import Objects

pytestmark = [pytest.mark.mxnet, pytest.mark.slow]


def _idx_array(path: Path) -> np.ndarray:
    data = path.read_bytes()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def _fashion_rec(fashion_dir: Path, tmp_path: Path, split: str, count: int) -> RecFiles:
    pictures = _idx_array(fashion_dir / f"{split}-images-idx3-ubyte")[:count]
    labels = _idx_array(fashion_dir / f"{split}-labels-idx1-ubyte")[:count]
    return write_rec(tmp_path / f"fashion-{split}.rec", list(pictures), [float(v) for v in labels], img_fmt=".png")


def test_a_network_trains_from_a_rec_over_s3_as_from_the_local_file(
    fashion_dir: Path, tmp_path: Path, objects: Objects, daemon: DaemonProcess
) -> None:
    import mxnet as mx

    from prefetchd_client import ImageRecordIter

    train = _fashion_rec(fashion_dir, tmp_path, "train", 6000)
    val = _fashion_rec(fashion_dir, tmp_path, "t10k", 1000)
    remote = {f: objects.put(f.rec.name, f.rec.read_bytes()) for f in (train, val)}
    args = {"data_shape": (1, 28, 28), "batch_size": 100, "scale": 1 / 256, "preprocess_threads": 2}

    def fit(make: type, paths: dict[RecFiles, str], **extra: object) -> float:
        return fit_one_epoch(
            mx, make(path_imgrec=paths[train], **args, **extra), make(path_imgrec=paths[val], **args, **extra)
        )

    local = fit(mx.io.ImageRecordIter, {f: str(f.rec) for f in (train, val)})
    ours = fit(ImageRecordIter, remote, socket_path=str(daemon.socket_path), verbose=False)
    assert local > 0.6, "the reference run itself must learn"
    assert abs(local - ours) <= 0.005


SEED_EXAMPLE = """
import mxnet as mx
import prefetchd_client.mxnet_s3
it = mx.io.ImageRecordIter(path_imgrec="{url}", data_shape=(3, 227, 227), batch_size=4, resize=256)
batches = [batch for batch in it]
print("batches", len(batches), "shape", batches[0].data[0].shape, "pad", batches[-1].pad)
"""


def test_the_seeds_first_example_runs_through_the_one_line_opt_in(
    tmp_path: Path, objects: Objects, daemon: DaemonProcess
) -> None:
    rng = np.random.default_rng(3)
    files = write_rec(tmp_path / "caltech_train.rec", list(images(9, rng, [(300, 400), (260, 260)])), [1.0] * 9)
    url = objects.put("caltech_train.rec", files.rec.read_bytes())
    result = subprocess.run(
        [sys.executable, "-c", SEED_EXAMPLE.format(url=url)],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PREFETCHD_SOCKET": str(daemon.socket_path), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    assert "batches 3 shape (4, 3, 227, 227) pad 3" in result.stdout
    assert f"ImageRecordIOParser2: {url}" in result.stderr
