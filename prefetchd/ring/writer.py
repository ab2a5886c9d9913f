"""The daemon's side of a ring: hands out free slots, publishes filled ones, takes them back on Release.

Slot states follow `prefetchd_client.layout.SLOT_TRANSITIONS`; the daemon never writes a slot that is
READY or HELD (it is the client's until its Release arrives).
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from prefetchd_client.errors import RemoteProtocolError
from prefetchd_client.layout import (
    RingGeometry,
    SlotEvent,
    SlotHeader,
    SlotState,
    pack_header,
    pack_slot_header,
    transition,
)

from .segment import Segment


@dataclass(frozen=True, slots=True)
class RingStatistics:
    slots: int
    free: int
    filling: int
    ready: int  # published, not yet released by the client
    published: int


class RingWriter:
    """Owns the slot states of one stream's segment."""

    def __init__(self, segment: Segment, geometry: RingGeometry) -> None:
        if segment.size != geometry.segment_bytes:
            raise ValueError("segment size does not match the ring geometry")
        self.segment = segment
        self.geometry = geometry
        header = pack_header(geometry)
        segment.buffer[: len(header)] = header
        self._states = [SlotState.FREE] * geometry.slot_count
        self._fills = [0] * geometry.slot_count
        self._free: deque[int] = deque(range(geometry.slot_count))
        self._freed = asyncio.Event()
        self._published = 0
        self._ready = 0  # slots READY: published, not yet released (kept, so that all_ready() costs nothing)
        self._views = [self._slot_arrays(slot) for slot in range(geometry.slot_count)]

    def _slot_arrays(self, slot: int) -> dict[str, NDArray[Any]]:
        base = self.geometry.slot_offset(slot)
        arrays = {}
        for spec in self.geometry.arrays:
            dtype = np.dtype(spec.dtype)
            flat = np.frombuffer(
                self.segment.map, dtype=dtype, count=spec.nbytes // dtype.itemsize, offset=base + spec.offset
            )
            arrays[spec.name] = flat.reshape(spec.shape)
        return arrays

    async def acquire(self) -> int:
        """A free slot, now FILLING; waits for the client to release one."""
        while not self._free:
            self._freed.clear()
            await self._freed.wait()
        slot = self._free.popleft()
        self._states[slot] = transition(self._states[slot], SlotEvent.BEGIN_FILL, slot=slot)
        return slot

    def has_free_slot(self) -> bool:
        return bool(self._free)

    def all_ready(self) -> bool:
        """Every slot holds a batch the client has not released: there is nothing to fill until it does."""
        return self._ready == len(self._states)

    def arrays(self, slot: int) -> dict[str, NDArray[Any]]:
        if self._states[slot] is not SlotState.FILLING:
            raise RuntimeError(f"slot {slot} is {self._states[slot].name}; only a FILLING slot may be written")
        return self._views[slot]

    def publish(self, slot: int, *, epoch: int, seq: int, valid: int, pad: int) -> int:
        """Write the slot header and hand the slot to the client; returns its fill number."""
        self._states[slot] = transition(self._states[slot], SlotEvent.PUBLISH, slot=slot)
        self._ready += 1
        self._published += 1
        self._fills[slot] = self._published
        header = SlotHeader(self._published, epoch, seq, valid, pad, int(SlotState.READY))
        pack_slot_header(self.segment.buffer, self.geometry.slot_offset(slot), header)
        return self._published

    def abort(self, slot: int) -> None:
        """Give back a slot whose fill was abandoned (a Seek, an error)."""
        self._states[slot] = transition(self._states[slot], SlotEvent.ABORT, slot=slot)
        self._free.append(slot)
        self._freed.set()

    def release(self, slot: int, fill: int) -> None:
        """The client's Release: the slot is free again. A wrong slot or fill is the client's protocol error."""
        if not 0 <= slot < self.geometry.slot_count:
            raise RemoteProtocolError(f"Release names slot {slot}; the ring has {self.geometry.slot_count}")
        if self._fills[slot] != fill:
            raise RemoteProtocolError(f"Release of slot {slot} names fill {fill}, the slot holds {self._fills[slot]}")
        self._states[slot] = transition(self._states[slot], SlotEvent.RELEASE, slot=slot)
        self._ready -= 1
        self._free.append(slot)
        self._freed.set()

    def statistics(self) -> RingStatistics:
        count = self._states.count
        return RingStatistics(
            self.geometry.slot_count,
            count(SlotState.FREE),
            count(SlotState.FILLING),
            count(SlotState.READY),
            self._published,
        )

    def close(self) -> None:
        self._views = []
        self.segment.close()

    def __repr__(self) -> str:
        s = self.statistics()
        return f"<RingWriter slots={s.slots} free={s.free} filling={s.filling} ready={s.ready}>"
