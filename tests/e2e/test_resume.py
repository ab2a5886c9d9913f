"""Mid-epoch resume: a trainer or a daemon SIGKILLed at random batches, and the batches go on as if it never was.

The reference is one uninterrupted run of two epochs, shuffled, each batch digested (epoch, number, pad and
the bytes of its indices, labels and pixels). The interrupted runs restart from the state the trainer saved
after its last batch and must give the same digests, in order: no batch lost, repeated or different.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from prefetchd.testing.daemon_process import DaemonProcess
from prefetchd.testing.embedded_s3 import EmbeddedS3
from prefetchd_client import DaemonUnavailable, IncompatibleState, InvalidRequest, bytes_iter
from tests.conftest import Objects
from tests.e2e.resume_trainer import batch_digest, open_iterator, train

ROOT = Path(__file__).resolve().parents[2]
# a small fetch budget makes the shuffle windowed (several windows per partition), two decode workers make
# the crops and mirrors of a batch come from two processes
DAEMON_ARGS = ("--chunk-size", "1MiB", "--budget", "4MiB", "--decode-processes", "2")


@pytest.fixture(scope="module")
def resume_daemon(s3_server: EmbeddedS3) -> Iterator[DaemonProcess]:
    with DaemonProcess(env=s3_server.environment(), args=DAEMON_ARGS) as process:
        yield process


@pytest.fixture
def restartable_daemon(resume_daemon: DaemonProcess) -> DaemonProcess:
    """The module's daemon, which the tests kill and restart: running, with DAEMON_ARGS, when a test starts."""
    if resume_daemon.process is None or resume_daemon.process.poll() is not None or resume_daemon.args != DAEMON_ARGS:
        resume_daemon.stop(signal.SIGKILL)
        resume_daemon.args = DAEMON_ARGS
        resume_daemon.start()
    return resume_daemon


def _idx_plan(urls: dict[str, str]) -> dict[str, Any]:
    # part 1 of 2 (5000 images), 40 batches an epoch, the last one padded
    args = {
        "image": urls["t10k-images-idx3-ubyte"],
        "label": urls["t10k-labels-idx1-ubyte"],
        "batch_size": 128,
        "shuffle": True,
        "seed": 3,
        "num_parts": 2,
        "part_index": 1,
        "last_batch": "pad",
    }
    return {"kind": "idx", "args": args, "total": 80}


def _recordio_plan(tmp_path: Path, objects: Objects) -> dict[str, Any]:
    from prefetchd.testing.image_records import images, write_rec

    pictures = list(images(45, np.random.default_rng(2), [(20, 20), (24, 30)]))
    files = write_rec(tmp_path / "resume.rec", pictures, [float(i % 5) for i in range(45)])
    args = {
        "rec": objects.put("resume.rec", files.rec.read_bytes()),
        "idx": objects.put("resume.idx", files.idx.read_bytes()),
        "batch_size": 4,
        "data_shape": [3, 16, 16],
        "shuffle": True,
        "seed": 5,
        "rand_crop": True,
        "rand_mirror": True,
        "last_batch": "round",  # ImageRecordIter's round_batch: each epoch starts after what the last one borrowed
        "preprocess_threads": 1,
    }
    return {"kind": "recordio", "args": args, "total": 24}


def _reference(plan: dict[str, Any], daemon: DaemonProcess, tmp_path: Path) -> list[str]:
    """The uninterrupted run's digests (in this process, with the trainer's own loop)."""
    checkpoint = tmp_path / "reference.json"
    train({**plan, "socket": str(daemon.socket_path), "checkpoint": str(checkpoint)})
    seen: list[str] = json.loads(checkpoint.read_text())["seen"]
    assert len(seen) == plan["total"] and len(set(seen)) == len(seen)
    assert len({digest.split(":")[0] for digest in seen}) >= 2, "the run spans two epochs"
    return seen


def _mid_epoch_points(reference: list[str], count: int, seed: int) -> list[int]:
    """`count` batch counts, chosen at random, after which the next batch is in the same epoch."""
    epoch = [digest.split(":")[0] for digest in reference]
    inside = [k for k in range(1, len(reference)) if epoch[k - 1] == epoch[k]]
    return sorted(random.Random(seed).sample(inside, count))


def _run_trainer(plan_path: Path, *, expect: str) -> None:
    trainer = subprocess.Popen(
        [sys.executable, "-m", "tests.e2e.resume_trainer", str(plan_path)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert trainer.stdout is not None and trainer.stdin is not None
    try:
        assert trainer.stdout.readline() == f"{expect}\n"
    finally:
        trainer.kill()  # SIGKILL: no cleanup of any kind, as an OOM kill or a preempted node
        trainer.wait()
        trainer.stdout.close()
        trainer.stdin.close()


def _killed_trainers(plan: dict[str, Any], daemon: DaemonProcess, tmp_path: Path, kill_at: list[int]) -> list[str]:
    """Run the trainer as a process, SIGKILLed after each of `kill_at` batches and restarted from its checkpoint."""
    checkpoint = tmp_path / "trainer.json"
    for pause in [*kill_at, None]:
        plan_path = tmp_path / "plan.json"
        plan_path.write_text(
            json.dumps({**plan, "socket": str(daemon.socket_path), "checkpoint": str(checkpoint), "pause_after": pause})
        )
        _run_trainer(plan_path, expect="done" if pause is None else "paused")
        saved = json.loads(checkpoint.read_text())
        if pause is not None:
            assert len(saved["seen"]) == pause
            assert saved["iterator"]["batch"] > 0, "killed mid-epoch"
    seen: list[str] = json.loads(checkpoint.read_text())["seen"]
    return seen


def _killed_daemons(
    plan: dict[str, Any], daemon: DaemonProcess, kill_at: list[int], restart_args: list[tuple[str, ...]]
) -> tuple[list[str], list[int]]:
    """Read in this process; SIGKILL the daemon after each of `kill_at` batches, start a new one and resume.

    Batches already in the ring still arrive after the kill; each is kept with the state saved after it, as a
    trainer would, until the iterator raises `DaemonUnavailable`. The new daemons take `restart_args` in turn.
    Returns the digests, and the shuffle window each daemon chose for the stream before the state was loaded.
    """
    plan = {**plan, "socket": str(daemon.socket_path)}
    seen: list[str] = []
    state: str | None = None  # as saved on disk: JSON text
    windows: list[int] = []
    for kill in [*kill_at, None]:
        with open_iterator(plan) as batches:
            windows.append(batches.state_dict()["stream"]["shuffle_window"])
            if state is not None:
                batches.load_state_dict(json.loads(state))
            while len(seen) < plan["total"]:
                try:
                    batch = next(batches)
                except StopIteration:
                    batches.reset()
                    continue
                except DaemonUnavailable:
                    break
                seen.append(batch_digest(batch))
                state = json.dumps(batches.state_dict())
                if len(seen) == kill:
                    daemon.stop(signal.SIGKILL)
        if kill is not None:
            assert json.loads(state or "{}")["batch"] > 0, "the daemon died mid-epoch"
            daemon.args = restart_args[len(windows) - 1]
            daemon.start()  # a new daemon on the same socket: nothing of the old one's streams survives
    assert json.loads(state or "{}")["stream"]["shuffle_window"] == windows[0], "the first daemon's window, kept"
    return seen, windows


def test_idx_resumes_exactly_after_the_trainer_is_killed(
    restartable_daemon: DaemonProcess, fashion_urls: dict[str, str], tmp_path: Path
) -> None:
    plan = _idx_plan(fashion_urls)
    reference = _reference(plan, restartable_daemon, tmp_path)
    kill_at = _mid_epoch_points(reference, 2, seed=1)
    assert _killed_trainers(plan, restartable_daemon, tmp_path, kill_at) == reference


def test_idx_resumes_exactly_after_the_daemon_is_killed(
    restartable_daemon: DaemonProcess, fashion_urls: dict[str, str], tmp_path: Path
) -> None:
    plan = _idx_plan(fashion_urls)
    reference = _reference(plan, restartable_daemon, tmp_path)
    kill_at = _mid_epoch_points(reference, 2, seed=2)
    # the second daemon has the default budget, whose shuffle window holds the whole partition: the resumed
    # stream pins the window its state was saved with (two 1 MiB chunks of records), and the order stays
    seen, windows = _killed_daemons(plan, restartable_daemon, kill_at, [(), DAEMON_ARGS])
    assert windows == [2 * (1 << 20) // 784, 5000, 2 * (1 << 20) // 784]
    assert seen == reference


@pytest.mark.mxnet  # the .rec is written by MXNet's own writer
def test_recordio_with_random_crops_resumes_exactly_after_trainer_and_daemon_are_killed(
    restartable_daemon: DaemonProcess, objects: Objects, tmp_path: Path
) -> None:
    plan = _recordio_plan(tmp_path, objects)
    reference = _reference(plan, restartable_daemon, tmp_path)
    # the interrupted runs decode on both workers, the reference on one: the crops must not depend on which
    plan["args"]["preprocess_threads"] = 0
    assert _killed_trainers(plan, restartable_daemon, tmp_path, _mid_epoch_points(reference, 2, seed=3)) == reference
    seen, windows = _killed_daemons(plan, restartable_daemon, _mid_epoch_points(reference, 1, seed=4), [DAEMON_ARGS])
    assert windows == [45, 45], "two daemons"
    assert seen == reference


def test_loading_an_earlier_state_goes_back_to_it(daemon: DaemonProcess, fashion_urls: dict[str, str]) -> None:
    """Batches already sent for later positions are in flight: going back must not take them for the new ones."""
    plan = {**_idx_plan(fashion_urls), "socket": str(daemon.socket_path)}
    with open_iterator(plan) as batches:
        first = [batch_digest(next(batches)) for _ in range(5)]
        state = batches.state_dict()
        later = [batch_digest(next(batches)) for _ in range(30)]
        batches.load_state_dict(state)
        assert [batch_digest(next(batches)) for _ in range(30)] == later
        batches.load_state_dict({**state, "batch": 1})
        assert batch_digest(next(batches)) == first[1]


def test_the_state_after_an_epoch_starts_the_next(daemon: DaemonProcess, fashion_urls: dict[str, str]) -> None:
    plan = {**_idx_plan(fashion_urls), "socket": str(daemon.socket_path)}
    with open_iterator(plan) as batches:
        count = sum(1 for _ in batches)
        ended = batches.state_dict()  # StopIteration seen: the next batch is the next epoch's first
        second = batch_digest(next(iter(batches)))
    assert (ended["epoch"], ended["batch"]) == (1, 0) and count == 40
    with open_iterator(plan) as batches:
        batches.load_state_dict(ended)
        assert batch_digest(next(batches)) == second


def test_a_state_of_an_overwritten_object_is_refused(daemon: DaemonProcess, objects: Objects) -> None:
    from tests.helpers import idx_bytes

    pictures = np.arange(20 * 28 * 28, dtype=np.uint8).reshape(20, 28, 28)
    image = objects.put("images", idx_bytes(pictures))
    label = objects.put("labels", idx_bytes(np.arange(20, dtype=np.uint8)))
    plan = {"kind": "idx", "args": {"image": image, "label": label, "batch_size": 4, "shuffle": True}}
    plan["socket"] = str(daemon.socket_path)
    with open_iterator(plan) as batches:
        next(batches)
        state = batches.state_dict()
    objects.put("images", idx_bytes(pictures[::-1].copy()))  # same size, other bytes: a new ETag
    with open_iterator(plan) as batches, pytest.raises(IncompatibleState) as raised:
        batches.load_state_dict(state)
    assert f"{image} changed since the state was saved" in str(raised.value)


def test_a_bytes_stream_resumes_too(daemon: DaemonProcess, fashion_urls: dict[str, str]) -> None:
    url = fashion_urls["t10k-labels-idx1-ubyte"]
    options = {"batch_bytes": 1000, "shuffle": True, "seed": 2, "socket_path": daemon.socket_path}
    with bytes_iter(url, **options) as blocks:  # type: ignore[arg-type]
        for _ in range(3):
            next(blocks)
        state = blocks.state_dict()
        following = [(int(b.index[0]), b.data.tobytes()) for b in blocks]
    with bytes_iter(url, **options) as blocks:  # type: ignore[arg-type]
        blocks.load_state_dict(state)
        assert [(int(b.index[0]), b.data.tobytes()) for b in blocks] == following
    assert len(following) == 8  # 10008 bytes: 11 blocks, 3 taken before the state


def test_a_daemon_that_cannot_hold_the_saved_window_refuses_it_and_the_stream_goes_on(
    restartable_daemon: DaemonProcess, fashion_urls: dict[str, str]
) -> None:
    restartable_daemon.stop(signal.SIGKILL)
    restartable_daemon.args = ("--chunk-size", "1MiB", "--budget", "2MiB")  # windows of up to 2674 records
    restartable_daemon.start()
    plan = {**_idx_plan(fashion_urls), "socket": str(restartable_daemon.socket_path)}
    with open_iterator(plan) as batches:
        expected = [batch_digest(next(batches)) for _ in range(2)]
    with open_iterator(plan) as batches:
        state = batches.state_dict()
        assert batch_digest(next(batches)) == expected[0]
        state["stream"]["shuffle_window"] = 3000  # as a daemon with a larger budget would have chosen
        with pytest.raises(InvalidRequest, match=r"shuffle window of 3000 records .* --budget 4704000 or more"):
            batches.load_state_dict(state)
        assert batches.state_dict()["stream"]["shuffle_window"] == 1337
        assert batch_digest(next(batches)) == expected[1], "the stream open before goes on where it was"
