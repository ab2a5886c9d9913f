"""Pieces of the RecordIO reader that stand alone."""

from __future__ import annotations

import asyncio
from pathlib import Path

from prefetchd.fetch.local import LocalSource
from prefetchd.readers.recordio import read_rest


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
