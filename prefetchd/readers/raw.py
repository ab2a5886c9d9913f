"""Raw bytes of one object, `batch_size` bytes per batch, read from S3 straight into the ring slots.

No decode and no copy: each batch is read by ranged GETs whose bodies land in the client's slot. The ring
is the fetch window, so its size comes from the endpoint's first-byte latency, measured by the GET that
opens the object (`fetch/window.py`): a far endpoint gets more slots in flight, a near one no more shared
memory than the client's `prefetch` asks. This is what a user reading their own format wants, and the
measure of the fetch path alone.

With the epoch cache on, a stream whose part of the object fits in it (RAM and disk tier together) goes
through it a batch at a time, so that epoch 2 onward, and other streams with the same batch size, read
nothing from S3; that costs one copy per batch (into the slot, on a thread). A part that cannot fit is read
straight into the ring as without a cache: kept without eviction, only its first batches would ever hit,
and every other batch would still pay a fresh buffer and a copy for nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
from numpy.typing import NDArray

from prefetchd_client.errors import InvalidRequest
from prefetchd_client.protocol import Open

from ..config import Config
from ..fetch.cache import ChunkCache
from ..fetch.policy import choose_chunk_bytes
from ..fetch.router import SourceRouter
from ..fetch.source import ObjectInfo, scheme_of
from ..fetch.window import CONNECTION_BYTES_PER_S, Window, first_byte_seconds, plan_window
from ..plan.epoch import BatchSpec, EpochPlan, partition, plan_epoch
from ..ring.segment import Segment
from .base import FillResult, ReaderShape, run_to_completion
from .idx import INLINE_DECODE_BYTES, check_batching

_MAX_PIECES_PER_BATCH = 8  # a batch is read as at most this many ranges


class RawReader:
    """Serves one object's bytes in blocks of `batch_size`."""

    def __init__(
        self,
        request: Open,
        info: ObjectInfo,
        config: Config,
        router: SourceRouter,
        executor: Executor,
        head: bytes = b"",
        ttfb_s: float = 0.0,
    ) -> None:
        self.request = request
        self.info = info
        self._head = head  # the object's first bytes, read with the open: pieces inside them need no GET
        self.block = request.batch_size
        self._router = router
        self._executor = executor
        self.fill_depth = config.max_concurrency
        self.epochs_overlap = True  # a fill needs nothing of its epoch: the next epoch's GETs go while this one's end
        self.decode_s = 0.0  # raw bytes are not decoded
        blocks = -(-info.size // self.block)
        self.part = partition(blocks, request.num_parts, request.part_index)
        part_bytes = max(0, min(info.size, self.part.stop * self.block) - self.part.start * self.block)
        self.cache = self._cache_that_holds(router.cache_for(info), part_bytes)
        self.window = self._plan_window(config, ttfb_s, part_bytes)
        # a small object is cut finer, so that it is still read `max_concurrency` ranges at a time; a batch is
        # read as the pieces the window calls for, so that `max_concurrency` GETs cover the window
        piece = min(
            choose_chunk_bytes(
                info.size,
                concurrency=config.max_concurrency,
                max_chunk_bytes=config.chunk_bytes,
                min_chunk_bytes=config.min_chunk_bytes,
            ),
            max(config.min_chunk_bytes, self.window.piece_bytes),
        )
        pieces = min(_MAX_PIECES_PER_BATCH, max(1, (self.block + piece // 2) // piece))  # the nearest even cut
        self.piece = -(-self.block // pieces)
        self.shape = ReaderShape(
            arrays=[
                ("data", np.dtype("uint8").str, (self.block,)),
                ("label", np.dtype("float32").str, (0,)),  # raw bytes have no labels
                ("index", np.dtype("uint64").str, (1,)),  # the batch's byte offset in the object
            ],
            batches_per_epoch=len(self.part),
            samples_per_epoch=part_bytes,
            objects={"object": info},
            ring_bytes=self.window.window_bytes + 2 * self.block,  # the window, one batch held, one published
            shuffle_window=len(self.part) if request.shuffle else 0,  # blocks shuffle whole: no budget in it
        )

    @staticmethod
    def _cache_that_holds(cache: ChunkCache | None, part_bytes: int) -> ChunkCache | None:
        """The epoch cache, if the stream's part fits in it whole (see the module's docstring)."""
        return cache if cache is not None and part_bytes > 0 and cache.holds(part_bytes) else None

    def _plan_window(self, config: Config, ttfb_s: float, part_bytes: int) -> Window:
        """At least the client's `prefetch` batches; more when the latency calls for it, within max_ring_bytes.

        With hedging on, the window also covers a range as late as a hedge lets it be (its first byte overdue
        at `hedge_multiplier` × the latency, or `hedge_min_delay_s`), so that one slow GET does not stall the
        stream. Never more than the client's part of the object: an epoch is all a ring needs ahead.
        """
        at_least = max(1, self.request.prefetch) * self.block
        at_most = max(at_least, min(config.max_ring_bytes - 2 * self.block, -(-part_bytes // self.block) * self.block))
        hedged = config.hedge and scheme_of(self.request.sources["object"]) == "s3"  # a local file is never late
        late_s = max(config.hedge_min_delay_s, config.hedge_multiplier * ttfb_s) if hedged else 0.0
        return plan_window(
            ttfb_s,
            target_bytes_per_s=config.target_bytes_per_s,
            connections=config.max_concurrency,
            connection_bytes_per_s=CONNECTION_BYTES_PER_S,
            min_window_bytes=at_least,
            max_window_bytes=at_most,
            late_s=late_s,
            max_piece_bytes=min(self.block, config.chunk_bytes),
        )

    @classmethod
    async def open(cls, request: Open, *, router: SourceRouter, config: Config, executor: Executor) -> RawReader:
        if set(request.sources) != {"object"}:
            raise InvalidRequest(f"a bytes stream takes one source, 'object', not {sorted(request.sources)}")
        if request.decode:
            raise InvalidRequest(f"a bytes stream takes no decode options, not {sorted(request.decode)}")
        check_batching(request)
        # one round trip opens the object and brings its first piece, so the first batch waits on no other; its
        # time, less the body's, is the endpoint's first-byte latency, which sizes the window
        # (a local file has none to cover: its window is the client's prefetch)
        url = request.sources["object"]
        started = time.monotonic()
        info, head = await router.open(url, min(config.min_chunk_bytes, request.batch_size))
        took_s = time.monotonic() - started
        ttfb_s = first_byte_seconds(took_s, len(head), CONNECTION_BYTES_PER_S) if scheme_of(url) == "s3" else 0.0
        return cls(request, info, config, router, executor, head, ttfb_s)

    async def attach(self, segment_id: int, segment: Segment) -> None:
        """Nothing to map: the daemon writes the slots itself."""

    def detach(self) -> None:
        """Nothing to release."""

    def plan(self, epoch: int) -> EpochPlan:
        r = self.request
        return plan_epoch(
            self.part,
            epoch=epoch,
            batch_size=1,  # one block per batch
            shuffle=r.shuffle,
            seed=r.seed,
            reshuffle=r.reshuffle,
            last_batch="keep",
            window=len(self.part) or 1,
        )

    @asynccontextmanager
    async def start_epoch(self, plan: EpochPlan, first_batch: int) -> AsyncIterator[RawReader]:
        yield self

    async def fill(self, spec: BatchSpec, out: dict[str, NDArray[Any]]) -> FillResult:
        start = int(spec.records[0]) * self.block
        size = min(self.block, self.info.size - start)
        target = out["data"][:size]
        if self.cache is None:
            await self._read_block(self.info, start, target.data)
        else:
            read_here = False

            async def read_and_keep(info: ObjectInfo, start: int, kept: memoryview) -> None:
                # into the slot, whose pages are faulted in already, then copied for the cache on a thread,
                # so that the first touches of the cache's fresh memory are not on the loop (received there,
                # epoch 1 of the 1 GB .rec ran at 282-352 MB/s against 475: docs/benchmarks.md)
                nonlocal read_here
                await self._read_block(info, start, target.data)
                read_here = True
                await self._copy(np.frombuffer(kept, dtype=np.uint8), target)

            cached = await self.cache.fetch(self.info, start, size, read_and_keep)
            if not read_here:  # a hit, or another stream's read of the same batch
                await self._copy(target, cached)
        out["index"][0] = start
        return FillResult(size, 0, [])

    async def _copy(self, to: NDArray[np.uint8], source: NDArray[np.uint8]) -> None:
        if to.nbytes <= INLINE_DECODE_BYTES:
            to[:] = source
        else:  # larger copies go to a thread, so that the loop keeps serving the other streams
            await run_to_completion(self._executor, lambda: np.copyto(to, source))

    async def _read_block(self, info: ObjectInfo, start: int, out: memoryview) -> None:
        """A batch larger than the piece the object's size calls for is read as several ranges at once."""
        pieces = range(0, len(out), self.piece)
        await asyncio.gather(*(self._read(start + p, out[p : p + self.piece]) for p in pieces))

    async def _read(self, start: int, out: memoryview) -> None:
        if start + len(out) <= len(self._head):
            out[:] = self._head[start : start + len(out)]
        else:
            await self._router.read_range(self.info, start, out)
