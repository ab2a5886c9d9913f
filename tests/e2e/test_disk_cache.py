"""The epoch cache's disk tier end to end: with RAM too small, epoch 2 onward and a restarted daemon read no S3 GET.

GETs are counted by the S3 server itself, in its request log.
"""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from prefetchd.testing.daemon_process import DaemonProcess
from prefetchd.testing.embedded_s3 import EmbeddedS3
from prefetchd_client import idx_iter
from tests.conftest import Objects
from tests.e2e.test_epoch_cache import _epochs, _gets, _put


@pytest.mark.parametrize("ram", ["0", "2MiB"], ids=["no-ram", "ram-for-2-of-8-ranges"])
def test_epochs_after_the_first_and_a_restarted_daemon_read_from_disk_not_s3(
    s3_server: EmbeddedS3, objects: Objects, fashion_dir: Path, tmp_path: Path, ram: str
) -> None:
    image, label = _put(objects, fashion_dir)
    key = image.split("/", 3)[3]
    cache_dir = tmp_path / "epoch-cache"
    args = ("--chunk-size", "1MiB", "--cache-size", ram, "--cache-dir", str(cache_dir), "--cache-disk-size", "64MiB")
    env = s3_server.environment()
    before = _gets(s3_server, key)
    with (
        DaemonProcess(env=env, args=args) as daemon,
        idx_iter(image, label, batch_size=500, socket_path=daemon.socket_path, prefetch=1) as batches,
    ):
        first = b"".join(batch.data.tobytes() for batch in batches)
        after_one = _gets(s3_server, key) - before
        later = [b"".join(batch.data.tobytes() for batch in batches) for _ in range(2)]
        after_three = _gets(s3_server, key) - before
    assert 8 <= after_one <= 9, "epoch 1 reads the 7.8 MB object once, in 1 MiB ranges (and its header)"
    assert after_three == after_one, "epochs 2 and 3 made no GET"
    assert later == [first, first], "ranges read back from disk decode to the same batches"
    assert stat.S_IMODE(cache_dir.stat().st_mode) == 0o700
    assert {stat.S_IMODE(p.stat().st_mode) for p in cache_dir.glob("*.range")} == {0o600}

    with DaemonProcess(env=env, args=args) as restarted:
        again = _epochs(image, label, restarted, epochs=2)
        after_restart = _gets(s3_server, key) - before
        assert ": 8 ranges (7 MiB) reused" in restarted.log()
    assert after_restart == after_three + 1, "the restarted daemon only reads the 64-byte header at open"
    assert again == [first, first]
