"""A closed stream's ring leaves the daemon without a garbage collection: nothing keeps its views in cycles.

The daemon here runs with the collector off (a `sitecustomize` that calls `gc.disable()`): a ring that only
a collection could free, because a cancelled fill's traceback kept slot views in a reference cycle, would
stay mapped for good. With the collector on, freeing it took a full collection on the event loop, 130-210 ms
in which no stream of any client was served.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from prefetchd.testing.daemon_process import DaemonProcess
from prefetchd.testing.embedded_s3 import EmbeddedS3
from prefetchd_client import BatchIterator, bytes_iter, idx_iter, recordio_iter
from tests.conftest import Objects
from tests.daemon_probe import rings, within


@pytest.fixture(scope="module")
def collector_off_daemon(s3_server: EmbeddedS3, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    site = tmp_path_factory.mktemp("gc-off")
    (site / "sitecustomize.py").write_text("import gc\ngc.disable()\n")
    env = {**s3_server.environment(), "PYTHONPATH": str(site)}
    with DaemonProcess(env=env, args=("--cache-size", "0")) as daemon:
        yield daemon


def streams(
    objects: Objects, fashion_urls: dict[str, str], request: pytest.FixtureRequest
) -> dict[str, Callable[[Path], BatchIterator]]:
    blob = objects.put("blob", np.random.default_rng(3).integers(0, 256, 6_000_000, dtype=np.uint8).tobytes())
    images, labels = fashion_urls["train-images-idx3-ubyte"], fashion_urls["train-labels-idx1-ubyte"]
    return {
        "bytes": lambda socket: bytes_iter(blob, batch_bytes=1 << 18, prefetch=8, socket_path=socket),
        "idx": lambda socket: idx_iter(images, labels, batch_size=100, shuffle=True, socket_path=socket),
        "recordio": lambda socket: recordio_iter(
            request.getfixturevalue("caltech_rec"),
            batch_size=2,
            data_shape=(3, 64, 64),
            resize=80,
            rand_crop=True,
            socket_path=socket,
        ),
    }


@pytest.mark.parametrize(
    "kind",
    ["bytes", "idx", pytest.param("recordio", marks=pytest.mark.mxnet)],  # MXNet writes the .rec
)
@pytest.mark.parametrize("when", ["mid-epoch", "after-an-epoch"])
def test_a_stream_closed_with_fills_in_flight_frees_its_ring_with_the_collector_off(
    kind: str,
    when: str,
    collector_off_daemon: DaemonProcess,
    objects: Objects,
    fashion_urls: dict[str, str],
    request: pytest.FixtureRequest,
) -> None:
    open_stream = streams(objects, fashion_urls, request)[kind]
    with open_stream(collector_off_daemon.socket_path) as batches:
        if when == "mid-epoch":
            next(batches)  # the daemon is filling the batches after it
        else:
            assert sum(1 for _ in batches) == batches.batches_per_epoch  # it is filling the next epoch
        assert rings(collector_off_daemon.pid) == 1
    assert within(5.0, lambda: rings(collector_off_daemon.pid) == 0), f"a {kind} ring outlived its stream"
