"""The client's read-only view of a stream's ring: numpy arrays over shared memory, no copies.

The daemon hands over the ring as a sealed memfd; it is mapped here with PROT_READ, so a buggy trainer
cannot write into it (numpy marks the views read-only), and closing the fd leaves nothing behind to clean up.
"""

from __future__ import annotations

import mmap
import os
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .errors import RemoteProtocolError
from .layout import (
    HEADER_BYTES,
    RingGeometry,
    SlotEvent,
    SlotHeader,
    SlotState,
    transition,
    unpack_header,
    unpack_slot_header,
)


class RingReader:
    """Maps a ring segment and tracks which slots the client holds."""

    def __init__(self, fd: int, segment_bytes: int) -> None:
        size = os.fstat(fd).st_size
        if size != segment_bytes:
            raise RemoteProtocolError(f"ring segment is {size} bytes, the daemon announced {segment_bytes}")
        if size < HEADER_BYTES:
            raise RemoteProtocolError(f"ring segment of {size} bytes cannot hold its header")
        self._map: mmap.mmap | None = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
        self.geometry: RingGeometry = unpack_header(memoryview(self._map)[:HEADER_BYTES])
        if self.geometry.segment_bytes != size:
            raise RemoteProtocolError("ring header disagrees with the segment's size")
        self._views = [self._slot_views(slot) for slot in range(self.geometry.slot_count)]
        self._states = [SlotState.FREE] * self.geometry.slot_count

    def _slot_views(self, slot: int) -> dict[str, NDArray[Any]]:
        assert self._map is not None
        base = self.geometry.slot_offset(slot)
        views = {}
        for spec in self.geometry.arrays:
            count = spec.nbytes // np.dtype(spec.dtype).itemsize
            flat = np.frombuffer(self._map, dtype=np.dtype(spec.dtype), count=count, offset=base + spec.offset)
            views[spec.name] = flat.reshape(spec.shape)
        return views

    def deliver(self, slot: int, fill: int) -> SlotHeader:
        """A Batch frame named `slot`: check the slot header agrees and mark it READY."""
        if self._map is None:
            raise RemoteProtocolError("batch delivered to a closed ring")
        offset = self.geometry.slot_offset(slot)
        state = transition(self._states[slot], SlotEvent.DELIVER, slot=slot)
        header = unpack_slot_header(memoryview(self._map), offset)
        if header.fill != fill:
            raise RemoteProtocolError(f"slot {slot} holds fill {header.fill}, the Batch frame said {fill}")
        self._states[slot] = state
        return header

    def take(self, slot: int) -> dict[str, NDArray[Any]]:
        """The slot's arrays, valid until `release(slot)`."""
        self._states[slot] = transition(self._states[slot], SlotEvent.TAKE, slot=slot)
        return self._views[slot]

    def release(self, slot: int) -> None:
        self._states[slot] = transition(self._states[slot], SlotEvent.RELEASE, slot=slot)

    def state(self, slot: int) -> SlotState:
        return self._states[slot]

    def close(self) -> None:
        """Unmap; if the trainer still holds views, the mapping lives until they are garbage."""
        self._views = []
        mapping, self._map = self._map, None
        if mapping is not None:
            try:
                mapping.close()
            except BufferError:
                pass  # numpy views outlive us; the kernel unmaps when they are collected

    def __repr__(self) -> str:
        counts = {state: self._states.count(state) for state in SlotState}
        return (
            f"<RingReader slots={self.geometry.slot_count} "
            + " ".join(f"{s.name.lower()}={n}" for s, n in counts.items())
            + ">"
        )
