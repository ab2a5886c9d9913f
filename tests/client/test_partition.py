"""A trainer's part: MXNet's num_parts/part_index or a launcher's world_size/rank, and RANK/WORLD_SIZE on request."""

from __future__ import annotations

import pytest

from prefetchd_client import InvalidRequest, idx_iter, partition_from_env
from prefetchd_client.partition import choose_partition


@pytest.mark.parametrize(
    ("given", "chosen"),
    [
        ({}, (1, 0)),
        ({"num_parts": 4, "part_index": 3}, (4, 3)),
        ({"world_size": 4, "rank": 3}, (4, 3)),
        ({"num_parts": 4, "rank": 2}, (4, 2)),
        ({"num_parts": 4, "world_size": 4, "part_index": 1, "rank": 1}, (4, 1)),
    ],
)
def test_either_name_picks_the_part(given: dict[str, int], chosen: tuple[int, int]) -> None:
    names = {"num_parts": None, "part_index": None, "world_size": None, "rank": None} | given
    assert choose_partition(**names) == chosen


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"num_parts": 4, "world_size": 2}, "num_parts=4 and world_size=2 disagree"),
        ({"part_index": 0, "rank": 1}, "part_index=0 and rank=1 disagree"),
        ({"world_size": 2, "rank": 2}, r"rank must be in \[0, world_size\): got rank=2, world_size=2"),
        ({"rank": 1}, "got rank=1, world_size=1"),
        ({"world_size": 0}, "got rank=0, world_size=0"),
        ({"rank": "1"}, "rank must be an integer, not '1'"),
        ({"world_size": True}, "world_size must be an integer, not True"),
    ],
)
def test_a_part_that_cannot_be_meant_is_refused_before_connecting(given: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        idx_iter("s3://bucket/images", "s3://bucket/labels", batch_size=1, socket_path="/nonexistent/socket", **given)


def test_the_environment_is_read_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert choose_partition(num_parts=None, part_index=None, world_size=None, rank=None) == (1, 0)
    assert partition_from_env() == {"rank": 2, "world_size": 3}


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"WORLD_SIZE": "4"}, r"\$RANK is not set"),
        ({"RANK": "0"}, r"\$WORLD_SIZE is not set"),
        ({"RANK": "one", "WORLD_SIZE": "4"}, r"\$RANK='one' is not an integer"),
        ({"RANK": "4", "WORLD_SIZE": "4"}, "got rank=4, world_size=4"),
    ],
)
def test_a_missing_or_bad_variable_says_which(environ: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        partition_from_env(environ)
