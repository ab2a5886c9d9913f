"""The plain numpy iterator over s3://: shuffles, last batches, views, and every sample matching its file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from prefetchd.testing.daemon_process import DaemonProcess
from prefetchd_client import BatchIterator, idx_iter
from tests.daemon_probe import within
from tests.helpers import reference_arrays


def _open(daemon: DaemonProcess, urls: dict[str, str], split: str = "t10k", **options: object) -> BatchIterator:
    return idx_iter(
        urls[f"{split}-images-idx3-ubyte"],
        urls[f"{split}-labels-idx1-ubyte"],
        socket_path=daemon.socket_path,
        **options,  # type: ignore[arg-type]
    )


def _epoch(it: BatchIterator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One epoch's sample indices, images and labels (copied out of the ring)."""
    indices, images, labels = [], [], []
    for batch in it:
        indices.append(batch.index.copy())
        images.append(batch.data.copy())
        labels.append(batch.label.copy())
    return np.concatenate(indices), np.concatenate(images), np.concatenate(labels)


def test_each_shuffled_epoch_is_a_permutation_with_matching_samples(
    daemon: DaemonProcess, fashion_urls: dict[str, str], fashion_dir: Path
) -> None:
    images, labels = reference_arrays(fashion_dir, "t10k")
    with _open(daemon, fashion_urls, batch_size=250, shuffle=True, seed=3) as it:
        for _ in range(3):
            index, data, label = _epoch(it)
            assert sorted(index.tolist()) == list(range(10_000)), "every sample exactly once"
            np.testing.assert_array_equal(data.reshape(-1, 28, 28), images[index] * np.float32(1 / 256))
            np.testing.assert_array_equal(label, labels[index].astype(np.float32))


def test_same_seed_same_order_and_next_epoch_another(daemon: DaemonProcess, fashion_urls: dict[str, str]) -> None:
    with (
        _open(daemon, fashion_urls, batch_size=500, shuffle=True, seed=7) as a,
        _open(daemon, fashion_urls, batch_size=500, shuffle=True, seed=7) as b,
    ):
        a0, b0 = _epoch(a)[0], _epoch(b)[0]
        a1, b1 = _epoch(a)[0], _epoch(b)[0]
    np.testing.assert_array_equal(a0, b0)
    np.testing.assert_array_equal(a1, b1)
    assert not np.array_equal(a0, a1)
    with _open(daemon, fashion_urls, batch_size=500, shuffle=True, seed=8) as c:
        assert not np.array_equal(_epoch(c)[0], a0)


def test_unshuffled_order_is_the_file_order(daemon: DaemonProcess, fashion_urls: dict[str, str]) -> None:
    with _open(daemon, fashion_urls, batch_size=1000) as it:
        np.testing.assert_array_equal(_epoch(it)[0], np.arange(10_000))


def test_pad_mode_fills_the_last_batch_from_the_start(daemon: DaemonProcess, fashion_urls: dict[str, str]) -> None:
    with _open(daemon, fashion_urls, batch_size=3000, last_batch="pad") as it:
        batches = [(b.index.copy(), b.pad, len(b.label)) for b in it]
    assert [pad for _, pad, _ in batches] == [0, 0, 0, 2000]
    assert all(size == 3000 for _, _, size in batches)
    last = batches[-1][0]
    np.testing.assert_array_equal(last[:1000], np.arange(9000, 10_000))
    np.testing.assert_array_equal(last[1000:], np.arange(2000))


def test_keep_mode_yields_a_short_last_batch(daemon: DaemonProcess, fashion_urls: dict[str, str]) -> None:
    with _open(daemon, fashion_urls, batch_size=3000, last_batch="keep") as it:
        sizes = [(len(b.data), len(b.label), b.pad) for b in it]
    assert sizes == [(3000, 3000, 0)] * 3 + [(1000, 1000, 0)]


def test_discard_mode_drops_the_partial_batch(daemon: DaemonProcess, fashion_urls: dict[str, str]) -> None:
    with _open(daemon, fashion_urls, batch_size=3000) as it:
        assert it.batches_per_epoch == 3
        assert sum(1 for _ in it) == 3


def test_batches_are_read_only_views_shaped_like_mnistiter(daemon: DaemonProcess, fashion_urls: dict[str, str]) -> None:
    with _open(daemon, fashion_urls, batch_size=100) as it:
        data, label = next(it)
        assert data.shape == (100, 1, 28, 28) and data.dtype == np.float32
        assert label.shape == (100,) and label.dtype == np.float32
        assert not data.flags.writeable and not label.flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            data[0, 0, 0, 0] = 1.0


def test_flat_and_dtype_options(daemon: DaemonProcess, fashion_urls: dict[str, str], fashion_dir: Path) -> None:
    images, _ = reference_arrays(fashion_dir, "t10k")
    with _open(daemon, fashion_urls, batch_size=100, flat=True, dtype="float16") as it:
        batch = next(it)
    assert batch.data.shape == (100, 784) and batch.data.dtype == np.float16
    expected = (images[:100].reshape(100, 784) * np.float32(1 / 256)).astype(np.float16)
    np.testing.assert_array_equal(batch.data, expected)


def test_seek_gives_the_batch_an_uninterrupted_run_gives(daemon: DaemonProcess, fashion_urls: dict[str, str]) -> None:
    with _open(daemon, fashion_urls, batch_size=100, shuffle=True, seed=11) as it:
        _epoch(it)
        uninterrupted = [b.index.copy() for b in it]  # epoch 1
        it.seek(1, 42)
        resumed = [b.index.copy() for b in it]
    assert len(resumed) == 100 - 42
    for expected, got in zip(uninterrupted[42:], resumed, strict=True):
        np.testing.assert_array_equal(expected, got)


def test_opening_at_a_later_epoch_matches_the_uninterrupted_run(
    daemon: DaemonProcess, fashion_urls: dict[str, str]
) -> None:
    with _open(daemon, fashion_urls, batch_size=400, shuffle=True, seed=5) as it:
        _epoch(it)
        second = _epoch(it)[0]
    with _open(daemon, fashion_urls, batch_size=400, shuffle=True, seed=5, epoch=1) as it:
        np.testing.assert_array_equal(_epoch(it)[0], second)


def test_statistics_count_batches_epochs_and_wait(daemon: DaemonProcess, fashion_urls: dict[str, str]) -> None:
    with _open(daemon, fashion_urls, batch_size=1000) as it:
        _epoch(it)
        _epoch(it)
        stats = it.statistics()
    assert (stats.batches, stats.epochs_finished) == (20, 2)
    assert stats.wait_s > 0


def test_at_an_epoch_s_end_the_daemon_has_every_slot_back(
    fresh_daemon: DaemonProcess, fashion_urls: dict[str, str]
) -> None:
    """Releases go a few per write, not one per batch; at an epoch's end all have gone, so while the trainer
    does something else (validation) the daemon fills the whole ring with the next epoch."""

    def sent_and_slots() -> tuple[float, float]:
        metrics = fresh_daemon.metrics()
        sent = sum(value for (name, _), value in metrics.items() if name == "prefetchd_stream_batches_total")
        slots = sum(value for (name, _), value in metrics.items() if name == "prefetchd_stream_ring_slots")
        return sent, slots

    with _open(fresh_daemon, fashion_urls, batch_size=100) as it:  # 100 batches an epoch, more than the ring
        for _ in it:
            pass
        assert within(10, lambda: sent_and_slots()[0] == it.batches_per_epoch + sent_and_slots()[1])
