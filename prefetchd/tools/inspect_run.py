"""`prefetchd inspect`'s I/O: the object is read through the daemon's own fetch layer, as a stream reads it.

An `s3://` URL goes through a `SourceRouter`, with the daemon's S3 settings and retry policy; a path is read
with `LocalSource`, as the daemon reads it; `RangeScheduler`
keeps `max_concurrency` ranged GETs in flight within the stream budget, and the ranges are consumed in order,
each handed to the pure summary code (`inspect.py`) in a worker thread so that the loop keeps the GETs going.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from prefetchd_client.errors import InvalidRequest, ObjectNotFound

from ..config import Config
from ..fetch.local import LocalSource
from ..fetch.policy import choose_chunk_bytes
from ..fetch.router import SourceRouter
from ..fetch.scheduler import RangeRequest, RangeScheduler, fetching
from ..fetch.source import ObjectInfo, Source, scheme_of
from .inspect import (
    Format,
    IdxSummary,
    RecordIOSummary,
    RecordScan,
    detect_format,
    finish_recordio,
    index_url_for,
    sorted_histogram,
    summarize_idx_header,
    tally_labels,
)
from .progress import ProgressBar

HEAD_BYTES = 64 << 10  # the GET that opens the object: an IDX header (1,024 bytes at most) and then some
INDEX_HEAD_BYTES = 8 << 20  # an .idx this small (~400k records) comes whole with its open


async def inspect_url(url: str, config: Config, *, label_width: int, bar: ProgressBar) -> IdxSummary | RecordIOSummary:
    """The object's summary; `InvalidRequest` when the URL cannot name one (bad scheme, no such object)."""
    config = replace(config, cache_bytes=0, cache_dir=None)  # one pass: an epoch cache would only hold memory
    if scheme_of(url) != "s3":  # an unknown scheme is refused here, before any client is made
        return await _inspect(LocalSource(), url, config, label_width, bar)  # a path needs no S3 client
    async with SourceRouter(config) as router:
        return await _inspect(router, url, config, label_width, bar)


async def _inspect(
    source: Source, url: str, config: Config, label_width: int, bar: ProgressBar
) -> IdxSummary | RecordIOSummary:
    try:
        info, head = await source.open(url, HEAD_BYTES)
    except ObjectNotFound as exc:  # the argument names nothing: a usage error, not a failure midway
        raise InvalidRequest(str(exc), url=url) from exc
    if detect_format(url, head) is Format.IDX:
        return await _inspect_idx(source, config, info, head, bar)
    return await _inspect_recordio(source, config, info, label_width, bar)


async def _inspect_idx(source: Source, config: Config, info: ObjectInfo, head: bytes, bar: ProgressBar) -> IdxSummary:
    """The header; for a label file (one dimension) the labels are read too, for their histogram."""
    header = summarize_idx_header(info.url, info.size, head)
    labels = None
    if len(header.dims) == 1:
        counts: Counter[str] = Counter()

        def tally(chunk: memoryview) -> None:
            tally_labels(np.frombuffer(chunk, dtype=header.dtype), counts)

        await read_in_order(source, config, info, header.header_bytes, tally, bar, granule=header.dtype.itemsize)
        labels = sorted_histogram(counts)
    return IdxSummary(info.url, info.size, header, head[2], labels)


async def _inspect_recordio(
    source: Source, config: Config, info: ObjectInfo, label_width: int, bar: ProgressBar
) -> RecordIOSummary:
    """Every record framed and its labels counted; then the `.idx` beside it, if any, checked against them."""
    index_url = index_url_for(info.url)
    index_text = None
    if index_url is not None:
        try:
            index_text = await read_whole(source, index_url)
        except ObjectNotFound:
            index_text = None
    scan = RecordScan(info.url, label_width=label_width)
    await read_in_order(source, config, info, 0, scan.feed, bar)
    return finish_recordio(scan, info.size, index_text, index_url)


async def read_whole(source: Source, url: str) -> bytes:
    info, head = await source.open(url, INDEX_HEAD_BYTES)
    if len(head) == info.size:
        return head
    buffer = bytearray(info.size)
    buffer[: len(head)] = head
    await source.read_range(info, len(head), memoryview(buffer)[len(head) :])
    return bytes(buffer)


async def read_in_order(
    source: Source,
    config: Config,
    info: ObjectInfo,
    start: int,
    consume: Callable[[memoryview], None],
    bar: ProgressBar,
    *,
    granule: int = 1,
) -> None:
    """Hand the object's bytes from `start` on to `consume`, in order, range by range, many ranges in flight."""
    size = info.size - start
    chunk = choose_chunk_bytes(
        size,
        concurrency=config.max_concurrency,
        max_chunk_bytes=config.chunk_bytes,
        min_chunk_bytes=config.min_chunk_bytes,
        granule=granule,
    )
    count = -(-size // chunk)
    requests = (RangeRequest(k, info, start + k * chunk, min(chunk, size - k * chunk)) for k in range(count))
    scheduler = RangeScheduler(
        source.read_range, requests, concurrency=config.max_concurrency, budget_bytes=config.stream_budget_bytes
    )
    name = info.url.rstrip("/").rsplit("/", 1)[-1]
    with bar(f"reading {name}", size) as advance:
        async with fetching(scheduler):
            for k in range(count):
                buffer = await scheduler.get(k)
                await asyncio.to_thread(consume, buffer.data)
                scheduler.release(k)
                advance(buffer.size)
