"""The IDX reader on its own, against numpy's reading of the same file: every batch of every epoch, exactly.

Files are larger than what the open reads (the header and the first 256 KiB of records), chunks are a few
records, and batches cross chunk boundaries, the head's end and partition edges, so that each of the fill's
paths (the head, one chunk, several; consecutive records or shuffled ones; pads) runs against the reference.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from prefetchd.config import Config
from prefetchd.fetch.router import SourceRouter
from prefetchd.plan.epoch import partition
from prefetchd.readers.idx import IdxReader
from prefetchd_client.protocol import Open

from ..idx_files import write_idx

RECORDS = 130
SIDE = 48  # 2,304-byte records: the open's 256 KiB head holds the first 113 of them
_rng = np.random.default_rng(7)
IMAGES = _rng.integers(0, 256, size=(RECORDS, SIDE, SIDE), dtype=np.uint8)
LABELS = _rng.integers(0, 10, size=RECORDS, dtype=np.uint8)


def _epochs(
    directory: Path, request: Open, chunk_records: int, epochs: int
) -> list[list[tuple[NDArray[Any], NDArray[Any], NDArray[Any], int]]]:
    """Each epoch's batches as (data, label, index, pad), read through a reader over local files.

    The arrays hold the batch's records and pads only: a "keep" epoch's last batch is short.
    """
    config = Config(
        socket_path=directory / "unused.sock",
        chunk_bytes=chunk_records * SIDE * SIDE,
        min_chunk_bytes=SIDE * SIDE,
        max_concurrency=3,
        stream_budget_bytes=4 * chunk_records * SIDE * SIDE,
        cache_bytes=0,
    )

    async def read() -> list[list[tuple[NDArray[Any], NDArray[Any], NDArray[Any], int]]]:
        with ThreadPoolExecutor(1) as executor:
            reader = await IdxReader.open(request, router=SourceRouter(config), config=config, executor=executor)
            out = []
            for epoch in range(epochs):
                plan = reader.plan(epoch)
                batches = []
                async with reader.start_epoch(plan, 0) as filling:
                    for seq in range(plan.batch_count):
                        spec = plan.batch(seq)
                        arrays = {name: np.zeros(shape, np.dtype(dtype)) for name, dtype, shape in reader.shape.arrays}
                        await filling.fill(spec, arrays)
                        n = len(spec.records)
                        batches.append((arrays["data"][:n], arrays["label"][:n], arrays["index"][:n], spec.pad))
                out.append(batches)
            return out

    return asyncio.run(read())


@settings(max_examples=40, deadline=None)
@given(
    batch_size=st.integers(1, 40),
    chunk_records=st.integers(1, 9),
    num_parts=st.integers(1, 3),
    part_pick=st.integers(0, 2),
    shuffle=st.booleans(),
    last_batch=st.sampled_from(["discard", "keep", "pad"]),
)
def test_every_batch_is_the_records_its_plan_names_scaled_as_mxnet_scales_them(
    tmp_path_factory: Any,
    batch_size: int,
    chunk_records: int,
    num_parts: int,
    part_pick: int,
    shuffle: bool,
    last_batch: str,
) -> None:
    directory = tmp_path_factory.mktemp("idx")
    image, label = write_idx(directory / "images", IMAGES), write_idx(directory / "labels", LABELS)
    part_index = part_pick % num_parts
    request = Open(
        format="idx",
        sources={"image": str(image), "label": str(label)},
        batch_size=batch_size,
        shuffle=shuffle,
        seed=3,
        reshuffle=True,
        num_parts=num_parts,
        part_index=part_index,
        last_batch=last_batch,
    )
    part = partition(RECORDS, num_parts, part_index)
    # each epoch reads each record of the partition once (bar the partial batch "discard" drops)
    per_epoch = len(part) - (len(part) % batch_size if last_batch == "discard" else 0)
    for batches in _epochs(directory, request, chunk_records, epochs=2):
        seen: list[int] = []
        for data, labels, index, pad in batches:
            records = index.astype(np.int64)
            assert ((records >= part.start) & (records < part.stop)).all()
            np.testing.assert_array_equal(data[:, 0], IMAGES[records].astype(np.float32) / 256)
            np.testing.assert_array_equal(labels, LABELS[records].astype(np.float32))
            seen.extend(records[: len(records) - pad].tolist())
        assert len(seen) == len(set(seen)) == per_epoch
