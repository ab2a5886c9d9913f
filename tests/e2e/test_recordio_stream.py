"""RecordIO streams through a real daemon and a real S3 server: shuffling, bad records, skip mode, workers.

The .rec files are written by MXNet's own `MXIndexedRecordIO`, so these tests need MXNet installed.
"""

from __future__ import annotations

import os
import signal
import struct
from pathlib import Path

import numpy as np
import pytest

from prefetchd.formats.recordio import MAGIC
from prefetchd.testing.daemon_process import DaemonProcess
from prefetchd.testing.image_records import RecFiles, images, write_rec
from prefetchd_client import CorruptRecord, UndecodableImage, recordio_iter
from prefetchd_client.errors import PrefetchdError
from tests.conftest import Objects
from tests.daemon_probe import decode_workers

pytestmark = pytest.mark.mxnet


def _dataset(tmp_path: Path, count: int, name: str = "data") -> RecFiles:
    rng = np.random.default_rng(1)
    return write_rec(
        tmp_path / f"{name}.rec", list(images(count, rng, [(20, 20), (24, 30)])), [float(i) for i in range(count)]
    )


def _epoch_indices(iterator: object) -> list[int]:
    return [int(i) for batch in iterator for i in batch.index[: len(batch.index) - batch.pad]]  # type: ignore[attr-defined]


@pytest.mark.parametrize("index", [True, False], ids=["with-idx", "without-idx"])
def test_shuffled_epochs_are_permutations_seeded_and_different(
    index: bool, tmp_path: Path, objects: Objects, daemon: DaemonProcess
) -> None:
    files = _dataset(tmp_path, 90)
    rec = objects.put("data.rec", files.rec.read_bytes())
    idx = objects.put("data.idx", files.idx.read_bytes()) if index else None
    args = {"batch_size": 8, "data_shape": (3, 16, 16), "shuffle": True, "last_batch": "keep"}

    def epochs(seed: int, count: int) -> list[list[int]]:
        with recordio_iter(rec, idx, seed=seed, socket_path=daemon.socket_path, **args) as iterator:  # type: ignore[arg-type]
            return [_epoch_indices(iterator) for _ in range(count)]

    first = epochs(seed=5, count=3)
    for order in first:
        assert sorted(order) == list(range(90)), "every record exactly once"
    assert first[0] != list(range(90))
    assert len({tuple(order) for order in first}) == 3, "each epoch its own order"
    assert epochs(seed=5, count=3) == first, "the same seed gives the same orders"
    assert epochs(seed=6, count=1)[0] != first[0]


def _corrupt(files: RecFiles, record: int, how: str) -> tuple[bytes, int]:
    """The .rec bytes with record `record` damaged; returns them and the record's offset."""
    data = bytearray(files.rec.read_bytes())
    offsets = [int(line.split()[1]) for line in files.idx.read_text().splitlines()]
    offset = offsets[record]
    if how == "magic":
        data[offset : offset + 4] = b"\0\0\0\0"
    elif how == "image":
        length = struct.unpack_from("<I", data, offset + 4)[0] & ((1 << 29) - 1)
        start = offset + 8 + 24  # after the RecordIO header and the image header
        data[start : offset + 8 + length] = bytes(offset + 8 + length - start)  # JPEG bytes zeroed
    elif how == "truncate":
        del data[offset + 20 :]
    else:
        raise ValueError(how)
    assert struct.unpack_from("<I", files.rec.read_bytes(), offset)[0] == MAGIC
    return bytes(data), offset


@pytest.mark.parametrize(
    ("how", "error", "words"),
    [
        ("magic", CorruptRecord, "magic"),
        ("image", UndecodableImage, "decode"),
        ("truncate", CorruptRecord, "truncated"),
    ],
)
def test_a_bad_record_names_the_object_and_offset(
    how: str, error: type[PrefetchdError], words: str, tmp_path: Path, objects: Objects, daemon: DaemonProcess
) -> None:
    files = _dataset(tmp_path, 30)
    data, offset = _corrupt(files, 17 if how != "truncate" else 29, how)
    rec = objects.put("bad.rec", data)
    idx = objects.put("bad.idx", files.idx.read_bytes())
    iterator = recordio_iter(rec, idx, batch_size=4, data_shape=(3, 16, 16), socket_path=daemon.socket_path)
    with iterator, pytest.raises(error) as caught:
        _drain(iterator)
    assert caught.value.url == rec
    assert caught.value.offset == offset
    assert rec in str(caught.value) and str(offset) in str(caught.value)
    assert words in str(caught.value).lower()
    # the daemon is unharmed: the intact file still streams on the same daemon
    good = objects.put("good.rec", files.rec.read_bytes())
    with recordio_iter(good, None, batch_size=4, data_shape=(3, 16, 16), socket_path=daemon.socket_path) as iterator:
        assert sum(batch.data.shape[0] - batch.pad for batch in iterator) == 30


def test_skip_mode_drops_bad_records_and_counts_them(tmp_path: Path, objects: Objects, daemon: DaemonProcess) -> None:
    files = _dataset(tmp_path, 30)
    data, first = _corrupt(files, 5, "image")
    (tmp_path / "once.rec").write_bytes(data)
    damaged = RecFiles(tmp_path / "once.rec", files.idx, 30)
    data, second = _corrupt(damaged, 6, "image")
    rec = objects.put("skip.rec", data)
    idx = objects.put("skip.idx", files.idx.read_bytes())
    with recordio_iter(
        rec, idx, batch_size=4, data_shape=(3, 16, 16), skip_bad=True, socket_path=daemon.socket_path
    ) as iterator:
        batches = list(iterator)
        seen = [int(i) for b in batches for i in b.index[: len(b.index) - b.pad]]
        assert seen == [i for i in range(30) if i not in (5, 6)]
        assert batches[1].pad == 2 and batches[1].label.tolist()[:2] == [4.0, 7.0]
        assert sorted(e.offset for e in iterator.skipped) == [first, second]
        assert all(isinstance(e, UndecodableImage) and e.url == rec for e in iterator.skipped)


def test_killed_decode_workers_do_not_fail_the_stream_and_the_daemon_recovers(
    tmp_path: Path, objects: Objects, fresh_daemon: DaemonProcess
) -> None:
    files = _dataset(tmp_path, 200)
    rec = objects.put("w.rec", files.rec.read_bytes())
    args = {"batch_size": 4, "data_shape": (3, 16, 16), "socket_path": fresh_daemon.socket_path, "prefetch": 1}
    with recordio_iter(rec, None, **args) as iterator:  # type: ignore[arg-type]
        first = next(iterator)
        seen = first.data.shape[0] - first.pad
        workers = decode_workers(fresh_daemon.pid)
        assert workers, "the daemon runs decode worker processes"
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        # the batches in flight are decoded again, by the daemon itself: no worker holding this ring is left
        assert seen + sum(batch.data.shape[0] - batch.pad for batch in iterator) == 200
    with recordio_iter(rec, None, **args) as iterator:  # type: ignore[arg-type]
        assert sum(batch.data.shape[0] - batch.pad for batch in iterator) == 200
    assert set(decode_workers(fresh_daemon.pid)).isdisjoint(workers)  # new streams got new workers


def _drain(iterator: object) -> None:
    for _ in iterator:  # type: ignore[attr-defined]
        pass
