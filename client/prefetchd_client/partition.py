"""Which part of the dataset this trainer reads: MXNet's `num_parts`/`part_index`, or a launcher's rank.

Distributed launchers speak of a `rank` in a `world_size`; MXNet's iterators of `part_index` in
`num_parts`. The iterators take either pair (the same thing under two names) and refuse two that disagree.
The environment is read only when asked (`partition_from_env()`): a `RANK` left in a shell, or one meant for
another framework, must not split a dataset silently.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from .errors import InvalidRequest


def choose_partition(
    *, num_parts: int | None, part_index: int | None, world_size: int | None, rank: int | None
) -> tuple[int, int]:
    """(num_parts, part_index) from whichever names were given; the whole dataset when none was."""
    parts = _one_of("num_parts", num_parts, "world_size", world_size, default=1)
    index = _one_of("part_index", part_index, "rank", rank, default=0)
    if parts < 1 or not 0 <= index < parts:
        aliases = num_parts is None and part_index is None and (rank is not None or world_size is not None)
        index_name, parts_name = ("rank", "world_size") if aliases else ("part_index", "num_parts")  # the caller's
        raise InvalidRequest(
            f"{index_name} must be in [0, {parts_name}): got {index_name}={index}, {parts_name}={parts}"
        )
    return parts, index


def _one_of(name: str, value: int | None, alias: str, alias_value: int | None, *, default: int) -> int:
    for label, given in ((name, value), (alias, alias_value)):
        if given is not None and (isinstance(given, bool) or not isinstance(given, int)):
            raise InvalidRequest(f"{label} must be an integer, not {given!r}")
    if value is not None and alias_value is not None and value != alias_value:
        raise InvalidRequest(f"{name}={value} and {alias}={alias_value} disagree; they are one setting, give one")
    if value is not None:
        return value
    return alias_value if alias_value is not None else default


def partition_from_env(environ: Mapping[str, str] | None = None) -> dict[str, int]:
    """`{"rank": $RANK, "world_size": $WORLD_SIZE}`, as torchrun (and torch.distributed's other launchers) set
    them: `idx_iter(..., **partition_from_env())`.

    The global rank, not `LOCAL_RANK`: one daemon serves a host, but the dataset is split over every trainer
    of the job. Both variables must be set; anything else is an `InvalidRequest` saying which.
    """
    env = os.environ if environ is None else environ
    values = {}
    for key, variable in (("rank", "RANK"), ("world_size", "WORLD_SIZE")):
        text = env.get(variable)
        if text is None:
            raise InvalidRequest(
                f"${variable} is not set: partition_from_env() reads RANK and WORLD_SIZE as distributed "
                "launchers set them; pass rank= and world_size= (or part_index= and num_parts=) yourself otherwise"
            )
        try:
            values[key] = int(text)
        except ValueError:
            raise InvalidRequest(f"${variable}={text!r} is not an integer") from None
    choose_partition(num_parts=None, part_index=None, **values)  # a rank outside the world is refused here
    return values
