"""The PyTorch adapter over s3://: a network learns through it, its tensors are ring slots, workers split the data."""

from __future__ import annotations

import pickle
import signal
import struct
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from prefetchd.formats.recordio import MAGIC
from prefetchd.testing.daemon_process import DaemonProcess
from prefetchd.testing.image_records import synthetic_image
from prefetchd_client import BatchIterator, InvalidRequest, StreamDataset, idx_dataset, recordio_dataset, recordio_iter
from prefetchd_client.layout import SlotState
from tests.conftest import Objects
from tests.helpers import reference_arrays

# error: a warning from from_numpy on a ring view would reach every trainer
pytestmark = [pytest.mark.torch, pytest.mark.filterwarnings("error")]


def _urls(urls: dict[str, str], split: str = "t10k") -> tuple[str, str]:
    return urls[f"{split}-images-idx3-ubyte"], urls[f"{split}-labels-idx1-ubyte"]


def _dataset(daemon: DaemonProcess, urls: dict[str, str], split: str = "t10k", **options: Any) -> StreamDataset:
    return idx_dataset(*_urls(urls, split), socket_path=daemon.socket_path, **options)


def _scaled(images: np.ndarray) -> torch.Tensor:
    """What MNISTIter (and so idx_iter) makes of uint8 pixels: float32 / 256, shape (N, 1, 28, 28)."""
    return torch.from_numpy(images.astype(np.float32) / 256).reshape(-1, 1, 28, 28)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Two shared cores: torch's intra-op threads would only fight the daemon for them."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_a_small_network_learns_fashion_mnist_in_one_epoch_from_s3(
    daemon: DaemonProcess, fashion_urls: dict[str, str]
) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(784, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    train = _dataset(daemon, fashion_urls, "train", batch_size=100, shuffle=True, seed=1, flat=True)
    steps = 0
    for data, label in DataLoader(train, batch_size=None):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(data), label.long())
        loss.backward()
        optimizer.step()
        steps += 1
    assert steps == 600

    correct, total, loss_sum = 0, 0, 0.0
    test = _dataset(daemon, fashion_urls, "t10k", batch_size=500, flat=True)
    with torch.no_grad():
        for data, label in DataLoader(test, batch_size=None):
            logits = model(data)
            loss_sum += float(torch.nn.functional.cross_entropy(logits, label.long(), reduction="sum"))
            correct += int((logits.argmax(1) == label.long()).sum())
            total += len(label)
    assert total == 10_000  # held-out: the test split, never trained on
    # chance is 10 % and a loss of ln(10) = 2.30; one epoch of this MLP gets about 84 % and 0.45
    print(f"held-out accuracy {correct / total:.4f}, loss {loss_sum / total:.4f}")
    assert correct / total > 0.78, correct / total
    assert loss_sum / total < 0.65, loss_sum / total


@dataclass
class Seen:
    data: torch.Tensor  # the tensor the loader gave: the ring's memory
    kept: torch.Tensor  # its .clone(), taken at once
    label: torch.Tensor
    index: torch.Tensor
    slot: int


def _slots_by_address(stream: BatchIterator, array: str) -> dict[int, int]:
    ring = stream._ring
    assert ring is not None
    return {views[array].ctypes.data: slot for slot, views in enumerate(ring._views)}


def test_tensors_are_ring_slots_until_the_next_batch_and_clones_keep(
    daemon: DaemonProcess, fashion_urls: dict[str, str], fashion_dir: Path
) -> None:
    dataset = _dataset(daemon, fashion_urls, batch_size=100, shuffle=True, seed=5, with_index=True)
    seen: list[Seen] = []
    overwritten = 0
    for data, label, index in DataLoader(dataset, batch_size=None):
        stream = dataset.stream
        assert stream is not None and stream._ring is not None
        slot = _slots_by_address(stream, "data")[data.data_ptr()]  # no copy: the tensor starts at a slot's data
        assert _slots_by_address(stream, "label")[label.data_ptr()] == slot
        assert stream._ring.state(slot) is SlotState.HELD
        if seen:  # taking this batch gave the last one's slot back to the daemon
            assert seen[-1].slot == slot or stream._ring.state(seen[-1].slot) is not SlotState.HELD
        for earlier in seen:
            if earlier.slot == slot:  # the daemon refilled that slot: the old tensor now shows this batch
                assert torch.equal(earlier.data, data)
                assert not torch.equal(earlier.data, earlier.kept)
                overwritten += 1
        seen.append(Seen(data, data.clone(), label.clone(), index, slot))
    assert len(seen) == 100
    assert overwritten > 0

    images, labels = reference_arrays(fashion_dir, "t10k")
    order = torch.cat([s.index for s in seen])
    assert sorted(order.tolist()) == list(range(10_000))
    assert torch.equal(torch.cat([s.kept for s in seen]), _scaled(images[order.numpy()]))
    assert torch.equal(torch.cat([s.label for s in seen]), torch.from_numpy(labels[order.numpy()].astype(np.float32)))


def _epoch(loader: DataLoader) -> tuple[torch.Tensor, torch.Tensor]:
    indices, images = [], []
    for data, _label, index in loader:
        indices.append(index)
        images.append(data)
    return torch.cat(indices), torch.cat(images)


def test_two_workers_read_each_record_once_per_epoch(
    daemon: DaemonProcess, fashion_urls: dict[str, str], fashion_dir: Path
) -> None:
    dataset = _dataset(daemon, fashion_urls, batch_size=128, shuffle=True, seed=9, with_index=True)
    assert len(dataset) == 79  # opens the main process's stream first: the workers inherit it, and must not close it
    loader = DataLoader(dataset, batch_size=None, num_workers=2)
    images, _ = reference_arrays(fashion_dir, "t10k")
    orders = []
    for epoch in range(2):
        dataset.set_epoch(epoch)
        order, data = _epoch(loader)
        assert sorted(order.tolist()) == list(range(10_000)), "every record exactly once"
        assert torch.equal(data, _scaled(images[order.numpy()])), "copied out of the ring before the slot was reused"
        orders.append(order)
    assert not torch.equal(orders[0], orders[1]), "set_epoch reshuffles"

    # the forked workers dropped their copies of the main process's stream without ending it
    order, _ = _epoch(DataLoader(dataset, batch_size=None))
    assert sorted(order.tolist()) == list(range(10_000))


def test_persistent_workers_go_on_to_the_next_epoch_by_themselves(
    daemon: DaemonProcess, fashion_urls: dict[str, str]
) -> None:
    dataset = _dataset(daemon, fashion_urls, batch_size=500, shuffle=True, seed=9, with_index=True)
    loader = DataLoader(dataset, batch_size=None, num_workers=2, persistent_workers=True)
    first, _ = _epoch(loader)
    second, _ = _epoch(loader)
    assert sorted(first.tolist()) == sorted(second.tolist()) == list(range(10_000))
    assert not torch.equal(first, second), "each worker's stream went on to its next epoch"


def test_epochs_follow_one_another_and_set_epoch_goes_back(daemon: DaemonProcess, fashion_urls: dict[str, str]) -> None:
    dataset = _dataset(daemon, fashion_urls, batch_size=1000, shuffle=True, seed=2, with_index=True)
    loader = DataLoader(dataset, batch_size=None)
    assert len(loader) == 10
    first, _ = _epoch(loader)
    second, _ = _epoch(loader)
    assert not torch.equal(first, second)
    for taken, _ in enumerate(loader):  # a partial epoch
        if taken == 2:
            break
    dataset.set_epoch(1)
    again, _ = _epoch(loader)
    assert torch.equal(again, second)
    assert sorted(first.tolist()) == sorted(second.tolist()) == list(range(10_000))


def test_a_padded_last_batch_or_an_unknown_argument_is_refused_at_once(fashion_urls: dict[str, str]) -> None:
    urls = _urls(fashion_urls)
    with pytest.raises(InvalidRequest, match="use 'keep'"):
        idx_dataset(*urls, batch_size=100, last_batch="pad")
    with pytest.raises(TypeError, match="shufle"):
        idx_dataset(*urls, batch_size=100, shufle=True)


def test_an_in_place_write_to_a_ring_tensor_kills_the_writer_not_the_stream(
    daemon: DaemonProcess, fashion_urls: dict[str, str]
) -> None:
    program = f"""
from torch.utils.data import DataLoader
from prefetchd_client import idx_dataset
dataset = idx_dataset(*{list(_urls(fashion_urls))!r}, batch_size=100, socket_path={str(daemon.socket_path)!r})
for data, label in DataLoader(dataset, batch_size=None):
    print("took a batch", flush=True)
    data.sub_(1)
    print("wrote into the ring", flush=True)
"""
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120)
    assert result.stdout == "took a batch\n", result.stderr
    assert result.returncode == -signal.SIGSEGV  # the ring is mapped read-only: no silent corruption
    order, _ = _epoch(DataLoader(_dataset(daemon, fashion_urls, batch_size=100, with_index=True), batch_size=None))
    assert len(order) == 10_000


def test_a_pickled_dataset_opens_its_own_stream(daemon: DaemonProcess, fashion_urls: dict[str, str]) -> None:
    """What a spawned worker gets: the settings and the epoch, not the parent's stream."""
    dataset = _dataset(daemon, fashion_urls, batch_size=1000, shuffle=True, seed=4, with_index=True)
    first, _ = _epoch(DataLoader(dataset, batch_size=None))
    copy = pickle.loads(pickle.dumps(dataset))
    assert copy.stream is None and dataset.stream is not None
    second, _ = _epoch(DataLoader(copy, batch_size=None))
    assert copy.stream is not dataset.stream
    dataset.set_epoch(1)
    assert torch.equal(second, _epoch(DataLoader(dataset, batch_size=None))[0])
    assert not torch.equal(first, second)


def _rec_bytes(pictures: list[np.ndarray]) -> bytes:
    """A RecordIO file of PNG image records, label = position (MXNet, the usual writer, is not in this env)."""
    import cv2

    out = bytearray()
    for position, picture in enumerate(pictures):
        payload = struct.pack("<IfQQ", 0, float(position), position, 0) + cv2.imencode(".png", picture)[1].tobytes()
        assert struct.pack("<I", MAGIC) not in payload  # such a record would have to be split in parts
        out += struct.pack("<II", MAGIC, len(payload)) + payload + bytes(-len(payload) % 4)
    return bytes(out)


def test_recordio_batches_are_the_numpy_iterators(daemon: DaemonProcess, objects: Objects) -> None:
    rng = np.random.default_rng(3)
    rec = objects.put("pictures.rec", _rec_bytes([synthetic_image(rng, 40, 48) for _ in range(10)]))
    options: dict[str, Any] = {"batch_size": 4, "data_shape": (3, 32, 32), "resize": 36, "last_batch": "keep"}
    with recordio_iter(rec, socket_path=daemon.socket_path, **options) as batches:
        expected = [(batch.data.copy(), batch.label.copy()) for batch in batches]
    dataset = recordio_dataset(rec, socket_path=daemon.socket_path, **options)
    got = [(data.clone(), label.clone()) for data, label in DataLoader(dataset, batch_size=None)]
    assert [tuple(data.shape) for data, _ in got] == [(4, 3, 32, 32), (4, 3, 32, 32), (2, 3, 32, 32)]
    assert torch.equal(torch.cat([label for _, label in got]), torch.arange(10, dtype=torch.float32))
    for (data, label), (want_data, want_label) in zip(got, expected, strict=True):
        assert torch.equal(data, torch.from_numpy(want_data))
        assert torch.equal(label, torch.from_numpy(want_label))
