"""Through 5% SlowDown, 2% InternalError, 2% resets, 2% truncations and jittered first bytes, whole epochs of
IDX, RecordIO and raw bytes deliver every record exactly once, byte for byte what a clean run delivers.

Each test runs the same epochs twice: on the shared daemon straight against moto (the clean run), and on a
daemon behind the fault proxy; then it reads the proxy's counts to prove every kind of fault happened.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from prefetchd.testing.daemon_process import DaemonProcess, scrape
from prefetchd.testing.fault_plan import Fault, FaultCounts
from prefetchd.testing.fault_proxy import FaultProxy
from prefetchd_client import bytes_iter, idx_iter, recordio_iter
from tests.conftest import Objects
from tests.faults.conftest import FAULTS, SEED
from tests.helpers import reference_arrays

Epoch = dict[str, np.ndarray]


@contextmanager
def replay_notes(proxy: FaultProxy, daemon: DaemonProcess) -> Iterator[None]:
    """A failure in the block says how to replay it: the seed and rates, the last faults, the daemon's log."""
    try:
        yield
    except BaseException as exc:
        exc.add_note(f"replay with seed {SEED} and {FAULTS}; the last faults the proxy injected:")
        exc.add_note("\n".join(proxy.recent()[-30:]))
        exc.add_note("the daemon's log ends:\n" + "\n".join(daemon.log().splitlines()[-40:]))
        raise


def assert_every_fault_happened(counts: FaultCounts) -> None:
    missing = [fault.value for fault in Fault if FAULTS.of(fault) > 0 and counts.of(fault) == 0]
    assert not missing, f"no {missing} among {counts} (seed {SEED}): make the test's epochs longer"
    assert counts.delayed > 0


def _epochs(iterator: Any, count: int) -> list[Epoch]:
    """`count` epochs, each as its batches' arrays joined (copied out of the ring), pad rows left out."""
    epochs = []
    for _ in range(count):
        arrays: dict[str, list[np.ndarray]] = {"data": [], "label": [], "index": []}
        for batch in iterator:
            kept = len(batch.index) - batch.pad
            for name in arrays:
                arrays[name].append(getattr(batch, name)[:kept].copy())
        epochs.append({name: np.concatenate(parts) for name, parts in arrays.items()})
    return epochs


def assert_same_epochs(faulty: list[Epoch], clean: list[Epoch]) -> None:
    assert len(faulty) == len(clean)
    for number, (got, expected) in enumerate(zip(faulty, clean, strict=True)):
        for name in ("index", "data", "label"):
            np.testing.assert_array_equal(got[name], expected[name], err_msg=f"epoch {number}: {name}")


def test_idx_epochs_through_faults_are_the_clean_run_sample_for_sample(
    fault_proxy: FaultProxy,
    faulty_daemon: DaemonProcess,
    daemon: DaemonProcess,
    fashion_urls: dict[str, str],
    fashion_dir: Path,
) -> None:
    images, labels = reference_arrays(fashion_dir, "t10k")
    image, label = fashion_urls["t10k-images-idx3-ubyte"], fashion_urls["t10k-labels-idx1-ubyte"]
    args = {"batch_size": 250, "shuffle": True, "seed": 3}

    def run(on: DaemonProcess) -> list[Epoch]:
        with idx_iter(image, label, socket_path=on.socket_path, **args) as iterator:  # type: ignore[arg-type]
            return _epochs(iterator, 2)

    clean = run(daemon)
    before = fault_proxy.counts()
    with replay_notes(fault_proxy, faulty_daemon):
        faulty = run(faulty_daemon)
        for epoch in faulty:
            index = epoch["index"].astype(np.int64)
            assert sorted(index.tolist()) == list(range(10_000)), "every sample exactly once"
            np.testing.assert_array_equal(epoch["data"].reshape(-1, 28, 28), images[index] * np.float32(1 / 256))
            np.testing.assert_array_equal(epoch["label"], labels[index].astype(np.float32))
        assert_same_epochs(faulty, clean)
    assert_every_fault_happened(fault_proxy.counts().since(before))


BLOB = np.random.default_rng(9).integers(0, 256, 3_000_017, dtype=np.uint8).tobytes()  # not a multiple of a block


def test_bytes_epochs_through_faults_are_the_object_byte_for_byte(
    fault_proxy: FaultProxy, faulty_daemon: DaemonProcess, daemon: DaemonProcess, objects: Objects
) -> None:
    url = objects.put("blob", BLOB)
    block = 128 << 10

    def run(on: DaemonProcess) -> list[list[int]]:
        """Each epoch's block offsets, in the order they came, once the blocks are checked against the object."""
        orders = []
        with bytes_iter(url, batch_bytes=block, shuffle=True, seed=4, socket_path=on.socket_path) as batches:
            for _ in range(3):
                blocks = [(int(batch.index[0]), batch.data.tobytes()) for batch in batches]
                offsets = [offset for offset, _ in blocks]
                assert sorted(offsets) == list(range(0, len(BLOB), block)), "every block exactly once"
                assert b"".join(data for _, data in sorted(blocks)) == BLOB, "every byte in its place"
                orders.append(offsets)
        return orders

    clean = run(daemon)
    before = fault_proxy.counts()
    with replay_notes(fault_proxy, faulty_daemon):
        assert run(faulty_daemon) == clean, "the same blocks in the same order"
    assert_every_fault_happened(fault_proxy.counts().since(before))


@pytest.mark.mxnet
def test_recordio_epochs_through_faults_are_the_clean_run_image_for_image(
    fault_proxy: FaultProxy, faulty_daemon: DaemonProcess, daemon: DaemonProcess, objects: Objects, tmp_path: Path
) -> None:
    from prefetchd.testing.image_records import images, write_rec

    count = 300  # ~9.5 kB JPEGs: ~2.9 MB, 90 ranges of 32 KiB per epoch
    pictures = images(count, np.random.default_rng(8), [(128, 128), (112, 144), (144, 112)])
    files = write_rec(tmp_path / "faulty.rec", pictures, [float(i % 10) for i in range(count)])
    rec, idx = objects.put("faulty.rec", files.rec.read_bytes()), objects.put("faulty.idx", files.idx.read_bytes())
    args = {"batch_size": 16, "data_shape": (3, 96, 96), "shuffle": True, "seed": 5}

    def run(on: DaemonProcess) -> list[Epoch]:
        with recordio_iter(rec, idx, socket_path=on.socket_path, **args) as iterator:  # type: ignore[arg-type]
            return _epochs(iterator, 2)

    clean = run(daemon)
    for epoch in clean:
        assert sorted(epoch["index"].tolist()) == list(range(count)), "every record exactly once"
    before = fault_proxy.counts()
    with replay_notes(fault_proxy, faulty_daemon):
        assert_same_epochs(run(faulty_daemon), clean)
    assert_every_fault_happened(fault_proxy.counts().since(before))


def test_the_daemons_own_counters_show_the_faults_the_proxy_injected(
    fault_proxy: FaultProxy, faulty_daemon: DaemonProcess, fashion_urls: dict[str, str]
) -> None:
    """`/metrics` accounts for every throttle and error the proxy sent, but those answering GETs it had
    already walked away from (read-aheads of a closed stream: the proxy's `hung_up`)."""
    image, label = fashion_urls["t10k-images-idx3-ubyte"], fashion_urls["t10k-labels-idx1-ubyte"]
    with idx_iter(image, label, batch_size=500, socket_path=faulty_daemon.socket_path) as iterator:
        assert sum(len(batch.index) for batch in iterator) == 10_000
    counts = fault_proxy.counts()
    metrics = scrape(faulty_daemon.http_url)

    def failed(kind: str) -> float:
        return metrics["prefetchd_s3_failed_requests_total", (("kind", kind),)]

    assert 0 < failed("throttled") <= counts.slowdown <= failed("throttled") + counts.hung_up
    assert 0 < failed("transient") <= counts.internal_error <= failed("transient") + counts.hung_up
    assert failed("broken") > 0
    assert metrics["prefetchd_s3_retries_total", ()] >= failed("throttled") + failed("transient")
    assert metrics["prefetchd_s3_requests_total", ()] >= counts.object_gets - counts.hung_up
