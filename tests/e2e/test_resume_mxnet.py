"""The MXNet drop-ins resume mid-epoch: a state saved after a random batch, loaded by a new iterator.

The loop is MXNet's (`for batch in it`, then `it.reset()`, as `Module.fit` runs it), and each batch is
compared by its NDArrays' bytes, shuffled, over more than one epoch.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from typing import Any

import mxnet as mx
import pytest

from prefetchd.testing.daemon_process import DaemonProcess
from prefetchd_client import ImageRecordIter, IncompatibleState, MNISTIter

pytestmark = pytest.mark.mxnet


def _digest(batch: mx.io.DataBatch) -> str:
    digest = hashlib.sha256()
    for array in (batch.data[0], batch.label[0]):
        digest.update(array.asnumpy().tobytes())
    return f"{batch.pad}:{digest.hexdigest()[:24]}"


def _run(it: Any, batches: int, state: dict[str, Any] | None = None) -> tuple[list[str], list[str]]:
    """`batches` digests read MXNet's way, and the state saved (through JSON) after each one."""
    if state is not None:
        it.load_state_dict(state)
    seen: list[str] = []
    states: list[str] = []
    while len(seen) < batches:
        for batch in it:
            seen.append(_digest(batch))
            states.append(json.dumps(it.state_dict()))
            if len(seen) == batches:
                break
        else:
            it.reset()
    return seen, states


def _resumes_exactly(make: Callable[[], Any], total: int, seed: int) -> None:
    it = make()
    try:
        reference, states = _run(it, total)
    finally:
        it.close()
    for k in sorted(random.Random(seed).sample(range(1, total - 1), 2)):
        it = make()  # a new iterator, as in a new trainer process
        try:
            resumed, _ = _run(it, total - k, json.loads(states[k - 1]))
        finally:
            it.close()
        assert resumed == reference[k:], f"resumed after batch {k}"


def test_mnist_iter_resumes_where_its_state_was_saved(daemon: DaemonProcess, fashion_urls: dict[str, str]) -> None:
    def make() -> MNISTIter:
        return MNISTIter(
            image=fashion_urls["t10k-images-idx3-ubyte"],
            label=fashion_urls["t10k-labels-idx1-ubyte"],
            batch_size=200,
            shuffle=True,
            seed=4,
            silent=True,
            reshuffle_every_epoch=True,
            socket_path=str(daemon.socket_path),
        )

    _resumes_exactly(make, total=75, seed=5)  # 50 batches an epoch


def test_image_record_iter_with_random_crops_resumes_where_its_state_was_saved(
    daemon: DaemonProcess, caltech_rec: str
) -> None:
    def make() -> ImageRecordIter:
        return ImageRecordIter(
            path_imgrec=caltech_rec,
            path_imgidx=caltech_rec[: -len(".rec")] + ".idx",
            data_shape=(3, 64, 64),
            batch_size=3,
            resize=80,
            shuffle=True,
            seed=9,
            rand_crop=True,
            rand_mirror=True,
            verbose=False,
            socket_path=str(daemon.socket_path),
        )  # round_batch: 10 records, 4 batches an epoch, each borrowing from the next

    _resumes_exactly(make, total=10, seed=6)


def test_a_drop_in_refuses_another_iterators_state(
    daemon: DaemonProcess, fashion_urls: dict[str, str], caltech_rec: str
) -> None:
    with_images = {"image": fashion_urls["t10k-images-idx3-ubyte"], "label": fashion_urls["t10k-labels-idx1-ubyte"]}
    socket = str(daemon.socket_path)
    mnist = MNISTIter(**with_images, batch_size=100, shuffle=True, silent=True, socket_path=socket)
    records = ImageRecordIter(
        path_imgrec=caltech_rec, data_shape=(3, 32, 32), batch_size=2, resize=40, verbose=False, socket_path=socket
    )
    other_seed = MNISTIter(**with_images, batch_size=100, shuffle=True, seed=1, silent=True, socket_path=socket)
    try:
        mnist.next()
        state = mnist.state_dict()
        with pytest.raises(IncompatibleState, match="format was 'idx' when saved, is 'recordio' now"):
            records.load_state_dict(state)
        with pytest.raises(IncompatibleState, match="seed was 0 when saved, is 1 now"):
            other_seed.load_state_dict(state)
    finally:
        for it in (mnist, records, other_seed):
            it.close()
