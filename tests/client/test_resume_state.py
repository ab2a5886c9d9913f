"""The iterator state: plain JSON, versioned, and refused with every difference named when it is another stream's."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from prefetchd_client import IncompatibleState, PrefetchdError
from prefetchd_client.protocol import Open, Opened
from prefetchd_client.resume import STATE_VERSION, ResumePoint, check_state, make_state, stream_identity

IMAGES = "s3://bucket/train-images-idx3-ubyte"
LABELS = "s3://bucket/train-labels-idx1-ubyte"


def _open(**changes: Any) -> Open:
    fields: dict[str, Any] = {
        "format": "idx",
        "sources": {"image": IMAGES, "label": LABELS},
        "batch_size": 100,
        "shuffle": True,
        "seed": 7,
        "num_parts": 2,
        "part_index": 1,
        "last_batch": "pad",
        "decode": {"flat": False, "dtype": "float32"},
        **changes,
    }
    return Open(**fields)


def _opened(image_etag: str = '"aaa"', image_size: int = 47040016, window: int = 12000) -> Opened:
    return Opened(
        stream=1,
        segment_bytes=1 << 20,
        batches_per_epoch=300,
        samples_per_epoch=30000,
        objects={
            "image": {"url": IMAGES, "size": image_size, "version": image_etag},
            "label": {"url": LABELS, "size": 60008, "version": '"bbb"'},
        },
        shuffle_window=window,
    )


def _state(epoch: int = 3, batch: int = 41, **open_changes: Any) -> dict[str, Any]:
    return make_state(stream_identity(_open(**open_changes), _opened()), epoch, batch)


def test_a_state_survives_json_and_gives_back_its_position() -> None:
    state = _state(epoch=3, batch=41)
    assert json.loads(json.dumps(state)) == state
    assert state["version"] == STATE_VERSION
    assert check_state(json.loads(json.dumps(state)), stream_identity(_open(), _opened())) == ResumePoint(3, 41, 12000)


def test_a_state_is_small() -> None:
    assert len(json.dumps(_state())) < 1000


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"seed": 8}, "seed was 7 when saved, is 8 now"),
        ({"shuffle": False}, "shuffle was True when saved, is False now"),
        ({"batch_size": 50}, "batch_size was 100 when saved, is 50 now"),
        ({"num_parts": 4}, "num_parts was 2 when saved, is 4 now"),
        ({"part_index": 0}, "part_index was 1 when saved, is 0 now"),
        ({"last_batch": "discard"}, "last_batch was 'pad' when saved, is 'discard' now"),
        ({"reshuffle": False}, "reshuffle was True when saved, is False now"),
        ({"format": "recordio"}, "format was 'idx' when saved, is 'recordio' now"),
        ({"decode": {"flat": True, "dtype": "float32"}}, "decode was {'dtype': 'float32', 'flat': False}"),
        ({"sources": {"image": IMAGES + "-v2", "label": LABELS}}, "sources was"),
    ],
)
def test_another_setting_is_refused_by_name(change: dict[str, Any], named: str) -> None:
    with pytest.raises(IncompatibleState, match="belongs to another stream") as raised:
        check_state(_state(), stream_identity(_open(**change), _opened()))
    assert named in str(raised.value)


def test_every_difference_is_named_at_once() -> None:
    with pytest.raises(IncompatibleState) as raised:
        check_state(_state(), stream_identity(_open(seed=1, batch_size=10), _opened()))
    assert "seed was 7" in str(raised.value) and "batch_size was 100" in str(raised.value)


def test_an_overwritten_object_is_refused_naming_its_url() -> None:
    with pytest.raises(IncompatibleState) as raised:
        check_state(_state(), stream_identity(_open(), _opened(image_etag='"ccc"')))
    message = str(raised.value)
    assert f"{IMAGES} changed since the state was saved" in message
    assert '"aaa"' in message and '"ccc"' in message
    assert LABELS not in message.split("changed")[0], "only the changed object is named"


def test_an_object_of_another_size_is_refused() -> None:
    with pytest.raises(IncompatibleState, match="changed since the state was saved"):
        check_state(_state(), stream_identity(_open(), _opened(image_size=10)))


def test_decode_workers_may_differ() -> None:
    """preprocess_threads changes no pixel: crops are drawn per record, whatever worker decodes it."""
    saved = _state(decode={"flat": False, "dtype": "float32", "preprocess_threads": 4})
    live = stream_identity(_open(decode={"flat": False, "dtype": "float32"}), _opened())
    assert check_state(saved, live) == ResumePoint(3, 41, 12000)


def test_a_newer_state_version_asks_for_an_upgrade() -> None:
    state = {**_state(), "version": STATE_VERSION + 1}
    with pytest.raises(IncompatibleState, match=f"version {STATE_VERSION + 1} was written by a newer.*upgrade"):
        check_state(state, stream_identity(_open(), _opened()))


@pytest.mark.parametrize("version", [None, 0, "1", True, 1.0])
def test_a_state_without_a_valid_version_is_refused(version: object) -> None:
    state = {**_state(), "version": version}
    with pytest.raises(IncompatibleState, match="no valid version"):
        check_state(state, stream_identity(_open(), _opened()))


@pytest.mark.parametrize(
    "state", [None, [], "state", {"epoch": 1, "batch": 2}, {"kind": "torch.dataloader", "version": 1}]
)
def test_something_else_is_not_taken_for_a_state(state: object) -> None:
    with pytest.raises(IncompatibleState, match="not a prefetchd iterator state"):
        check_state(state, stream_identity(_open(), _opened()))


def test_a_state_without_its_stream_is_refused() -> None:
    state = _state()
    del state["stream"]
    with pytest.raises(IncompatibleState, match="no 'stream' settings"):
        check_state(state, stream_identity(_open(), _opened()))


@pytest.mark.parametrize(("epoch", "batch"), [(-1, 0), (0, -1), (0, 301), (0, "1"), (None, 0), (0, True), (1.5, 0)])
def test_a_position_outside_the_stream_is_refused(epoch: object, batch: object) -> None:
    state = {**_state(), "epoch": epoch, "batch": batch}
    with pytest.raises(IncompatibleState, match="position"):
        check_state(state, stream_identity(_open(), _opened()))


def test_the_end_of_an_epoch_is_a_position() -> None:
    """After the epoch's last batch, before StopIteration: the next `next()` ends the epoch."""
    assert check_state(_state(epoch=0, batch=300), stream_identity(_open(), _opened())) == ResumePoint(0, 300, 12000)


def test_the_error_is_a_prefetchd_error() -> None:
    assert issubclass(IncompatibleState, PrefetchdError)
    saved = copy.deepcopy(_state())
    with pytest.raises(PrefetchdError):
        check_state(saved, stream_identity(_open(seed=0), _opened()))


def test_a_shuffle_window_chosen_by_another_daemon_is_given_back_to_pin() -> None:
    """The one setting the daemon picks (from its budget): the stream is reopened with the saved one."""
    point = check_state(_state(), stream_identity(_open(), _opened(window=60000)))
    assert point == ResumePoint(3, 41, 12000)


@pytest.mark.parametrize("window", [None, -1, "12000", 1.5])
def test_a_state_without_a_valid_shuffle_window_is_refused(window: object) -> None:
    state = _state()
    state["stream"]["shuffle_window"] = window
    with pytest.raises(IncompatibleState, match="no valid shuffle_window"):
        check_state(state, stream_identity(_open(), _opened()))
