"""The epoch cache end to end: epoch 2 onward reads nothing from S3, counted by the S3 server itself (IDX and bytes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from prefetchd.testing.daemon_process import DaemonProcess
from prefetchd.testing.embedded_s3 import EmbeddedS3
from prefetchd_client import bytes_iter, idx_iter
from tests.conftest import Objects
from tests.helpers import requests_for


def _gets(s3_server: EmbeddedS3, key: str) -> int:
    return requests_for(s3_server, key, "GET")


def _epochs(image: str, label: str, daemon: DaemonProcess, epochs: int) -> list[bytes]:
    with idx_iter(image, label, batch_size=500, socket_path=daemon.socket_path, prefetch=1) as batches:
        return [b"".join(batch.data.tobytes() for batch in batches) for _ in range(epochs)]


def _put(objects: Objects, fashion_dir: Path, image_bytes: bytes | None = None) -> tuple[str, str]:
    image = objects.put("images", image_bytes or (fashion_dir / "t10k-images-idx3-ubyte").read_bytes())
    label = objects.put("labels", (fashion_dir / "t10k-labels-idx1-ubyte").read_bytes())
    return image, label


def test_later_epochs_read_nothing_from_s3(s3_server: EmbeddedS3, objects: Objects, fashion_dir: Path) -> None:
    image, label = _put(objects, fashion_dir)
    key = image.split("/", 3)[3]
    env = s3_server.environment()
    with DaemonProcess(env=env, args=("--chunk-size", "1MiB", "--cache-size", "0")) as uncached:
        plain = _epochs(image, label, uncached, epochs=3)
    per_epoch_uncached = _gets(s3_server, key)
    assert per_epoch_uncached >= 3 * 7, (
        "without the cache every epoch fetches the object again (7.8 MB in 1 MiB ranges)"
    )
    with DaemonProcess(env=env, args=("--chunk-size", "1MiB")) as cached:
        with idx_iter(image, label, batch_size=500, socket_path=cached.socket_path, prefetch=1) as batches:
            first = [b"".join(batch.data.tobytes() for batch in batches)]
            after_one = _gets(s3_server, key) - per_epoch_uncached
            first += [b"".join(batch.data.tobytes() for batch in batches) for _ in range(3)]
            after_four = _gets(s3_server, key) - per_epoch_uncached
        other_stream = _epochs(image, label, cached, epochs=2)
        after_other = _gets(s3_server, key) - per_epoch_uncached
    assert after_one == after_four, "epochs 2 to 4 made no GET"
    assert 8 <= after_one <= per_epoch_uncached // 3
    assert after_other == after_four + 1, "another stream shares the cache: it only reads the 64-byte header at open"
    assert first == plain + plain[:1] and other_stream == plain[:2], "cached bytes decode to the same batches"


def test_an_overwritten_object_is_not_served_from_the_cache(
    objects: Objects, fashion_dir: Path, daemon: DaemonProcess
) -> None:
    image, label = _put(objects, fashion_dir)
    before = _epochs(image, label, daemon, epochs=2)
    data = bytearray((fashion_dir / "t10k-images-idx3-ubyte").read_bytes())
    data[16:] = bytes(255 - b for b in data[16:])  # the same shape, every pixel inverted
    image, label = _put(objects, fashion_dir, bytes(data))
    after = _epochs(image, label, daemon, epochs=1)
    assert after[0] != before[0]
    inverted = bytes(255 - b for b in (fashion_dir / "t10k-images-idx3-ubyte").read_bytes()[16:])
    with idx_iter(image, label, batch_size=10_000, socket_path=daemon.socket_path) as batches:
        data_now = next(iter(batches)).data
    assert (data_now.reshape(-1) * 256).astype("uint8").tobytes() == inverted


BLOB = np.random.default_rng(11).integers(0, 256, 3_000_017, dtype=np.uint8).tobytes()  # not a multiple of a batch


def _bytes_epochs(url: str, daemon: DaemonProcess, epochs: int, s3_server: EmbeddedS3) -> tuple[list[bytes], list[int]]:
    """Each epoch's bytes, and the GETs of the object counted by the S3 server after each epoch."""
    key = url.split("/", 3)[3]
    got, gets = [], []
    with bytes_iter(url, batch_bytes=1 << 18, prefetch=2, socket_path=daemon.socket_path) as batches:
        for _ in range(epochs):
            got.append(b"".join(batch.data.tobytes() for batch in batches))
            gets.append(_gets(s3_server, key))
    return got, gets


def test_a_bytes_stream_s_later_epochs_and_other_streams_read_nothing_from_s3(
    s3_server: EmbeddedS3, objects: Objects
) -> None:
    url = objects.put("blob", BLOB)
    with DaemonProcess(env=s3_server.environment(), args=("--concurrency", "4")) as cached:
        got, gets = _bytes_epochs(url, cached, 3, s3_server)
        assert got == [BLOB] * 3
        assert gets[0] >= 11, "epoch 1 read the object's 12 batches from S3 (the first with the open)"
        assert gets[0] == gets[1] == gets[2], "epochs 2 and 3 made no GET"
        other, other_gets = _bytes_epochs(url, cached, 1, s3_server)
    assert other == [BLOB]
    assert other_gets[0] == gets[0] + 1, "another stream with the same batch size only makes its open's GET"


def test_a_bytes_stream_larger_than_the_cache_reads_straight_into_its_ring(
    s3_server: EmbeddedS3, objects: Objects
) -> None:
    """A part that cannot fit would push everything else out and never be found: the cache is not used."""
    url = objects.put("blob", BLOB)
    small = ("--concurrency", "4", "--cache-size", "2MiB")
    with DaemonProcess(env=s3_server.environment(), args=small) as daemon:
        got, gets = _bytes_epochs(url, daemon, 2, s3_server)
        statistics = daemon.metrics()
    assert got == [BLOB] * 2
    assert gets[1] - gets[0] >= 11, "every epoch reads the object from S3 again"
    ram = (("tier", "ram"),)
    assert statistics["prefetchd_cache_misses_total", ram] == statistics["prefetchd_cache_hits_total", ram] == 0, (
        "nothing went through the cache"
    )


def test_a_bytes_stream_of_an_overwritten_object_is_not_served_from_the_cache(
    s3_server: EmbeddedS3, objects: Objects, daemon: DaemonProcess
) -> None:
    url = objects.put("blob", BLOB)
    before, _ = _bytes_epochs(url, daemon, 2, s3_server)
    changed = bytes(255 - b for b in BLOB[:1000]) + BLOB[1000:]  # the same size, the first bytes differ
    url = objects.put("blob", changed)
    after, _ = _bytes_epochs(url, daemon, 2, s3_server)
    assert before == [BLOB] * 2 and after == [changed] * 2


def test_an_idx_part_larger_than_the_cache_keeps_its_first_ranges_and_finds_them_every_epoch(
    s3_server: EmbeddedS3, objects: Objects, fashion_dir: Path
) -> None:
    """7.8 MB in 1 MiB ranges, one at a time, through a 3 MiB cache. An LRU evicts each range before the next
    epoch asks for it again and never hits; kept without eviction, the first three ranges hit every epoch."""
    image, label = _put(objects, fashion_dir)
    key = image.split("/", 3)[3]
    before = _gets(s3_server, key)
    args = ("--chunk-size", "1MiB", "--cache-size", "3MiB", "--concurrency", "1")
    ram = (("tier", "ram"),)
    with (
        DaemonProcess(env=s3_server.environment(), args=args) as daemon,
        idx_iter(image, label, batch_size=500, socket_path=daemon.socket_path, prefetch=1) as batches,
    ):
        epochs = [b"".join(batch.data.tobytes() for batch in batches) for _ in range(4)]
        metrics = daemon.metrics()
    hits, misses = metrics["prefetchd_cache_hits_total", ram], metrics["prefetchd_cache_misses_total", ram]
    assert epochs[1:] == epochs[:1] * 3
    assert hits >= 3 * 3, "epochs 2 to 4 found the first three ranges"
    assert hits * 5 == pytest.approx(misses * 3, abs=5 * 3 + 3 * 8), "about 3 hits to 5 misses an epoch"
    assert _gets(s3_server, key) - before < hits + misses, "the S3 server saw fewer GETs than ranges were asked"
