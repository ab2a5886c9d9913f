"""One daemon per host: ranks as threads with their own sockets and rings, on one daemon, one cache, one pool.

Each rank reads its part (`world_size`/`rank`) with shuffle on; in every epoch the ranks' valid samples
(pads excluded) together are the dataset, each sample once, with or without a change in the number of
ranks between epochs. GETs are counted by the S3 server itself.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from prefetchd.testing.daemon_process import DaemonProcess
from prefetchd.testing.embedded_s3 import EmbeddedS3
from prefetchd_client import BatchIterator, idx_iter
from tests.conftest import Objects
from tests.helpers import reference_arrays, requests_for

SAMPLES = 10_000  # Fashion-MNIST's t10k split
BATCH = 128  # parts of 2500, 3333-3334 and 5000 samples: every epoch ends in a padded batch
CHUNK_RECORDS = (1 << 20) // 784  # --chunk-size 1MiB: ranges of whole 28x28 records, on absolute record numbers
CHUNKS = -(-SAMPLES // CHUNK_RECORDS)


def _open(image: str, label: str, daemon: DaemonProcess, world_size: int, rank: int, epoch: int) -> BatchIterator:
    return idx_iter(
        image,
        label,
        batch_size=BATCH,
        shuffle=True,
        seed=3,
        last_batch="pad",
        world_size=world_size,
        rank=rank,
        epoch=epoch,
        socket_path=daemon.socket_path,
    )


def _read_epoch(batches: BatchIterator, labels: np.ndarray) -> np.ndarray:
    """The valid samples' record numbers of one epoch, in the order read; each label checked on the way."""
    read = []
    for batch in batches:
        valid = len(batch.index) - batch.pad
        index = batch.index[:valid].astype(np.int64)
        assert np.array_equal(batch.label[:valid], labels[index].astype(np.float32)), "a label left its image"
        read.append(index)
    return np.concatenate(read)


def _ranks(world_size: int, work: Callable[[int], Any]) -> list[Any]:
    with ThreadPoolExecutor(world_size) as pool:
        return list(pool.map(work, range(world_size)))


def _assert_each_sample_once(parts: list[np.ndarray], epoch: int) -> None:
    read = np.concatenate(parts)
    assert len(read) == SAMPLES and np.array_equal(np.sort(read), np.arange(SAMPLES)), f"epoch {epoch}"


def _put_t10k(objects: Objects, fashion_dir: Path) -> tuple[str, str]:
    return (
        objects.put("images", (fashion_dir / "t10k-images-idx3-ubyte").read_bytes()),
        objects.put("labels", (fashion_dir / "t10k-labels-idx1-ubyte").read_bytes()),
    )


def _image_gets(s3_server: EmbeddedS3, image: str) -> int:
    return requests_for(s3_server, image.split("/", 3)[3], "GET")


def test_four_ranks_read_each_sample_once_per_epoch_and_epoch_two_from_the_shared_cache(
    s3_server: EmbeddedS3, objects: Objects, fashion_dir: Path
) -> None:
    image, label = _put_t10k(objects, fashion_dir)
    _, labels = reference_arrays(fashion_dir, "t10k")
    with DaemonProcess(env=s3_server.environment(), args=("--chunk-size", "1MiB")) as daemon:

        def rank(index: int) -> list[np.ndarray]:
            with _open(image, label, daemon, 4, index, epoch=0) as batches:  # one stream for both epochs
                return [_read_epoch(batches, labels) for _ in range(2)]

        per_rank = _ranks(4, rank)
    for epoch in range(2):
        _assert_each_sample_once([epochs[epoch] for epochs in per_rank], epoch)
    assert not np.array_equal(per_rank[0][0], per_rank[0][1]), "shuffle on: each epoch has its own order"
    # four opens (each reads the header and first records) and each 1 MiB range once: ranks that share a
    # range at their parts' boundary share its GET, and epoch 2 is read from the cache, with no GET at all
    assert _image_gets(s3_server, image) == 4 + CHUNKS


def test_the_number_of_ranks_may_change_between_epochs(
    s3_server: EmbeddedS3, objects: Objects, fashion_dir: Path
) -> None:
    image, label = _put_t10k(objects, fashion_dir)
    _, labels = reference_arrays(fashion_dir, "t10k")
    orders = []
    with DaemonProcess(env=s3_server.environment(), args=("--chunk-size", "1MiB")) as daemon:
        for epoch, world_size in enumerate([4, 3, 2]):  # each rank reopens at the epoch, with the new parts

            def rank(index: int, epoch: int = epoch, world_size: int = world_size) -> np.ndarray:
                with _open(image, label, daemon, world_size, index, epoch) as batches:
                    assert batches.position == (epoch, 0)
                    return _read_epoch(batches, labels)

            parts = _ranks(world_size, rank)
            _assert_each_sample_once(parts, epoch)
            orders.append(np.concatenate(parts))
    assert len({order.tobytes() for order in orders}) == 3
    # the ranges are cut on absolute record numbers, so 3 and 2 ranks find the ranges 4 ranks fetched:
    # after the first epoch the only GETs are the opens'
    assert _image_gets(s3_server, image) == 4 + CHUNKS + 3 + 2


def _streams(daemon: DaemonProcess) -> dict[str, Any]:
    with urllib.request.urlopen(f"{daemon.http_url}/streams", timeout=10) as answer:
        loaded: dict[str, Any] = json.loads(answer.read())
        return loaded


def _settled(daemon: DaemonProcess, done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """/streams once `done(it)` holds (read again while it does not, up to 60 s: the test then fails on it)."""
    deadline = time.monotonic() + 60
    while True:
        streams = _streams(daemon)
        if done(streams) or time.monotonic() > deadline:
            return streams
        time.sleep(0.05)


def _quiet(streams: dict[str, Any]) -> bool:
    """One stream left, its ring full and none of its GETs out or queued, and no GET out or queued at all."""
    rows, buckets = streams["streams"], streams["s3"]["buckets"]
    return (
        len(rows) == 1
        and rows[0]["ring_ready"] == rows[0]["ring_slots"]
        and rows[0]["fetches_in_flight"] == rows[0]["fetches_waiting"] == 0
        and all(bucket["in_flight"] == bucket["waiting"] == 0 for bucket in buckets)
    )


def test_a_trainer_that_stops_reading_holds_no_fetch_slot_and_holds_back_no_other_rank(
    s3_server: EmbeddedS3, objects: Objects, fashion_dir: Path
) -> None:
    image, label = _put_t10k(objects, fashion_dir)
    _, labels = reference_arrays(fashion_dir, "t10k")
    # no cache: every rank fetches its own ranges, through the one gate and connection pool
    args = ("--chunk-size", "1MiB", "--cache-size", "0")
    env = s3_server.environment()
    with DaemonProcess(env=env, args=args) as daemon, _open(image, label, daemon, 4, 0, 0) as stalled:
        next(stalled)  # ... and never another: its ring fills, and stays full
        (stalled_row,) = _streams(daemon)["streams"]

        def rank(index: int) -> list[np.ndarray]:
            with _open(image, label, daemon, 4, index + 1, epoch=0) as batches:
                return [_read_epoch(batches, labels) for _ in range(2)]

        per_rank = _ranks(3, rank)  # the other three ranks read two whole epochs meanwhile
        streams = _settled(daemon, _quiet)  # the other ranks' streams close, their read-ahead cancelled

    for index, epochs in enumerate(per_rank, start=1):
        assert all(np.array_equal(np.sort(e), np.arange(2500 * index, 2500 * (index + 1))) for e in epochs)
    (row,) = streams["streams"]
    assert row["stream"] == stalled_row["stream"]
    assert row["ring_ready"] == row["ring_slots"] and row["ring_filling"] == 0, "a full ring: nothing to fill or decode"
    assert (row["fetches_in_flight"], row["fetches_waiting"]) == (0, 0), "the stalled stream holds no shared slot"
    assert row["fetches_admitted"] >= 1, "its own ranges were fetched under its name, before it stalled"
    assert all(bucket["in_flight"] == bucket["waiting"] == 0 for bucket in streams["s3"]["buckets"])
