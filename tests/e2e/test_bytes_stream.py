"""Raw bytes streams: an object's bytes through the ring, exactly, in order, shuffled or split into parts."""

from __future__ import annotations

import numpy as np
import pytest

from prefetchd.testing.daemon_process import DaemonProcess
from prefetchd.testing.embedded_s3 import EmbeddedS3
from prefetchd_client import InvalidRequest, bytes_iter
from tests.conftest import Objects
from tests.helpers import requests_for

DATA = np.random.default_rng(5).integers(0, 256, 3_000_017, dtype=np.uint8).tobytes()  # not a multiple of a batch


def test_the_bytes_come_through_exactly_epoch_after_epoch(objects: Objects, daemon: DaemonProcess) -> None:
    url = objects.put("blob", DATA)
    with bytes_iter(url, batch_bytes=1 << 18, socket_path=daemon.socket_path) as batches:
        for _ in range(2):
            seen = [(int(batch.index[0]), batch.data.tobytes()) for batch in batches]
            assert [offset for offset, _ in seen] == list(range(0, len(DATA), 1 << 18))
            assert b"".join(data for _, data in seen) == DATA


def test_opening_a_bytes_stream_is_one_get_that_brings_the_first_batch_too(
    objects: Objects, s3_server: EmbeddedS3, daemon: DaemonProcess
) -> None:
    small = DATA[:200_000]  # one batch: every epoch is served from what the open read
    url = objects.put("blob", small)
    with bytes_iter(url, batch_bytes=1 << 18, socket_path=daemon.socket_path) as batches:
        for _ in range(3):
            assert b"".join(batch.data.tobytes() for batch in batches) == small
    key = url.split("/", 3)[3]
    assert (requests_for(s3_server, key, "HEAD"), requests_for(s3_server, key, "GET")) == (0, 1)


def test_shuffled_blocks_and_parts_cover_the_object_once(objects: Objects, daemon: DaemonProcess) -> None:
    url = objects.put("blob", DATA)
    with bytes_iter(url, batch_bytes=100_000, shuffle=True, seed=3, socket_path=daemon.socket_path) as batches:
        blocks = {int(batch.index[0]): batch.data.tobytes() for batch in batches}
        order = [int(batch.index[0]) for batch in batches]
    assert b"".join(blocks[offset] for offset in sorted(blocks)) == DATA
    assert order != sorted(order) and sorted(order) == sorted(blocks)
    parts = []
    for part_index in range(3):
        with bytes_iter(
            url, batch_bytes=100_000, num_parts=3, part_index=part_index, socket_path=daemon.socket_path
        ) as batches:
            parts.append(b"".join(batch.data.tobytes() for batch in batches))
    assert b"".join(parts) == DATA and all(parts)


def test_a_bytes_stream_refuses_decode_options(objects: Objects, daemon: DaemonProcess) -> None:
    from prefetchd_client.iterator import BatchIterator
    from prefetchd_client.protocol import Open

    url = objects.put("blob", DATA[:1000])
    request = Open(format="bytes", sources={"object": url}, batch_size=100, decode={"dtype": "float32"})
    with pytest.raises(InvalidRequest, match="no decode options"):
        BatchIterator(request, socket_path=daemon.socket_path)


def test_a_ring_smaller_than_the_fill_depth_still_streams(objects: Objects, s3_server: EmbeddedS3) -> None:
    """32 fills may be in flight, but a ring of 10 slots must publish as it goes (it once waited for an 11th)."""
    url = objects.put("blob", DATA)
    small_ring = DaemonProcess(env=s3_server.environment(), args=("--ring-size", "1MiB"))
    with (
        small_ring,
        bytes_iter(url, batch_bytes=100_000, prefetch=1, socket_path=small_ring.socket_path, timeout_s=20) as batches,
    ):
        for _ in range(2):
            assert b"".join(batch.data.tobytes() for batch in batches) == DATA
