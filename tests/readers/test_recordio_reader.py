"""Pieces of the RecordIO reader that stand alone."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from prefetchd.fetch.local import LocalSource
from prefetchd.formats.recordio import index_partition
from prefetchd.readers.recordio import group_chunks, read_rest


def test_an_index_longer_than_the_first_read_is_completed_from_where_it_stopped(tmp_path: Path) -> None:
    data = b"".join(f"{i}\t{i * 64}\n".encode() for i in range(5000))
    path = tmp_path / "data.idx"
    path.write_bytes(data)

    async def scenario() -> tuple[bytes, bytes]:
        source = LocalSource()
        info, head = await source.open(str(path), 1000)
        return await read_rest(source, info, head), await read_rest(source, info, data)  # type: ignore[arg-type]

    partial, whole = asyncio.run(scenario())
    assert partial == data and whole == data


def _ranges(offsets: np.ndarray, lengths: np.ndarray, part: range, chunk_bytes: int) -> set[tuple[int, int]]:
    chunks = group_chunks(offsets, lengths, part, chunk_bytes)
    return set(zip(chunks.start.tolist(), chunks.size.tolist(), strict=True))


@settings(max_examples=100, deadline=None)
@given(
    lengths=st.lists(st.integers(12, 5000), min_size=1, max_size=300),
    num_parts=st.integers(1, 6),
    chunk_bytes=st.integers(4096, 64 << 10),
)
def test_every_range_no_part_boundary_cuts_is_the_same_range_for_any_number_of_parts(
    lengths: list[int], num_parts: int, chunk_bytes: int
) -> None:
    """The epoch cache is keyed by range: ranks, and epochs after a change of the number of ranks, meet in it."""
    spans = np.array(lengths, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(spans)[:-1]])
    parts = [index_partition(len(spans), num_parts, i) for i in range(num_parts)]
    owner = np.empty(len(spans), dtype=np.int64)
    for i, part in enumerate(parts):
        owner[part.start : part.stop] = i
    cut = set().union(*(_ranges(offsets, spans, part, chunk_bytes) for part in parts))
    for start, size in _ranges(offsets, spans, range(len(spans)), chunk_bytes):
        records = np.flatnonzero((offsets >= start) & (offsets < start + size))
        if len(set(owner[records].tolist())) == 1:
            assert (start, size) in cut
