"""Raw bytes of one object, `batch_size` bytes per batch, read from S3 straight into the ring slots.

No decode and no copy: each batch is one ranged GET whose body lands in the client's slot. The stream
keeps `max_concurrency` of them in flight (as many as the ring has free slots). This is what a user
reading their own format wants, and the measure of the fetch path alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
from numpy.typing import NDArray

from prefetchd_client.errors import InvalidRequest
from prefetchd_client.protocol import Open

from ..config import Config
from ..fetch.policy import choose_chunk_bytes
from ..fetch.router import SourceRouter
from ..fetch.source import ObjectInfo
from ..plan.epoch import BatchSpec, EpochPlan, partition, plan_epoch
from ..ring.segment import Segment
from .base import FillResult, ReaderShape
from .idx import check_batching

_PIECES_PER_BATCH = 4


class RawReader:
    """Serves one object's bytes in blocks of `batch_size`."""

    def __init__(
        self, request: Open, info: ObjectInfo, config: Config, router: SourceRouter, head: bytes = b""
    ) -> None:
        self.request = request
        self.info = info
        self._head = head  # the object's first bytes, read with the open: pieces inside them need no GET
        self.block = request.batch_size
        self._router = router
        self.fill_depth = config.max_concurrency
        # a small object is cut finer, so that it is still read `max_concurrency` ranges at a time
        # and when the ring holds fewer batches than max_concurrency, a batch is read as a few pieces, so that the
        # fetch concurrency does not need as many ring slots (every slot is shared memory the kernel must fault
        # in); with a deep ring, whole-batch GETs pay the first-byte latency less often
        self.piece = min(
            choose_chunk_bytes(
                info.size,
                concurrency=config.max_concurrency,
                max_chunk_bytes=config.chunk_bytes,
                min_chunk_bytes=config.min_chunk_bytes,
            ),
            max(config.min_chunk_bytes, -(-self.block // self._pieces_per_batch(config))),
        )
        blocks = -(-info.size // self.block)
        self.part = partition(blocks, request.num_parts, request.part_index)
        part_bytes = max(0, min(info.size, self.part.stop * self.block) - self.part.start * self.block)
        self.shape = ReaderShape(
            arrays=[
                ("data", np.dtype("uint8").str, (self.block,)),
                ("label", np.dtype("float32").str, (0,)),  # raw bytes have no labels
                ("index", np.dtype("uint64").str, (1,)),  # the batch's byte offset in the object
            ],
            batches_per_epoch=len(self.part),
            samples_per_epoch=part_bytes,
            objects={"object": info},
        )

    def _pieces_per_batch(self, config: Config) -> int:
        ahead = max(1, self.request.prefetch)
        return min(_PIECES_PER_BATCH, -(-config.max_concurrency // ahead))

    @classmethod
    async def open(cls, request: Open, *, router: SourceRouter, config: Config) -> RawReader:
        if set(request.sources) != {"object"}:
            raise InvalidRequest(f"a bytes stream takes one source, 'object', not {sorted(request.sources)}")
        if request.decode:
            raise InvalidRequest(f"a bytes stream takes no decode options, not {sorted(request.decode)}")
        check_batching(request)
        # one round trip opens the object and brings its first piece, so the first batch waits on no other
        info, head = await router.open(request.sources["object"], min(config.min_chunk_bytes, request.batch_size))
        return cls(request, info, config, router, head)

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
        target = out["data"][:size].data
        # a batch larger than the piece the object's size calls for is read as several ranges at once
        pieces = range(0, size, self.piece)
        await asyncio.gather(*(self._read(start + p, target[p : p + self.piece]) for p in pieces))
        out["index"][0] = start
        return FillResult(size, 0, [])

    async def _read(self, start: int, out: memoryview) -> None:
        if start + len(out) <= len(self._head):
            out[:] = self._head[start : start + len(out)]
        else:
            await self._router.read_range(self.info, start, out)
