"""RecordIO (.rec, with or without .idx) reader: image records in, ImageRecordIter-shaped batches out.

Records are located once, at open: from the .idx when given (a few bytes per record), else by one
sequential framing pass over the .rec (cached per object version, so later streams skip it). Each epoch
then fetches its records as coalesced ranges of whole records, in the order the epoch needs them, and
hands each batch's raw bytes to the decode workers through a staging memfd; the workers write pixels,
labels and ids straight into the ring slot.
"""

from __future__ import annotations

import asyncio
import functools
import mmap
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from prefetchd_client.errors import ERROR_CLASSES, DaemonError, InvalidRequest
from prefetchd_client.protocol import Open

from ..config import Config
from ..decode.image import ImageOptions, options_from
from ..decode.pool import DecodePool, RingLease
from ..decode.staging import StagingPool
from ..decode.worker import DecodeJob, Failure, OutputRows
from ..fetch.router import SourceRouter
from ..fetch.scheduler import RangeRequest, RangeScheduler, fetching
from ..fetch.source import ObjectInfo
from ..formats import recordio
from ..plan.epoch import BatchSpec, EpochPlan
from ..ring.segment import Segment
from .base import ChunkUses, FillResult, ReaderShape, plan_for, run_to_completion, shuffle_window
from .idx import check_batching, open_all

_SCANNED: OrderedDict[tuple[str, str], NDArray[np.int64]] = OrderedDict()  # (url, version) → record offsets
_SCANNED_KEEP = 16
_REC_PROBE_BYTES = 8  # the first record's header: enough to learn the size and ETag in the same request
_INDEX_READ_BYTES = 8 << 20  # an .idx up to this size (~400k records) comes whole with the open


@dataclass(frozen=True, slots=True)
class RecordIOOptions:
    image: ImageOptions
    label_width: int
    skip_bad: bool
    preprocess_threads: int  # decode workers that serve the stream (0: all of them)


def parse_options(request: Open) -> RecordIOOptions:
    if "rec" not in request.sources or not set(request.sources) <= {"rec", "idx"}:
        given = sorted(request.sources)
        raise InvalidRequest(f"a recordio stream takes sources 'rec' and optionally 'idx', not {given}")
    decode = dict(request.decode)
    label_width = decode.pop("label_width", 1)
    skip_bad = decode.pop("skip_bad", False)
    threads = decode.pop("preprocess_threads", 0)
    if not isinstance(label_width, int) or isinstance(label_width, bool) or label_width < 1:
        raise InvalidRequest(f"label_width must be a positive integer, not {label_width!r}")
    if not isinstance(skip_bad, bool):
        raise InvalidRequest(f"skip_bad must be true or false, not {skip_bad!r}")
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 0:
        raise InvalidRequest(f"preprocess_threads must be 0 (all workers) or more, not {threads!r}")
    check_batching(request)
    return RecordIOOptions(options_from(decode), label_width, skip_bad, threads)


async def read_rest(router: SourceRouter, info: ObjectInfo, head: bytes) -> bytes:
    """The whole object, given its first bytes `head`: only the rest is read."""
    buffer = bytearray(info.size)
    buffer[: len(head)] = head
    if len(head) < info.size:
        await router.read_range(info, len(head), memoryview(buffer)[len(head) :])
    return bytes(buffer)


async def scan_offsets(router: SourceRouter, info: ObjectInfo, executor: Executor, config: Config) -> NDArray[np.int64]:
    """Every record's offset, by framing the whole object once (no .idx given); cached per object version.

    The object is fetched as the epochs fetch it (many ranges in flight, within the budget) and framed in
    order, in a thread, chunk by chunk as they arrive.
    """
    key = (info.url, info.version)
    cached = _SCANNED.get(key)
    if cached is not None:
        _SCANNED.move_to_end(key)
        return cached
    framer = recordio.RecordFramer(url=info.url)
    offsets: list[int] = []

    def frame(data: NDArray[np.uint8]) -> None:
        offsets.extend(record.offset for record in framer.feed(data.data))

    chunk = config.chunk_bytes
    count = -(-info.size // chunk)
    requests = (RangeRequest(k, info, k * chunk, min(chunk, info.size - k * chunk)) for k in range(count))
    scheduler = RangeScheduler(
        router.read_range, requests, concurrency=config.max_concurrency, budget_bytes=config.stream_budget_bytes
    )
    async with fetching(scheduler):
        for k in range(count):
            await run_to_completion(executor, functools.partial(frame, await scheduler.get(k)))
            scheduler.release(k)
    framer.finish()
    result = np.asarray(offsets, dtype=np.int64)
    _SCANNED[key] = result
    while len(_SCANNED) > _SCANNED_KEEP:
        _SCANNED.popitem(last=False)
    return result


@dataclass(frozen=True, slots=True)
class Chunks:
    """Consecutive records grouped into ranges of at most about `chunk_bytes`: the unit of fetching. A chunk
    holds the part's records that start in one `chunk_bytes` cell of the object."""

    of_record: NDArray[np.int64]  # chunk number of each record of the partition (relative numbering)
    start: NDArray[np.int64]  # byte offset of each chunk
    size: NDArray[np.int64]  # byte size of each chunk


def group_chunks(offsets: NDArray[np.int64], lengths: NDArray[np.int64], part: range, chunk_bytes: int) -> Chunks:
    if not len(part):
        empty = np.empty(0, dtype=np.int64)
        return Chunks(empty, empty, empty)
    starts = offsets[part.start : part.stop]
    ends = starts + lengths[part.start : part.stop]
    # the grid is the object's, not the part's: every part (any number of parts) cuts the same ranges
    # away from its ends, so ranks and later epochs with other parts find them in the epoch cache
    nominal = starts // chunk_bytes
    new_chunk = np.ones(len(starts), dtype=bool)
    new_chunk[1:] = nominal[1:] != nominal[:-1]
    of_record = np.cumsum(new_chunk) - 1
    first_rel = np.flatnonzero(new_chunk)
    last_rel = np.append(first_rel[1:] - 1, len(starts) - 1)
    return Chunks(
        of_record.astype(np.int64),
        starts[first_rel],
        ends[last_rel] - starts[first_rel],
    )


class RecordIOReader:
    """Serves one RecordIO stream."""

    fill_depth = 2  # while the workers decode one batch, the next one's records are staged
    epochs_overlap = False  # an epoch's fills use its own fetch schedule: they finish inside it
    decode_s = 0.0  # an instance's own once it decodes

    def __init__(
        self,
        request: Open,
        options: RecordIOOptions,
        objects: dict[str, ObjectInfo],
        offsets: NDArray[np.int64],
        part: range,
        *,
        router: SourceRouter,
        config: Config,
        executor: Executor,
        pool: DecodePool,
    ) -> None:
        self.request = request
        self.options = options
        self.rec = objects["rec"]
        self.offsets = offsets
        self.lengths = recordio.record_spans(offsets, self.rec.size, url=objects.get("idx", self.rec).url)
        self.part = part
        self._router = router
        self._config = config
        self._executor = executor
        self._pool = pool
        self._lease: RingLease | None = None
        self._staging: StagingPool | None = None
        self._segment_base = 0
        self.chunks = group_chunks(self.offsets, self.lengths, part, config.chunk_bytes)
        biggest = int(self.chunks.size.max()) if len(self.chunks.size) else 0
        if biggest * 2 > config.stream_budget_bytes:
            raise InvalidRequest(
                f"{self.rec.url} holds a record range of {biggest} bytes; stream_budget_bytes "
                f"({config.stream_budget_bytes}) must hold two of them",
                url=self.rec.url,
            )
        mean_record = max(1, int(self.lengths[part.start : part.stop].mean())) if len(part) else 1
        self.window_records = shuffle_window(
            request,
            max(1, config.stream_budget_bytes // 2 // mean_record),
            max(1, config.stream_budget_bytes // mean_record),
            records=len(part),
            record_bytes=mean_record,
            url=self.rec.url,
        )
        self.shape = ReaderShape(
            arrays=self._arrays(),
            batches_per_epoch=self.plan(0).batch_count,
            samples_per_epoch=len(part),
            objects=objects,
            shuffle_window=self.window_records if request.shuffle else 0,
        )

    @classmethod
    async def open(
        cls, request: Open, *, router: SourceRouter, config: Config, executor: Executor, pool: DecodePool
    ) -> RecordIOReader:
        options = parse_options(request)
        urls = [request.sources["rec"]] + ([request.sources["idx"]] if "idx" in request.sources else [])
        # one round trip: the .rec's size and version, and the .idx whole when it is not large
        opened = await open_all(router, urls, [_REC_PROBE_BYTES, _INDEX_READ_BYTES][: len(urls)])
        rec = opened[0][0]
        objects = {"rec": rec}
        if len(opened) == 2:
            index, text = opened[1]
            objects["idx"] = index
            text = await read_rest(router, index, text)
            offsets = await run_to_completion(executor, lambda: recordio.parse_index(text, url=index.url))
            part = recordio.index_partition(len(offsets), request.num_parts, request.part_index)
        else:
            offsets = await scan_offsets(router, rec, executor, config)
            begin, end = recordio.byte_partition(rec.size, request.num_parts, request.part_index)
            part = range(int(np.searchsorted(offsets, begin)), int(np.searchsorted(offsets, end)))
        return cls(request, options, objects, offsets, part, router=router, config=config, executor=executor, pool=pool)

    def _arrays(self) -> list[tuple[str, str, tuple[int, ...]]]:
        batch = self.request.batch_size
        width = self.options.label_width
        label_shape = (batch,) if width == 1 else (batch, width)
        return [
            ("data", np.dtype(self.options.image.dtype).str, (batch, *self.options.image.data_shape)),
            ("label", np.dtype("float32").str, label_shape),
            ("index", np.dtype("uint64").str, (batch,)),
        ]

    async def attach(self, segment_id: int, segment: Segment) -> None:
        """Map the stream's ring into its decode workers (before the ring is sealed)."""
        workers = self.options.preprocess_threads or self._pool.processes
        self._lease = await self._pool.lease_ring(segment, workers=workers)
        self._staging = StagingPool(self._lease)
        self._segment_base = np.frombuffer(segment.map, dtype=np.uint8, count=1).ctypes.data

    def detach(self) -> None:
        if self._staging is not None:
            self._staging.close()
            self._staging = None
        if self._lease is not None:
            self._lease.close()
            self._lease = None

    def plan(self, epoch: int) -> EpochPlan:
        return plan_for(self.request, self.part, epoch, self.window_records)

    @asynccontextmanager
    async def start_epoch(self, plan: EpochPlan, first_batch: int) -> AsyncIterator[RecordIOEpoch]:
        epoch = RecordIOEpoch(self, plan, first_batch)
        async with fetching(epoch.scheduler):
            yield epoch


class RecordIOEpoch:
    """One epoch: its fetch plan, and the batches it hands to the decode workers."""

    def __init__(self, reader: RecordIOReader, plan: EpochPlan, first_batch: int) -> None:
        self.reader = reader
        self.plan = plan
        records = plan.records_from(first_batch)
        chunks = reader.chunks.of_record[records - reader.part.start]
        self._uses = ChunkUses(chunks)
        need_order = self._uses.need_order
        c = reader.chunks
        requests = (RangeRequest(k, reader.rec, int(c.start[k]), int(c.size[k])) for k in need_order)
        config = reader._config
        self.scheduler = RangeScheduler(
            reader._router.read_range,
            requests,
            concurrency=config.max_concurrency,
            budget_bytes=config.stream_budget_bytes,
            cache=reader._router.cache_for(reader.rec),
            part_bytes=int(c.size.sum()),
        )

    async def fill(self, spec: BatchSpec, out: dict[str, NDArray[Any]]) -> FillResult | None:
        reader = self.reader
        lease, staging = reader._lease, reader._staging
        if lease is None or staging is None:
            raise DaemonError("the ring was not attached to the decode workers")
        records = spec.records
        chunks = reader.chunks.of_record[records - reader.part.start]
        buffers = {c: await self.scheduler.get(c) for c in np.unique(chunks).tolist()}
        lengths = reader.lengths[records]
        started = time.perf_counter()
        async with staging.area(int(lengths.sum())) as area:
            placed = _place(area.map, records, chunks, buffers, reader)
            failures = await self._decode(spec, out, lease, area.mapping, placed)
        reader.decode_s += time.perf_counter() - started
        self._uses.used(chunks, self.scheduler.release)
        if failures:
            return await self._handle_failures(spec, out, failures)
        return None

    async def _decode(
        self,
        spec: BatchSpec,
        out: dict[str, NDArray[Any]],
        lease: RingLease,
        staging: int,
        placed: list[tuple[int, int, int]],
    ) -> list[Failure]:
        reader = self.reader
        options = reader.options
        n = len(placed)
        pieces = [p for p in np.array_split(np.arange(n), min(len(lease.live) or 1, n)) if len(p)]
        data, label, index = out["data"], out["label"], out["index"]
        jobs = []
        seed = None
        if options.image.needs_rng:
            seed = int(np.random.SeedSequence([reader.request.seed, self.plan.epoch]).generate_state(1, np.uint64)[0])
        for rows in pieces:
            first = int(rows[0])
            jobs.append(
                DecodeJob(
                    job=lease.new_job_number(),
                    staging=staging,
                    records=tuple(placed[first : int(rows[-1]) + 1]),
                    url=reader.rec.url,
                    rows=OutputRows(
                        segment=lease.segment_id,
                        data_offset=data[first:].ctypes.data - reader._segment_base,
                        label_offset=label[first:].ctypes.data - reader._segment_base,
                        label_width=options.label_width,
                        index_offset=index[first:].ctypes.data - reader._segment_base,
                    ),
                    options=options.image,
                    seed=seed,
                    first_position=spec.seq * reader.request.batch_size + first,
                    skip_bad=options.skip_bad,
                )
            )
        results = await asyncio.gather(*(lease.run(job) for job in jobs))
        failures = []
        for rows, found in zip(pieces, results, strict=True):
            for failure in found:
                row = int(rows[0]) + failure.row if failure.row >= 0 else -1
                failures.append(Failure(row, failure.code, failure.message, failure.offset))
        return failures

    async def _handle_failures(
        self, spec: BatchSpec, out: dict[str, NDArray[Any]], failures: list[Failure]
    ) -> FillResult:
        url = self.reader.rec.url
        errors = [ERROR_CLASSES.get(f.code, DaemonError)(f.message, url=url, offset=f.offset) for f in failures]
        bad = {f.row for f in failures}
        size = spec.valid + spec.pad
        good = [row for row in range(size) if row not in bad]
        if not self.reader.options.skip_bad or -1 in bad or not good:
            raise errors[0]
        # skipped rows leave the batch: the good rows move up and the tail repeats them, reported as padding
        order = np.resize(np.asarray(good, dtype=np.int64), size)
        await run_to_completion(self.reader._executor, lambda: _take_rows(out, order, size))
        valid = sum(1 for row in good if row < spec.valid)
        return FillResult(valid, size - valid, errors)


def _take_rows(out: dict[str, NDArray[Any]], order: NDArray[np.int64], size: int) -> None:
    for array in out.values():
        array[:size] = array[order]


def _place(
    staging: mmap.mmap,
    records: NDArray[np.int64],
    chunks: NDArray[np.int64],
    buffers: dict[int, NDArray[np.uint8]],
    reader: RecordIOReader,
) -> list[tuple[int, int, int]]:
    """Copy each record's bytes into `staging`; returns (offset in staging, size, offset in the object) each.

    Records follow one another in the file (a record's span runs to the next one's offset), so a run of
    consecutive records within one chunk is copied as one slice: an unshuffled batch is one or two copies,
    not one per record (a Python loop of 100 copies was a third of the daemon's CPU on 224x224 JPEG).
    """
    if not len(records):
        return []
    offsets, sizes = reader.offsets[records], reader.lengths[records]
    positions = np.cumsum(sizes) - sizes
    breaks = np.flatnonzero((np.diff(records) != 1) | (np.diff(chunks) != 0)) + 1
    chunk_starts = reader.chunks.start
    for first, last in zip([0, *breaks.tolist()], [*(breaks - 1).tolist(), len(records) - 1], strict=True):
        chunk = int(chunks[first])
        local = int(offsets[first]) - int(chunk_starts[chunk])
        start, stop = int(positions[first]), int(positions[last] + sizes[last])
        staging[start:stop] = buffers[chunk].data[local : local + stop - start]
    return list(zip(positions.tolist(), sizes.tolist(), offsets.tolist(), strict=True))
