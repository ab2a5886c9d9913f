"""The ImageRecordIter drop-in over s3:// against `mx.io.ImageRecordIter` on the same local files.

The .rec files are written by MXNet's own `MXIndexedRecordIO` + `pack_img`, as im2rec writes them.
With no random augmentation and shuffle=False, every batch must match: labels exactly, pixels within the
decoder's rounding, the same pad and the same number of batches, over several epochs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from prefetchd.testing.daemon_process import DaemonProcess
from prefetchd.testing.embedded_s3 import EmbeddedS3
from prefetchd.testing.image_records import RecFiles, images, write_rec
from tests.conftest import Objects

pytestmark = pytest.mark.mxnet

# OpenCV in MXNet's wheel and opencv-python-headless decode JPEG with different libjpeg builds; measured
# differences stay within a couple of grey levels, and are zero for PNG
PIXEL_TOLERANCE = 3.0


def _dataset(
    tmp_path: Path,
    name: str,
    count: int,
    *,
    sizes: list[tuple[int, int]],
    channels: int = 3,
    label_width: int = 1,
    img_fmt: str = ".jpg",
    seed: int = 0,
) -> RecFiles:
    rng = np.random.default_rng(seed)
    pictures = list(images(count, rng, sizes, channels))
    if label_width == 1:
        labels: list[Any] = [float(i % 10) for i in range(count)]
    else:
        labels = [[float(i), float(i % 3), float(-i)][:label_width] for i in range(count)]
    return write_rec(tmp_path / f"{name}.rec", pictures, labels, img_fmt=img_fmt)


def _upload(objects: Objects, files: RecFiles) -> tuple[str, str]:
    return objects.put(files.rec.name, files.rec.read_bytes()), objects.put(files.idx.name, files.idx.read_bytes())


def assert_same_batches(reference: Any, ours: Any, *, epochs: int = 2, tolerance: float = PIXEL_TOLERANCE) -> int:
    """Walk both iterators in lockstep for `epochs` epochs; returns the batches of the first.

    From the third epoch on, MXNet 1.9.1 reports a stale pad (the previous epoch's, on a batch that is
    full: `getpad()` is not cleared); there our pad must be 0 except on an epoch's last batch.
    """
    assert ours.provide_data == reference.provide_data
    assert ours.provide_label == reference.provide_label
    counts = []
    for epoch in range(epochs):
        count = 0
        pads = []
        for expected, got in zip(reference, ours, strict=True):
            where = f"epoch {epoch} batch {count}"
            if epoch < 2:
                assert got.pad == expected.pad, where
            pads.append(got.pad)
            assert got.label[0].asnumpy().tobytes() == expected.label[0].asnumpy().tobytes(), where
            real = got.data[0].shape[0] - got.pad
            ours_px = got.data[0].asnumpy()[:real].astype(np.float64)
            theirs = expected.data[0].asnumpy()[:real].astype(np.float64)
            assert got.data[0].dtype == expected.data[0].dtype, where
            assert np.abs(ours_px - theirs).max(initial=0.0) <= tolerance, where
            count += 1
        assert not any(pads[:-1]), f"epoch {epoch}: only the last batch may be padded, got {pads}"
        counts.append(count)
        reference.reset()
        ours.reset()
    return counts[0]


def _pair(files: RecFiles, remote: tuple[str, str], daemon: DaemonProcess, *, index: bool, **args: Any) -> Any:
    import mxnet as mx

    from prefetchd_client import ImageRecordIter

    local = {"path_imgrec": str(files.rec)} | ({"path_imgidx": str(files.idx)} if index else {})
    s3 = {"path_imgrec": remote[0]} | ({"path_imgidx": remote[1]} if index else {})
    reference = mx.io.ImageRecordIter(**local, **args)
    ours = ImageRecordIter(**s3, **args, verbose=False, socket_path=str(daemon.socket_path))
    return reference, ours


@pytest.mark.parametrize(
    ("data_shape", "resize", "batch_size"),
    [((3, 28, 28), -1, 4), ((3, 32, 32), 40, 7), ((3, 24, 40), 48, 10), ((3, 16, 16), 16, 33)],
)
@pytest.mark.parametrize("index", [True, False], ids=["with-idx", "without-idx"])
def test_colour_batches_match_mxnet(
    data_shape: tuple[int, int, int],
    resize: int,
    batch_size: int,
    index: bool,
    tmp_path: Path,
    objects: Objects,
    daemon: DaemonProcess,
) -> None:
    files = _dataset(tmp_path, "colour", 61, sizes=[(28, 28), (60, 45), (41, 77), (50, 50)])
    reference, ours = _pair(
        files,
        _upload(objects, files),
        daemon,
        index=index,
        data_shape=data_shape,
        resize=resize,
        batch_size=batch_size,
        shuffle=False,
    )
    assert assert_same_batches(reference, ours, epochs=3) == -(-61 // batch_size)


def test_batches_cut_across_many_small_ranges_match_mxnet(
    tmp_path: Path, objects: Objects, s3_server: EmbeddedS3
) -> None:
    """4 KiB ranges of ~1 KB records: most batches take records from two or three ranges, and the daemon
    copies each run of records one range holds in one piece."""
    files = _dataset(tmp_path, "small-ranges", 61, sizes=[(28, 28), (60, 45)])
    assert files.rec.stat().st_size > 61 * 4096 // 9  # a batch of 9 records is more than a range
    env = s3_server.environment() | {"PREFETCHD_MIN_CHUNK_BYTES": "4KiB"}
    with DaemonProcess(env=env, args=("--chunk-size", "4KiB", "--cache-size", "0")) as daemon:
        reference, ours = _pair(
            files, _upload(objects, files), daemon, index=True, data_shape=(3, 28, 28), batch_size=9, shuffle=False
        )
        assert assert_same_batches(reference, ours, epochs=2) == -(-61 // 9)


def test_grayscale_png_with_normalisation_matches_mxnet(
    tmp_path: Path, objects: Objects, daemon: DaemonProcess
) -> None:
    files = _dataset(tmp_path, "gray", 23, sizes=[(30, 30), (36, 44)], channels=1, img_fmt=".png")
    reference, ours = _pair(
        files,
        _upload(objects, files),
        daemon,
        index=True,
        data_shape=(1, 24, 24),
        resize=26,
        batch_size=5,
        mean_r=120.0,
        std_r=58.0,
        scale=0.5,
    )
    assert assert_same_batches(reference, ours, tolerance=1e-4) == 5


def test_colour_normalisation_and_uint8_match_mxnet(tmp_path: Path, objects: Objects, daemon: DaemonProcess) -> None:
    files = _dataset(tmp_path, "norm", 17, sizes=[(40, 40), (35, 52)])
    remote = _upload(objects, files)
    normalised = {"mean_r": 123.68, "mean_g": 116.78, "mean_b": 103.94, "std_r": 58.4, "std_g": 57.1, "std_b": 57.4}
    args = {"data_shape": (3, 32, 32), "resize": 36, "batch_size": 6}
    reference, ours = _pair(files, remote, daemon, index=True, **args, **normalised, scale=1 / 64)
    assert assert_same_batches(reference, ours, tolerance=PIXEL_TOLERANCE / 57.1 / 64 + 1e-6) == 3
    reference, ours = _pair(files, remote, daemon, index=True, **args, dtype="uint8")
    assert assert_same_batches(reference, ours) == 3


def test_multi_label_records_match_mxnet(tmp_path: Path, objects: Objects, daemon: DaemonProcess) -> None:
    files = _dataset(tmp_path, "multi", 14, sizes=[(30, 30)], label_width=3)
    reference, ours = _pair(
        files, _upload(objects, files), daemon, index=True, data_shape=(3, 28, 28), batch_size=4, label_width=3
    )
    assert ours.provide_label[0].shape == (4, 3)
    assert assert_same_batches(reference, ours) == 4


@pytest.mark.parametrize("num_parts", [2, 3])
@pytest.mark.parametrize("index", [True, False], ids=["with-idx", "without-idx"])
def test_each_part_matches_mxnet(
    num_parts: int, index: bool, tmp_path: Path, objects: Objects, daemon: DaemonProcess
) -> None:
    files = _dataset(tmp_path, "parts", 47, sizes=[(30, 30), (70, 40), (33, 90)])
    remote = _upload(objects, files)
    for part_index in range(num_parts):
        reference, ours = _pair(
            files,
            remote,
            daemon,
            index=index,
            data_shape=(3, 28, 28),
            resize=30,
            batch_size=5,
            num_parts=num_parts,
            part_index=part_index,
        )
        assert assert_same_batches(reference, ours, epochs=2) >= 1


def test_round_batch_false_reports_its_padding(tmp_path: Path, objects: Objects, daemon: DaemonProcess) -> None:
    """MXNet 1.9.1 fills the last batch's tail with stale memory and reports pad=0; we report the pad."""
    from prefetchd_client import ImageRecordIter

    files = _dataset(tmp_path, "noround", 10, sizes=[(30, 30)])
    rec, _ = _upload(objects, files)
    ours = ImageRecordIter(
        path_imgrec=rec, data_shape=(3, 28, 28), batch_size=4, round_batch=False, socket_path=str(daemon.socket_path)
    )
    for _ in range(2):
        batches = [(b.label[0].asnumpy().tolist(), b.pad) for b in ours]
        assert batches == [([0, 1, 2, 3], 0), ([4, 5, 6, 7], 0), ([8, 9, 0, 1], 2)]
        ours.reset()


def test_pad_mirror_and_area_resize_match_mxnet(tmp_path: Path, objects: Objects, daemon: DaemonProcess) -> None:
    files = _dataset(tmp_path, "padded", 9, sizes=[(40, 56), (64, 48)])
    reference, ours = _pair(
        files,
        _upload(objects, files),
        daemon,
        index=True,
        data_shape=(3, 32, 32),
        resize=30,
        pad=3,
        fill_value=17,
        mirror=True,
        inter_method=3,
        batch_size=4,
    )
    assert assert_same_batches(reference, ours) == 3
