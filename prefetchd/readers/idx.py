"""IDX (MNIST) reader: an image file and a label file in, MNISTIter-shaped batches out.

The label partition (a few bytes per sample) is read whole at open. Images are fetched in chunks of
whole records, in the order the epoch first needs them, and each chunk is dropped as soon as the epoch
has used every record in it. Shuffling is windowed so that one window of chunks is resident at a time;
a partition that fits half the stream's byte budget is shuffled globally.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from prefetchd_client.errors import InvalidRequest
from prefetchd_client.protocol import Open

from ..config import Config
from ..decode.mnist import decode_images, decode_labels
from ..fetch.policy import choose_chunk_bytes
from ..fetch.router import SourceRouter
from ..fetch.scheduler import RangeRequest, RangeScheduler, fetching
from ..fetch.source import ObjectInfo
from ..formats import idx
from ..plan.epoch import LAST_BATCH_MODES, BatchSpec, EpochPlan, partition, plan_epoch
from ..ring.segment import Segment
from .base import ChunkUses, ReaderShape, plan_for, run_to_completion, shuffle_window

OUTPUT_DTYPES = ("float32", "float16", "float64")
INLINE_DECODE_BYTES = 1 << 20  # smaller batches decode on the loop (~0.1 ms for 100 MNIST images)
_IMAGE_HEAD_BYTES = 256 << 10  # the header and the first records: an unshuffled stream's first batches need no
# second round trip (330 Fashion-MNIST images; ~3 ms more of the open's GET at 90 MB/s)
_LABEL_READ_BYTES = 1 << 20  # a label file up to this size comes whole with the open


@dataclass(frozen=True, slots=True)
class IdxOptions:
    flat: bool
    dtype: str


def parse_options(request: Open) -> IdxOptions:
    if set(request.sources) != {"image", "label"}:
        raise InvalidRequest(f"an idx stream takes sources 'image' and 'label', not {sorted(request.sources)}")
    unknown = sorted(set(request.decode) - {"flat", "dtype"})
    if unknown:
        raise InvalidRequest(f"unknown idx decode options {unknown} (known: flat, dtype)")
    flat = request.decode.get("flat", False)
    dtype = request.decode.get("dtype", "float32")
    if not isinstance(flat, bool):
        raise InvalidRequest(f"flat must be true or false, not {flat!r}")
    if dtype not in OUTPUT_DTYPES:
        raise InvalidRequest(f"dtype must be one of {OUTPUT_DTYPES}, not {dtype!r}")
    check_batching(request)
    return IdxOptions(flat, dtype)


def check_batching(request: Open) -> None:
    if request.batch_size < 1:
        raise InvalidRequest(f"batch_size must be at least 1, not {request.batch_size}")
    if request.num_parts < 1 or not 0 <= request.part_index < request.num_parts:
        raise InvalidRequest(
            f"part_index must be in [0, num_parts): got part_index={request.part_index}, num_parts={request.num_parts}"
        )
    if request.last_batch not in LAST_BATCH_MODES:
        raise InvalidRequest(f"last_batch must be one of {LAST_BATCH_MODES}, not {request.last_batch!r}")
    if request.epoch < 0 or request.batch < 0:
        raise InvalidRequest("epoch and batch must not be negative")


async def read_header(router: SourceRouter, info: ObjectInfo, head: bytes) -> idx.IdxHeader:
    """The header, from the object's first bytes `head` (read again, longer, if 15 dimensions need it)."""
    probe = head
    needed = idx.header_bytes_needed(probe) if len(probe) >= idx.PREAMBLE_BYTES else len(probe)
    if needed > len(probe) and needed <= info.size:
        longer = bytearray(needed)
        await router.read_range(info, 0, memoryview(longer))
        probe = bytes(longer)
    header = idx.parse_header(probe, url=info.url)
    idx.check_size(header, info.size, url=info.url)
    return header


async def open_all(router: SourceRouter, urls: list[str], head_bytes: list[int]) -> list[tuple[ObjectInfo, bytes]]:
    """Stat each object and read its first bytes, all at once (one round trip); the first failure is raised."""
    results = await asyncio.gather(
        *(router.open(url, size) for url, size in zip(urls, head_bytes, strict=True)), return_exceptions=True
    )
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return [r for r in results if isinstance(r, tuple)]


class IdxReader:
    """Serves one IDX stream."""

    fill_depth = 1  # decoding an IDX batch is a scaled copy; one at a time keeps the order simple
    epochs_overlap = False  # an epoch's fills use its own fetch schedule: they finish inside it
    decode_s = 0.0  # an instance's own once it decodes

    def __init__(
        self,
        request: Open,
        options: IdxOptions,
        objects: dict[str, ObjectInfo],
        image_header: idx.IdxHeader,
        labels: NDArray[Any],
        part: range,
        *,
        router: SourceRouter,
        config: Config,
        executor: Executor,
        image_head: bytes = b"",
    ) -> None:
        self.request = request
        self.options = options
        self.image = objects["image"]
        self.header = image_header
        self.labels = labels  # the partition's labels, in record order
        self.part = part
        self._router = router
        self._config = config
        self._executor = executor
        record_bytes = image_header.record_bytes
        part_bytes = len(part) * record_bytes
        chunk_bytes = choose_chunk_bytes(
            part_bytes,
            concurrency=config.max_concurrency,
            max_chunk_bytes=config.chunk_bytes,
            min_chunk_bytes=config.min_chunk_bytes,
            granule=record_bytes,
        )
        self.chunk_records = max(1, chunk_bytes // record_bytes)
        # the records the open's GET brought whole: records [0, len(head_rows)) of the object
        first = image_header.record_offset(0)
        head_count = min(image_header.count, max(0, len(image_head) - first) // record_bytes) if record_bytes else 0
        self.head_rows = np.frombuffer(image_head, np.uint8, head_count * record_bytes, first).reshape(
            head_count, record_bytes
        )
        window_chunks = max(1, config.stream_budget_bytes // 2 // (self.chunk_records * record_bytes))
        self.window_records = shuffle_window(
            request,
            window_chunks * self.chunk_records,
            max(window_chunks * self.chunk_records, config.stream_budget_bytes // max(1, record_bytes)),
            records=len(part),
            record_bytes=record_bytes,
            url=self.image.url,
        )
        self.shape = ReaderShape(
            arrays=self._arrays(),
            batches_per_epoch=plan_epoch(
                part,
                epoch=0,
                batch_size=request.batch_size,
                shuffle=False,
                seed=0,
                reshuffle=False,
                last_batch=request.last_batch,
                window=1,
            ).batch_count,
            samples_per_epoch=len(part),
            objects=objects,
            shuffle_window=self.window_records if request.shuffle else 0,
        )

    @classmethod
    async def open(cls, request: Open, *, router: SourceRouter, config: Config, executor: Executor) -> IdxReader:
        options = parse_options(request)
        image_url, label_url = request.sources["image"], request.sources["label"]
        # one round trip: the image file's header, and the whole label file when it is small (60 kB for MNIST)
        (image, image_head), (label, label_head) = await open_all(
            router, [image_url, label_url], [_IMAGE_HEAD_BYTES, _LABEL_READ_BYTES]
        )
        image_header, label_header = await asyncio.gather(
            read_header(router, image, image_head), read_header(router, label, label_head)
        )
        idx.check_pair(image_header, label_header, image_url=image_url, label_url=label_url)
        part = partition(image_header.count, request.num_parts, request.part_index)
        labels = np.empty(len(part), dtype=label_header.dtype)
        start = label_header.record_offset(part.start)
        wanted = labels.view(np.uint8)
        if start + len(wanted) <= len(label_head):
            wanted[:] = np.frombuffer(label_head, dtype=np.uint8, count=len(wanted), offset=start)
        elif len(part):
            await router.read_range(label, start, wanted.data)
        objects = {"image": image, "label": label}
        return cls(
            request,
            options,
            objects,
            image_header,
            labels,
            part,
            router=router,
            config=config,
            executor=executor,
            image_head=image_head,
        )

    async def attach(self, segment_id: int, segment: Segment) -> None:
        """Nothing to do: IDX batches are decoded in the daemon's own threads."""

    def detach(self) -> None:
        """Nothing to release."""

    def _arrays(self) -> list[tuple[str, str, tuple[int, ...]]]:
        batch = self.request.batch_size
        record_shape = self.header.record_shape
        if self.options.flat:
            data_shape: tuple[int, ...] = (batch, math.prod(record_shape))
        elif len(record_shape) == 2:
            data_shape = (batch, 1, *record_shape)  # MNISTIter's (B, 1, rows, cols)
        else:
            data_shape = (batch, *record_shape)
        return [
            ("data", np.dtype(self.options.dtype).str, data_shape),
            ("label", np.dtype("float32").str, (batch,)),
            ("index", np.dtype("uint64").str, (batch,)),
        ]

    def plan(self, epoch: int) -> EpochPlan:
        return plan_for(self.request, self.part, epoch, self.window_records)

    @asynccontextmanager
    async def start_epoch(self, plan: EpochPlan, first_batch: int) -> AsyncIterator[IdxEpoch]:
        epoch = IdxEpoch(self, plan, first_batch)
        async with fetching(epoch.scheduler):
            yield epoch


class IdxEpoch:
    """One epoch's fetch plan and the bookkeeping that drops each chunk after its last use."""

    def __init__(self, reader: IdxReader, plan: EpochPlan, first_batch: int) -> None:
        self.reader = reader
        records = plan.records_from(first_batch)
        chunks = records // reader.chunk_records
        self._uses = ChunkUses(chunks)
        # an unshuffled order: every batch without pads is a run of consecutive records
        self._consecutive = bool(np.all(np.diff(plan.order) == 1))
        need_order = self._uses.need_order
        header, cr = reader.header, reader.chunk_records
        requests = (
            RangeRequest(
                c,
                reader.image,
                header.record_offset(c * cr),
                (min(header.count, (c + 1) * cr) - c * cr) * header.record_bytes,
            )
            for c in need_order
        )
        config = reader._config
        self.scheduler = RangeScheduler(
            reader._router.read_range,
            requests,
            concurrency=config.max_concurrency,
            budget_bytes=config.stream_budget_bytes,
            cache=reader._router.cache_for(reader.image),
            part_bytes=len(reader.part) * header.record_bytes,
        )

    async def fill(self, spec: BatchSpec, out: dict[str, NDArray[Any]]) -> None:
        if self._consecutive and spec.pad == 0 and len(spec.records):
            await self._fill_consecutive(int(spec.records[0]), len(spec.records), out)
            return
        reader = self.reader
        records = spec.records
        chunks = records // reader.chunk_records
        n = len(records)
        in_head = n > 0 and int(records.max()) < len(reader.head_rows)  # no need to wait for any chunk
        needed = [] if in_head else sorted(set(chunks.tolist()))
        buffers = {c: await self.scheduler.get(c) for c in needed}

        def decode() -> None:
            if in_head:
                rows = reader.head_rows[records]
            else:
                rows = gather_records(buffers, records, chunks, reader.chunk_records, reader.header.record_bytes)
            decode_images(rows.view(reader.header.dtype), out["data"][:n])
            decode_labels(reader.labels[records - reader.part.start], out["label"][:n])
            out["index"][:n] = records

        await self._decode(n, decode)
        self._uses.used(chunks, self.scheduler.release)

    async def _fill_consecutive(self, first: int, n: int, out: dict[str, NDArray[Any]]) -> None:
        """Records `first` .. `first + n - 1` (an unshuffled batch): decoded straight from their chunks' buffers.

        The general path's per-record index arithmetic, gathers and counting cost ~100 µs of the loop's time a
        batch, more than the decode itself (37 µs for 100 MNIST images); on a trainer's two cores the daemon's
        time is the trainer's.
        """
        reader = self.reader
        cr, stop = reader.chunk_records, first + n
        pieces = [(c, max(first, c * cr), min(stop, (c + 1) * cr)) for c in range(first // cr, (stop - 1) // cr + 1)]
        in_head = stop <= len(reader.head_rows)  # no need to wait for any chunk
        buffers = [] if in_head else [await self.scheduler.get(c) for c, _, _ in pieces]

        def decode() -> None:
            data, dtype, record_bytes = out["data"], reader.header.dtype, reader.header.record_bytes
            if in_head:
                decode_images(reader.head_rows[first:stop].view(dtype), data[:n])
            for buffer, (c, lo, hi) in zip(buffers, pieces, strict=False):
                rows = buffer.reshape(-1, record_bytes)[lo - c * cr : hi - c * cr]
                decode_images(rows.view(dtype), data[lo - first : hi - first])
            start = first - reader.part.start
            decode_labels(reader.labels[start : start + n], out["label"][:n])
            out["index"][:n] = np.arange(first, stop, dtype=np.uint64)

        await self._decode(n, decode)
        self._uses.used_counts([(c, hi - lo) for c, lo, hi in pieces], self.scheduler.release)

    async def _decode(self, n: int, decode: Callable[[], None]) -> None:
        """Run `decode` for a batch of `n` records: on the loop when it is small, else on a thread."""
        reader = self.reader
        started = time.perf_counter()
        if n * reader.header.record_bytes <= INLINE_DECODE_BYTES:
            decode()
        else:
            await run_to_completion(reader._executor, decode)
        reader.decode_s += time.perf_counter() - started


def gather_records(
    buffers: dict[int, NDArray[np.uint8]],
    records: NDArray[np.int64],
    chunks: NDArray[np.int64],
    chunk_records: int,
    record_bytes: int,
) -> NDArray[Any]:
    """Copy `records` out of their chunk buffers into one (n, record_bytes) uint8 array, in order."""
    rows = np.empty((len(records), record_bytes), dtype=np.uint8)
    for c, buffer in buffers.items():
        mask = chunks == c
        rows[mask] = buffer.reshape(-1, record_bytes)[records[mask] - c * chunk_records]
    return rows
