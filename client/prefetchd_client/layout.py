"""The ring: one shared-memory segment per stream, its bytes defined here once for daemon and client.

    segment = header (512 bytes) | slot 0 | slot 1 | ... | slot N-1      (every slot 64-byte aligned)
    slot    = slot header (64 bytes) | array 0 | array 1 | ...            (every array 64-byte aligned)

All integers are little-endian. The header describes the arrays (name, numpy dtype string, shape, offset
inside the slot), so a client needs nothing but the segment to build its numpy views. docs/format.md draws
every field; tests/golden holds the bytes of a v1 header and slot. `FORMAT_VERSION` is the ring's own
version, separate from the package version: a reader refuses a version it does not know.

Slot ownership moves through `SLOT_TRANSITIONS`, the only place its rules live:
FREE → FILLING (daemon writes) → READY (Batch sent) → HELD (yielded to the trainer) → FREE (Release).
FREE is 0, so freshly zeroed memory is a valid, empty ring.
"""

from __future__ import annotations

import enum
import math
import re
import struct
from dataclasses import dataclass

from .errors import RemoteProtocolError

MAGIC = b"PFDRING\x00"
FORMAT_VERSION = 1
FEATURES = 0  # no optional features defined yet; unknown bits make a reader refuse the ring
ALIGN = 64  # a cache line: slots and arrays start on one
HEADER_BYTES = 512
SLOT_HEADER_BYTES = 64
MAX_ARRAYS = 3
MAX_DIMS = 8

# magic, format_version, features, header_bytes, slot_count, slot_bytes, slots_offset, array_count,
# reserved, segment_bytes, reserved
_HEADER = struct.Struct("<8sIIIIQQIIQQ")
_ARRAY_BASE = _HEADER.size  # 64
_ARRAY_BYTES = 128
# name, dtype, offset_in_slot, nbytes, ndim, reserved, dims[8]
_ARRAY = struct.Struct("<16s16sQQII8Q")
# fill, epoch, seq, valid, pad, state, reserved
_SLOT_HEADER = struct.Struct("<QQQIII28x")
_NAME_BYTES = 16  # an array's name and dtype string, NUL-padded
_DTYPE = re.compile(r"[<>|=][biufcSV][1-9][0-9]*")

assert _HEADER.size == 64 and _ARRAY.size <= _ARRAY_BYTES and _SLOT_HEADER.size == SLOT_HEADER_BYTES
assert _ARRAY_BASE + MAX_ARRAYS * _ARRAY_BYTES <= HEADER_BYTES


class SlotState(enum.IntEnum):
    FREE = 0
    FILLING = 1
    READY = 2
    HELD = 3


class SlotEvent(enum.Enum):
    BEGIN_FILL = "begin_fill"  # daemon takes a free slot
    PUBLISH = "publish"  # daemon sent Batch
    ABORT = "abort"  # daemon dropped a half-filled slot (a Seek, an error)
    DELIVER = "deliver"  # client received Batch for the slot (it never sees FILLING)
    TAKE = "take"  # client hands the slot's views to the trainer
    RELEASE = "release"  # client is done with it (or skipped a stale batch)


SLOT_TRANSITIONS: dict[tuple[SlotState, SlotEvent], SlotState] = {
    (SlotState.FREE, SlotEvent.BEGIN_FILL): SlotState.FILLING,
    (SlotState.FILLING, SlotEvent.PUBLISH): SlotState.READY,
    (SlotState.FILLING, SlotEvent.ABORT): SlotState.FREE,
    (SlotState.FREE, SlotEvent.DELIVER): SlotState.READY,
    (SlotState.READY, SlotEvent.TAKE): SlotState.HELD,
    (SlotState.READY, SlotEvent.RELEASE): SlotState.FREE,
    (SlotState.HELD, SlotEvent.RELEASE): SlotState.FREE,
}


def transition(state: SlotState, event: SlotEvent, *, slot: int) -> SlotState:
    """The state after `event`, or a `RemoteProtocolError` naming the illegal pair."""
    try:
        return SLOT_TRANSITIONS[(state, event)]
    except KeyError:
        raise RemoteProtocolError(f"slot {slot}: {event.value} is not allowed in state {state.name}") from None


def align_up(n: int, alignment: int = ALIGN) -> int:
    return (n + alignment - 1) // alignment * alignment


@dataclass(frozen=True, slots=True)
class ArraySpec:
    """One array of every slot: e.g. data (B, 1, 28, 28) <f4, or label (B,) <f4."""

    name: str
    dtype: str  # numpy's dtype.str, e.g. "<f4", "|u1"
    shape: tuple[int, ...]
    offset: int = 0  # from the start of the slot; filled in by RingGeometry.build
    nbytes: int = 0


@dataclass(frozen=True, slots=True)
class SlotHeader:
    """What the daemon wrote about the batch in a slot."""

    fill: int  # ring-wide count of fills, 1-based; the Batch message carries the same number
    epoch: int
    seq: int  # batch number within the epoch
    valid: int  # real samples in the batch
    pad: int  # samples repeated to fill the batch (MXNet's getpad())
    state: int


@dataclass(frozen=True, slots=True)
class RingGeometry:
    """Where everything lives in a segment."""

    slot_count: int
    slot_bytes: int
    arrays: tuple[ArraySpec, ...]
    features: int = FEATURES
    version: int = FORMAT_VERSION

    @classmethod
    def build(cls, slot_count: int, arrays: list[tuple[str, str, tuple[int, ...]]]) -> RingGeometry:
        """Lay out `arrays` (name, dtype string, shape) in slots of 64-byte-aligned pieces."""
        if not 1 <= len(arrays) <= MAX_ARRAYS:
            raise ValueError(f"a slot holds 1 to {MAX_ARRAYS} arrays, not {len(arrays)}")
        if slot_count < 1:
            raise ValueError("a ring needs at least one slot")
        if len({name for name, _, _ in arrays}) != len(arrays):
            raise ValueError(f"array names must differ: {[name for name, _, _ in arrays]}")
        offset = SLOT_HEADER_BYTES
        specs = []
        for name, dtype, shape in arrays:
            if len(shape) > MAX_DIMS:
                raise ValueError(f"array {name} has {len(shape)} dims; the ring allows {MAX_DIMS}")
            if not 1 <= len(name.encode()) <= _NAME_BYTES or len(dtype.encode()) > _NAME_BYTES or "\0" in name:
                raise ValueError(f"array {name!r} ({dtype!r}): names and dtypes are 1 to {_NAME_BYTES} bytes, no NUL")
            if any(dim < 0 for dim in shape):
                raise ValueError(f"array {name} has a negative dimension: {shape}")
            nbytes = math.prod(shape) * _itemsize(dtype)
            specs.append(ArraySpec(name, dtype, tuple(shape), offset, nbytes))
            offset = align_up(offset + nbytes)
        return cls(slot_count=slot_count, slot_bytes=offset, arrays=tuple(specs))

    @property
    def segment_bytes(self) -> int:
        return HEADER_BYTES + self.slot_count * self.slot_bytes

    def slot_offset(self, slot: int) -> int:
        if not 0 <= slot < self.slot_count:
            raise RemoteProtocolError(f"slot {slot} is outside the ring's {self.slot_count} slots")
        return HEADER_BYTES + slot * self.slot_bytes

    def array(self, name: str) -> ArraySpec:
        for spec in self.arrays:
            if spec.name == name:
                return spec
        raise KeyError(name)


def _itemsize(dtype: str) -> int:
    # byte order, kind, item bytes; kinds whose digits are not the item bytes ('<U10', '<M8[ns]') are refused
    if not _DTYPE.fullmatch(dtype):
        raise ValueError(f"{dtype!r} is not a numpy dtype string such as '<f4'")
    return int(dtype[2:])


def pack_header(geometry: RingGeometry) -> bytes:
    """The segment's first HEADER_BYTES bytes."""
    out = bytearray(HEADER_BYTES)
    _HEADER.pack_into(
        out,
        0,
        MAGIC,
        geometry.version,
        geometry.features,
        HEADER_BYTES,
        geometry.slot_count,
        geometry.slot_bytes,
        HEADER_BYTES,
        len(geometry.arrays),
        0,
        geometry.segment_bytes,
        0,
    )
    for i, spec in enumerate(geometry.arrays):
        dims = list(spec.shape) + [0] * (MAX_DIMS - len(spec.shape))
        _ARRAY.pack_into(
            out,
            _ARRAY_BASE + i * _ARRAY_BYTES,
            spec.name.encode(),
            spec.dtype.encode(),
            spec.offset,
            spec.nbytes,
            len(spec.shape),
            0,
            *dims,
        )
    return bytes(out)


def unpack_header(buf: bytes | memoryview) -> RingGeometry:
    """Read a header, refusing anything this reader does not understand."""
    if len(buf) < HEADER_BYTES:
        raise RemoteProtocolError(f"ring segment of {len(buf)} bytes is smaller than its header")
    magic, version, features, header_bytes, slot_count, slot_bytes, slots_offset, array_count, _, seg, _ = (
        _HEADER.unpack_from(buf, 0)
    )
    if magic != MAGIC:
        raise RemoteProtocolError(f"ring segment has magic {magic!r}, expected {MAGIC!r}")
    if version != FORMAT_VERSION:
        raise RemoteProtocolError(
            f"ring format {version} is not the {FORMAT_VERSION} this client reads; "
            "install the prefetchd-client release that matches the daemon"
        )
    if features & ~FEATURES:
        raise RemoteProtocolError(f"ring uses feature bits {features:#x} this client does not know")
    if header_bytes != HEADER_BYTES or slots_offset != HEADER_BYTES or not 1 <= array_count <= MAX_ARRAYS:
        raise RemoteProtocolError(
            f"ring header geometry is inconsistent: header_bytes {header_bytes}, slots_offset {slots_offset}, "
            f"array_count {array_count}"
        )
    if slot_count < 1 or slot_bytes < SLOT_HEADER_BYTES or slot_bytes % ALIGN:
        raise RemoteProtocolError(f"ring header geometry is inconsistent: {slot_count} slots of {slot_bytes} bytes")
    arrays = []
    end = SLOT_HEADER_BYTES  # arrays follow the slot header and each other, in order, never overlapping
    for i in range(array_count):
        name, dtype, offset, nbytes, ndim, _, *dims = _ARRAY.unpack_from(buf, _ARRAY_BASE + i * _ARRAY_BYTES)
        if ndim > MAX_DIMS:
            raise RemoteProtocolError(f"ring array {i} claims {ndim} dims")
        try:
            spec = ArraySpec(
                name.rstrip(b"\0").decode(), dtype.rstrip(b"\0").decode(), tuple(dims[:ndim]), offset, nbytes
            )
            itemsize = _itemsize(spec.dtype)
        except ValueError as exc:  # UnicodeDecodeError too
            raise RemoteProtocolError(f"ring array {i} has an unreadable name or dtype: {exc}") from None
        if offset < end or offset % ALIGN or offset + nbytes > slot_bytes or math.prod(spec.shape) * itemsize != nbytes:
            raise RemoteProtocolError(f"ring array {spec.name!r} does not fit its slot")
        end = offset + nbytes
        arrays.append(spec)
    geometry = RingGeometry(slot_count, slot_bytes, tuple(arrays), features, version)
    if geometry.segment_bytes != seg:
        raise RemoteProtocolError(f"ring header says {seg} bytes but its geometry needs {geometry.segment_bytes}")
    return geometry


def pack_slot_header(buf: bytearray | memoryview, offset: int, header: SlotHeader) -> None:
    _SLOT_HEADER.pack_into(buf, offset, header.fill, header.epoch, header.seq, header.valid, header.pad, header.state)


def unpack_slot_header(buf: bytes | memoryview, offset: int) -> SlotHeader:
    return SlotHeader(*_SLOT_HEADER.unpack_from(buf, offset))
