"""The epoch cache end to end: epoch 2 onward reads nothing from S3, counted by the S3 server itself."""

from __future__ import annotations

from pathlib import Path

from prefetchd.testing.daemon_process import DaemonProcess
from prefetchd.testing.embedded_s3 import EmbeddedS3
from prefetchd_client import idx_iter
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
