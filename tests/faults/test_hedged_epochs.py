"""With 1% of GETs paused for 2 s partway through their body, whole epochs of IDX and raw bytes deliver every
record exactly once, byte for byte what a clean run delivers, and the daemon's hedges raced the slow GETs.

The daemon runs at its defaults but for the epoch cache (off, so that every epoch's ranges meet the proxy)
and 32 KiB ranges (hundreds of GETs per epoch, so the 1% come several times). Hedging is on by default.
A pause is not a stall: the paused GET would end well after 2 s, long before the stall timeout; the hedge is
what spares the stream the wait. Which GETs pause is the seeded plan's: a failure replays with the same SEED.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from prefetchd.testing.daemon_process import DaemonProcess, scrape
from prefetchd.testing.embedded_s3 import EmbeddedS3
from prefetchd.testing.fault_plan import FaultRates
from prefetchd.testing.fault_proxy import FaultProxy
from prefetchd_client import bytes_iter, idx_iter
from tests.conftest import Objects
from tests.faults.test_faulty_epochs import _epochs, assert_same_epochs
from tests.helpers import reference_arrays

PAUSES = FaultRates(pause=0.01, pause_ms=2000)
SEED = int(os.environ.get("PREFETCHD_FAULT_SEED", "3"))
BLOB = np.random.default_rng(10).integers(0, 256, 3_000_017, dtype=np.uint8).tobytes()


@pytest.fixture(scope="module")
def pausing_proxy(s3_server: EmbeddedS3) -> Iterator[FaultProxy]:
    with FaultProxy(s3_server.endpoint_url, PAUSES, seed=SEED) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def hedging_daemon(s3_server: EmbeddedS3, pausing_proxy: FaultProxy) -> Iterator[DaemonProcess]:
    env = {
        **s3_server.environment(),
        "AWS_ENDPOINT_URL_S3": pausing_proxy.endpoint_url,
        "PREFETCHD_MIN_CHUNK_BYTES": "16KiB",
    }
    args = ("--cache-size", "0", "--chunk-size", "32KiB", "--decode-processes", "1")
    with DaemonProcess(env=env, args=args) as process:
        yield process


class Races:
    """The proxy's pauses and the daemon's hedges over a block of the test."""

    def __init__(self, proxy: FaultProxy, daemon: DaemonProcess) -> None:
        self._proxy, self._daemon = proxy, daemon
        self._counts = proxy.counts()
        self._metrics = scrape(daemon.http_url)

    def assert_hedged(self) -> None:
        paused = self._proxy.counts().since(self._counts).pause
        now = scrape(self._daemon.http_url)

        def grew(name: str, *labels: tuple[str, str]) -> float:
            return now[name, labels] - self._metrics.get((name, labels), 0.0)

        started, won = grew("prefetchd_hedges_started_total"), grew("prefetchd_hedges_total", ("outcome", "won"))
        assert paused > 0, f"no GET paused (seed {SEED}): make the epochs longer"
        assert started > 0 and won > 0, f"{paused} GETs paused: {started} hedges started, {won} won"
        requests = grew("prefetchd_s3_requests_total")
        assert started <= 10 + 0.05 * requests, "within the budget: 5% of the requests and a burst of 10"


def test_idx_epochs_with_paused_gets_are_the_clean_run_and_the_hedges_won(
    pausing_proxy: FaultProxy,
    hedging_daemon: DaemonProcess,
    daemon: DaemonProcess,
    fashion_urls: dict[str, str],
    fashion_dir: Path,
) -> None:
    images, _ = reference_arrays(fashion_dir, "t10k")
    image, label = fashion_urls["t10k-images-idx3-ubyte"], fashion_urls["t10k-labels-idx1-ubyte"]
    args = {"batch_size": 250, "shuffle": True, "seed": 7}

    def run(on: DaemonProcess) -> list[dict[str, np.ndarray]]:
        with idx_iter(image, label, socket_path=on.socket_path, **args) as iterator:  # type: ignore[arg-type]
            return _epochs(iterator, 2)

    clean = run(daemon)
    races = Races(pausing_proxy, hedging_daemon)
    hedged = run(hedging_daemon)
    for epoch in hedged:
        index = epoch["index"].astype(np.int64)
        assert sorted(index.tolist()) == list(range(10_000)), "every sample exactly once"
        np.testing.assert_array_equal(epoch["data"].reshape(-1, 28, 28), images[index] * np.float32(1 / 256))
    assert_same_epochs(hedged, clean)
    races.assert_hedged()


def test_bytes_epochs_with_paused_gets_are_the_object_byte_for_byte_and_the_hedges_won(
    pausing_proxy: FaultProxy, hedging_daemon: DaemonProcess, daemon: DaemonProcess, objects: Objects
) -> None:
    url = objects.put("hedged-blob", BLOB)
    block = 128 << 10

    def run(on: DaemonProcess) -> list[list[int]]:
        orders = []
        with bytes_iter(url, batch_bytes=block, shuffle=True, seed=2, socket_path=on.socket_path) as batches:
            for _ in range(4):
                blocks = [(int(batch.index[0]), batch.data.tobytes()) for batch in batches]
                assert b"".join(data for _, data in sorted(blocks)) == BLOB, "every byte once, in its place"
                orders.append([offset for offset, _ in blocks])
        return orders

    clean = run(daemon)
    races = Races(pausing_proxy, hedging_daemon)
    assert run(hedging_daemon) == clean, "the same blocks in the same order"
    races.assert_hedged()
