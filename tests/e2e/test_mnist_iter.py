"""The MNISTIter drop-in over s3:// against MXNet's own iterator over the same local files.

With shuffle=False every batch must be byte-identical (data, label, pad) and the batch count the same.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mxnet as mx
import numpy as np
import pytest

from prefetchd.testing.daemon_process import DaemonProcess
from prefetchd_client import MNISTIter

pytestmark = pytest.mark.mxnet


def _pair(split: str, fashion_dir: Path, fashion_urls: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    names = {"image": f"{split}-images-idx3-ubyte", "label": f"{split}-labels-idx1-ubyte"}
    local = {arg: str(fashion_dir / name) for arg, name in names.items()}
    remote = {arg: fashion_urls[name] for arg, name in names.items()}
    return local, remote


def assert_same_batches(reference: Any, ours: Any) -> int:
    """Walk both iterators in lockstep; every batch byte-identical, the same number of batches."""
    assert ours.provide_data == reference.provide_data
    assert ours.provide_label == reference.provide_label
    count = 0
    for expected, got in zip(reference, ours, strict=True):
        assert got.data[0].dtype == expected.data[0].dtype
        assert got.data[0].asnumpy().tobytes() == expected.data[0].asnumpy().tobytes(), f"data of batch {count}"
        assert got.label[0].asnumpy().tobytes() == expected.label[0].asnumpy().tobytes(), f"label of batch {count}"
        assert got.pad == expected.pad
        count += 1
    return count


@pytest.mark.parametrize("batch_size", [1, 100, 128, 999])
def test_drop_in_is_byte_identical_to_mxnet_on_the_test_split(
    batch_size: int, daemon: DaemonProcess, fashion_dir: Path, fashion_urls: dict[str, str]
) -> None:
    local, remote = _pair("t10k", fashion_dir, fashion_urls)
    args = {"batch_size": batch_size, "shuffle": False, "silent": True}
    reference = mx.io.MNISTIter(**local, **args)
    ours = MNISTIter(**remote, **args, socket_path=str(daemon.socket_path))
    assert assert_same_batches(reference, ours) == 10_000 // batch_size


def test_drop_in_is_byte_identical_to_mxnet_on_the_training_split(
    daemon: DaemonProcess, fashion_dir: Path, fashion_urls: dict[str, str]
) -> None:
    local, remote = _pair("train", fashion_dir, fashion_urls)
    args = {"batch_size": 128, "shuffle": False, "silent": True}
    reference = mx.io.MNISTIter(**local, **args)
    ours = MNISTIter(**remote, **args, socket_path=str(daemon.socket_path))
    assert assert_same_batches(reference, ours) == 60_000 // 128


def test_flat_drop_in_is_byte_identical_to_mxnet(
    daemon: DaemonProcess, fashion_dir: Path, fashion_urls: dict[str, str]
) -> None:
    local, remote = _pair("t10k", fashion_dir, fashion_urls)
    args = {"batch_size": 300, "shuffle": False, "silent": True, "flat": True}
    reference = mx.io.MNISTIter(**local, **args)
    ours = MNISTIter(**remote, **args, socket_path=str(daemon.socket_path))
    assert ours.provide_data[0].shape == (300, 784)
    assert assert_same_batches(reference, ours) == 33


@pytest.mark.parametrize(("num_parts", "part_index"), [(2, 0), (2, 1), (3, 0), (3, 1), (3, 2), (7, 6)])
def test_each_part_is_byte_identical_to_mxnet(
    num_parts: int, part_index: int, daemon: DaemonProcess, fashion_dir: Path, fashion_urls: dict[str, str]
) -> None:
    local, remote = _pair("t10k", fashion_dir, fashion_urls)
    args = {"batch_size": 64, "shuffle": False, "silent": True, "num_parts": num_parts, "part_index": part_index}
    reference = mx.io.MNISTIter(**local, **args)
    ours = MNISTIter(**remote, **args, socket_path=str(daemon.socket_path))
    assert assert_same_batches(reference, ours) > 0


def test_second_epoch_after_reset_is_byte_identical_too(
    daemon: DaemonProcess, fashion_dir: Path, fashion_urls: dict[str, str]
) -> None:
    local, remote = _pair("t10k", fashion_dir, fashion_urls)
    args = {"batch_size": 512, "shuffle": False, "silent": True}
    reference = mx.io.MNISTIter(**local, **args)
    ours = MNISTIter(**remote, **args, socket_path=str(daemon.socket_path))
    assert_same_batches(reference, ours)
    reference.reset()
    ours.reset()
    assert assert_same_batches(reference, ours) == 10_000 // 512


def test_reset_mid_epoch_restarts_like_mxnet(
    daemon: DaemonProcess, fashion_dir: Path, fashion_urls: dict[str, str]
) -> None:
    local, remote = _pair("t10k", fashion_dir, fashion_urls)
    args = {"batch_size": 100, "shuffle": False, "silent": True}
    reference = mx.io.MNISTIter(**local, **args)
    ours = MNISTIter(**remote, **args, socket_path=str(daemon.socket_path))
    for _ in range(7):
        reference.next()
        ours.next()
    reference.reset()
    ours.reset()
    assert assert_same_batches(reference, ours) == 100


def test_drop_in_logs_mxnets_load_line(
    daemon: DaemonProcess,
    fashion_urls: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("INFO", logger="prefetchd_client")
    MNISTIter(
        image=fashion_urls["t10k-images-idx3-ubyte"],
        label=fashion_urls["t10k-labels-idx1-ubyte"],
        batch_size=300,
        shuffle=False,
        silent=False,
        socket_path=str(daemon.socket_path),
    )
    # to stderr when logging is not configured (as MXNet prints), through logging when it is (as here)
    shown = capsys.readouterr().err + caplog.text
    assert "MNISTIter: load 10000 images, shuffle=0, shape=[300,1,28,28]" in shown


def test_drop_in_shuffle_repeats_one_order_every_epoch_as_mxnet_does(
    daemon: DaemonProcess, fashion_dir: Path, fashion_urls: dict[str, str]
) -> None:
    _, remote = _pair("t10k", fashion_dir, fashion_urls)
    ours = MNISTIter(**remote, batch_size=1000, shuffle=True, seed=10, silent=True, socket_path=str(daemon.socket_path))
    first = np.concatenate([batch.index for batch in ours])
    ours.reset()
    second = np.concatenate([batch.index for batch in ours])
    np.testing.assert_array_equal(first, second)
    assert sorted(first.tolist()) == list(range(10_000))
    assert not np.array_equal(first, np.arange(10_000))


def test_drop_in_can_reshuffle_every_epoch(
    daemon: DaemonProcess, fashion_dir: Path, fashion_urls: dict[str, str]
) -> None:
    _, remote = _pair("t10k", fashion_dir, fashion_urls)
    ours = MNISTIter(
        **remote,
        batch_size=1000,
        shuffle=True,
        seed=10,
        silent=True,
        reshuffle_every_epoch=True,
        socket_path=str(daemon.socket_path),
    )
    first = np.concatenate([batch.index for batch in ours])
    ours.reset()
    second = np.concatenate([batch.index for batch in ours])
    assert sorted(first.tolist()) == sorted(second.tolist()) == list(range(10_000))
    assert not np.array_equal(first, second)


def test_a_batch_stays_valid_for_as_many_next_calls_as_with_mxnet(
    daemon: DaemonProcess, fashion_dir: Path, fashion_urls: dict[str, str]
) -> None:
    local, remote = _pair("t10k", fashion_dir, fashion_urls)
    args = {"batch_size": 100, "shuffle": False, "silent": True}
    for iterator in (
        mx.io.MNISTIter(**local, **args),
        MNISTIter(**remote, **args, socket_path=str(daemon.socket_path)),
    ):
        first = next(iterator)
        kept = first.data[0].asnumpy().copy(), first.label[0].asnumpy().copy()
        for _ in range(3):
            next(iterator)
        assert (first.data[0].asnumpy() == kept[0]).all() and (first.label[0].asnumpy() == kept[1]).all()


def test_a_batch_the_trainer_keeps_is_never_overwritten(
    daemon: DaemonProcess, fashion_dir: Path, fashion_urls: dict[str, str]
) -> None:
    """MXNet's own iterator overwrites a batch after `prefetch_buffer` more; ours never writes memory MXNet holds."""
    local, remote = _pair("t10k", fashion_dir, fashion_urls)
    args = {"batch_size": 100, "shuffle": False, "silent": True}
    expected = [(batch.data[0].asnumpy(), batch.label[0].asnumpy()) for batch in mx.io.MNISTIter(**local, **args)]
    kept = list(MNISTIter(**remote, **args, socket_path=str(daemon.socket_path)))
    assert len(kept) == len(expected)
    for number, (batch, (data, label)) in enumerate(zip(kept, expected, strict=True)):
        assert np.array_equal(batch.data[0].asnumpy(), data) and np.array_equal(batch.label[0].asnumpy(), label), number


def test_a_with_block_hands_the_stream_back_while_the_iterator_lives_on(
    fresh_daemon: DaemonProcess, fashion_dir: Path, fashion_urls: dict[str, str]
) -> None:
    """`Module.fit` never closes its iterator; a `with` block does, without waiting for the collector."""
    _, remote = _pair("t10k", fashion_dir, fashion_urls)
    with MNISTIter(
        **remote, batch_size=100, shuffle=False, silent=True, socket_path=str(fresh_daemon.socket_path)
    ) as it:
        assert it.next().data[0].shape == (100, 1, 28, 28)
        assert fresh_daemon.metrics()["prefetchd_streams", ()] == 1
    assert fresh_daemon.until_no_streams()["prefetchd_streams", ()] == 0
    assert it.provide_data[0].shape == (100, 1, 28, 28)  # still referenced: the block closed it, not the collector
