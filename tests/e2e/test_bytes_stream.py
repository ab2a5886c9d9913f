"""Raw bytes streams: an object's bytes through the ring, exactly, in order, shuffled or split into parts."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from prefetchd.config import Config
from prefetchd.fetch.window import CONNECTION_BYTES_PER_S, plan_window
from prefetchd.testing.daemon_process import DaemonProcess
from prefetchd.testing.embedded_s3 import EmbeddedS3
from prefetchd.testing.network_proxy import NetworkProxy
from prefetchd_client import BatchIterator, InvalidRequest, bytes_iter
from prefetchd_client.layout import RingGeometry
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


def test_an_empty_object_is_epochs_of_nothing_and_the_stream_stays_usable(
    objects: Objects, daemon: DaemonProcess
) -> None:
    url = objects.put("empty", b"")
    with bytes_iter(url, batch_bytes=1 << 18, timeout_s=5, socket_path=daemon.socket_path) as batches:
        assert (batches.batches_per_epoch, batches.samples_per_epoch) == (0, 0)
        for _ in range(3):
            assert list(batches) == []
        batches.seek(5)  # the daemon still answers on the stream: nothing is stuck behind the empty epochs
        assert list(batches) == [] and batches.epoch == 5
    with bytes_iter(url, batch_bytes=1 << 18, socket_path=daemon.socket_path) as batches:
        assert list(batches) == []


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
    small_ring = DaemonProcess(env=s3_server.environment(), args=("--max-ring-size", "1MiB"))
    with (
        small_ring,
        bytes_iter(url, batch_bytes=100_000, prefetch=1, socket_path=small_ring.socket_path, timeout_s=20) as batches,
    ):
        for _ in range(2):
            assert b"".join(batch.data.tobytes() for batch in batches) == DATA


def test_the_next_epoch_s_gets_go_while_this_one_s_last_are_still_coming(
    objects: Objects, s3_server: EmbeddedS3, tmp_path: Path
) -> None:
    """A bytes stream keeps its window full across an epoch's end: every GET waits 600 ms before it reaches
    the server, and by the time the client has a batch that needed one, the next epoch's GET has been sent
    too. Before, the next epoch's first GET went only once this epoch's last batch was in the ring."""
    block = 1 << 20  # the open brings the first MiB (block 0); blocks 1-3 of each epoch need a GET each
    data = np.random.default_rng(7).integers(0, 256, 4 * block, dtype=np.uint8).tobytes()
    url = objects.put("four-blocks", data)
    with (
        NetworkProxy(s3_server.endpoint_url, latency_ms=600, relay=True) as far,  # holds each request back
        # the cache off: with it, epoch 1's block 1 waits for epoch 0's read of it instead of making a GET
        DaemonProcess(
            env={**s3_server.environment(), "AWS_ENDPOINT_URL_S3": far.endpoint_url}, args=("--cache-size", "0")
        ) as daemon,
        bytes_iter(url, batch_bytes=block, prefetch=8, socket_path=daemon.socket_path) as batches,
    ):
        assert batches.opened.segment_bytes // block == 6  # an epoch and two: the daemon's most for 4 batches
        first, second = next(batches), next(batches)  # the second is the first to wait on a GET of its own
        time.sleep(0.3)  # half a first byte: a GET sent when `second` arrived has not reached the server yet
        gets = sum(1 for line in list(s3_server.log) if "GET /" in line and "four-blocks" in line)
        # the open's GET, blocks 1-3 of epoch 0 and block 1 of epoch 1 in the two slots past the epoch (blocks
        # 0 come from the open's head): 5; an epoch at a time would have sent the open's and epoch 0's, 4
        assert gets == 5
        rest = [first.data.tobytes(), second.data.tobytes(), *(batch.data.tobytes() for batch in batches)]
        assert b"".join(rest) == data
        assert b"".join(batch.data.tobytes() for batch in batches) == data  # and the next epoch, whole


def test_a_far_endpoint_gets_a_deeper_ring_and_the_same_bytes(
    objects: Objects, s3_server: EmbeddedS3, daemon: DaemonProcess, tmp_path: Path
) -> None:
    """The ring is the fetch window: sized from the first-byte latency the open measured (fetch/window.py)."""
    block, prefetch, target = 1 << 16, 2, 5_000_000  # 46 batches; the window asks for about 31 of them
    local = tmp_path / "blob"
    local.write_bytes(DATA)
    url = objects.put("blob", DATA)
    arrays = [("data", "|u1", (block,)), ("label", "<f4", (0,)), ("index", "<u8", (1,))]
    with bytes_iter(str(local), batch_bytes=block, prefetch=prefetch, socket_path=daemon.socket_path) as near:
        # a local file answers at once: the window is the client's prefetch, and the ring that plus two
        assert near.opened.segment_bytes == RingGeometry.build(prefetch + 2, arrays).segment_bytes
        assert b"".join(batch.data.tobytes() for batch in near) == DATA
    with (
        NetworkProxy(s3_server.endpoint_url, latency_ms=400) as far_network,
        DaemonProcess(
            env={**s3_server.environment(), "AWS_ENDPOINT_URL_S3": far_network.endpoint_url},
            args=("--target-rate", str(target)),
        ) as far_daemon,
        bytes_iter(url, batch_bytes=block, prefetch=prefetch, socket_path=far_daemon.socket_path) as far,
    ):
        # every GET waits at least 400 ms for its first byte, so the window is at least what 400 ms calls for
        least = plan_window(
            0.4,
            target_bytes_per_s=target,
            connections=Config(socket_path=tmp_path).max_concurrency,
            connection_bytes_per_s=CONNECTION_BYTES_PER_S,
            min_window_bytes=1,
            max_window_bytes=1 << 40,
        )
        slots = -(-least.window_bytes // block) + 2
        assert far.opened.segment_bytes >= RingGeometry.build(slots, arrays).segment_bytes > near.opened.segment_bytes
        assert b"".join(batch.data.tobytes() for batch in far) == DATA


def test_bytes_streams_open_at_once_share_the_target_rate(objects: Objects, s3_server: EmbeddedS3) -> None:
    """`--target-rate` is the host's: a second stream opened beside a first sizes its window for half of it."""
    block = 1 << 16
    url = objects.put("blob", DATA)
    with (
        NetworkProxy(s3_server.endpoint_url, latency_ms=200) as far_network,
        DaemonProcess(
            env={**s3_server.environment(), "AWS_ENDPOINT_URL_S3": far_network.endpoint_url},
            args=("--target-rate", "4MB"),  # about 2 MB of window alone at 200 ms and its hedge deadline
        ) as daemon,
    ):

        def opened() -> BatchIterator:
            return bytes_iter(url, batch_bytes=block, prefetch=2, socket_path=daemon.socket_path)

        with opened():  # a daemon's first GET also makes its client and connection: its first byte looks later
            pass
        daemon.until_no_streams()
        with opened() as first, opened() as second:
            alone, shared = first.opened.segment_bytes, second.opened.segment_bytes
            assert shared < 0.7 * alone  # half the rate, half the window (the first byte is measured, not exact)
            assert next(second).data.tobytes() == DATA[:block]
        daemon.until_no_streams()
        with opened() as third:  # the others closed: it has the rate to itself again
            assert third.opened.segment_bytes > 0.7 * alone
            assert next(third).data.tobytes() == DATA[:block]
