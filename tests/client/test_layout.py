"""The ring's layout: where RingGeometry puts things, the header's bytes both ways, and who may own a slot when."""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prefetchd_client.errors import RemoteProtocolError
from prefetchd_client.layout import (
    ALIGN,
    FORMAT_VERSION,
    HEADER_BYTES,
    MAGIC,
    MAX_ARRAYS,
    MAX_DIMS,
    SLOT_HEADER_BYTES,
    SLOT_TRANSITIONS,
    ArraySpec,
    RingGeometry,
    SlotEvent,
    SlotHeader,
    SlotState,
    pack_header,
    pack_slot_header,
    transition,
    unpack_header,
    unpack_slot_header,
)

# Offsets from docs/format.md, written out here so a change in layout.py cannot move both sides at once.
VERSION_AT, FEATURES_AT, HEADER_BYTES_AT, SLOT_COUNT_AT, SLOT_BYTES_AT = 8, 12, 16, 20, 24
SLOTS_OFFSET_AT, ARRAY_COUNT_AT, SEGMENT_BYTES_AT = 32, 40, 48
DESCRIPTOR_AT, DESCRIPTOR_BYTES = 64, 128  # descriptor i starts at 64 + 128 * i
NAME_AT, DTYPE_AT, OFFSET_AT, NBYTES_AT, NDIM_AT, DIMS_AT = 0, 16, 32, 40, 48, 56

DTYPES = ["|u1", "|i1", "|b1", "<i2", ">i2", "<u4", "<i4", "<f2", "<f4", ">f4", "<f8", "<i8", "<u8", "<c16", "|S7"]
ITEMSIZE = {dtype: int(dtype[2:]) for dtype in DTYPES}

names = st.text(st.characters(min_codepoint=1, max_codepoint=0x2FF), min_size=1, max_size=16).filter(
    lambda name: len(name.encode()) <= 16
)
shapes = st.lists(st.integers(min_value=0, max_value=30), max_size=MAX_DIMS).map(tuple)
array_lists = st.lists(
    st.tuples(names, st.sampled_from(DTYPES), shapes), min_size=1, max_size=MAX_ARRAYS, unique_by=lambda a: a[0]
)
slot_counts = st.integers(min_value=1, max_value=65535)

MNIST_ARRAYS: list[tuple[str, str, tuple[int, ...]]] = [
    ("data", "<f4", (100, 1, 28, 28)),
    ("label", "<f4", (100,)),
    ("index", "<u8", (100,)),
]


def round_up(n: int) -> int:
    return -(-n // 64) * 64


def mnist_header() -> bytearray:
    return bytearray(pack_header(RingGeometry.build(4, MNIST_ARRAYS)))


def put(buf: bytearray, fmt: str, at: int, value: object) -> bytes:
    struct.pack_into(fmt, buf, at, value)
    return bytes(buf)


# --- geometry ---------------------------------------------------------------------------------------------------


@given(slot_counts, array_lists)
def test_build_puts_every_array_on_a_64_byte_boundary_after_the_slot_header(
    slot_count: int, arrays: list[tuple[str, str, tuple[int, ...]]]
) -> None:
    geometry = RingGeometry.build(slot_count, arrays)
    end = 64
    for spec, (name, dtype, shape) in zip(geometry.arrays, arrays, strict=True):
        nbytes = ITEMSIZE[dtype]
        for dim in shape:
            nbytes *= dim
        assert (spec.name, spec.dtype, spec.shape, spec.nbytes) == (name, dtype, shape, nbytes)
        assert spec.offset == round_up(end)
        assert spec.offset % 64 == 0
        end = spec.offset + nbytes
    assert geometry.slot_bytes == round_up(end)
    assert geometry.segment_bytes == 512 + slot_count * geometry.slot_bytes
    for slot in {0, 1 % slot_count, slot_count - 1}:
        assert geometry.slot_offset(slot) == 512 + slot * geometry.slot_bytes
        assert geometry.slot_offset(slot) % 64 == 0


def test_build_lays_out_mnist_batches_at_the_documented_offsets() -> None:
    geometry = RingGeometry.build(4, MNIST_ARRAYS)
    assert [(a.offset, a.nbytes) for a in geometry.arrays] == [(64, 313600), (313664, 400), (314112, 800)]
    assert geometry.slot_bytes == 314944
    assert geometry.segment_bytes == 1260288
    assert geometry.array("label") == ArraySpec("label", "<f4", (100,), 313664, 400)


def test_the_constants_are_the_documented_ones() -> None:
    assert (MAGIC, FORMAT_VERSION, ALIGN, HEADER_BYTES, SLOT_HEADER_BYTES) == (b"PFDRING\x00", 1, 64, 512, 64)
    assert (MAX_ARRAYS, MAX_DIMS) == (3, 8)


UNDESCRIBABLE = {
    "no-arrays": (4, [], "1 to 3 arrays, not 0"),
    "four-arrays": (4, [(f"a{i}", "<f4", (1,)) for i in range(4)], "1 to 3 arrays, not 4"),
    "no-slots": (0, [("data", "<f4", (1,))], "at least one slot"),
    "nine-dims": (4, [("data", "<f4", (1,) * 9)], "9 dims"),
    "name-17-bytes": (4, [("x" * 17, "<f4", (1,))], "1 to 16 bytes"),
    "name-18-utf8-bytes": (4, [("é" * 9, "<f4", (1,))], "1 to 16 bytes"),
    "name-empty": (4, [("", "<f4", (1,))], "1 to 16 bytes"),
    "name-with-nul": (4, [("a\0", "<f4", (1,))], "no NUL"),
    "names-repeat": (4, [("data", "<f4", (1,)), ("data", "<u1", (1,))], "names must differ"),
    "negative-dim": (4, [("data", "<f4", (-1, 4))], "negative dimension"),
    "dtype-without-order": (4, [("data", "f4", (1,))], "not a numpy dtype string"),
    "dtype-name": (4, [("data", "float32", (1,))], "not a numpy dtype string"),
    "dtype-without-size": (4, [("data", "<f", (1,))], "not a numpy dtype string"),
    "dtype-unicode": (4, [("data", "<U10", (1,))], "not a numpy dtype string"),
    "dtype-datetime": (4, [("data", "<M8[ns]", (1,))], "not a numpy dtype string"),
    "dtype-zero-size": (4, [("data", "<f0", (1,))], "not a numpy dtype string"),
}


@pytest.mark.parametrize(("slot_count", "arrays", "problem"), UNDESCRIBABLE.values(), ids=UNDESCRIBABLE.keys())
def test_build_refuses_a_layout_the_format_cannot_describe(
    slot_count: int, arrays: list[tuple[str, str, tuple[int, ...]]], problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        RingGeometry.build(slot_count, arrays)


@pytest.mark.parametrize("slot", [-1, 4])
def test_a_slot_outside_the_ring_is_a_remote_protocol_error(slot: int) -> None:
    with pytest.raises(RemoteProtocolError, match=f"slot {slot} is outside the ring's 4 slots"):
        RingGeometry.build(4, MNIST_ARRAYS).slot_offset(slot)


# --- the segment header -----------------------------------------------------------------------------------------


@given(slot_counts, array_lists)
def test_header_round_trips_through_pack_and_unpack(
    slot_count: int, arrays: list[tuple[str, str, tuple[int, ...]]]
) -> None:
    geometry = RingGeometry.build(slot_count, arrays)
    packed = pack_header(geometry)
    assert len(packed) == HEADER_BYTES
    assert unpack_header(packed) == geometry
    assert unpack_header(memoryview(packed + bytes(100))) == geometry


@given(array_lists)
def test_unused_descriptors_and_reserved_bytes_are_zero(arrays: list[tuple[str, str, tuple[int, ...]]]) -> None:
    packed = pack_header(RingGeometry.build(2, arrays))
    assert packed[44:48] == bytes(4)
    assert packed[56:64] == bytes(8)
    for i in range(MAX_ARRAYS):
        at = DESCRIPTOR_AT + i * DESCRIPTOR_BYTES
        if i >= len(arrays):
            assert packed[at : at + DESCRIPTOR_BYTES] == bytes(DESCRIPTOR_BYTES)
        else:
            assert packed[at + 52 : at + 56] == bytes(4)
            assert packed[at + 120 : at + 128] == bytes(8)
    assert packed[DESCRIPTOR_AT + MAX_ARRAYS * DESCRIPTOR_BYTES :] == bytes(64)


def test_unpack_header_refuses_a_wrong_magic() -> None:
    with pytest.raises(RemoteProtocolError, match=r"magic b'PFDRINX\\x00', expected b'PFDRING\\x00'"):
        unpack_header(put(mnist_header(), "<8s", 0, b"PFDRINX\x00"))


@pytest.mark.parametrize("version", [0, 2, 0xFFFFFFFF])
def test_unpack_header_refuses_another_format_version_and_says_to_install_matching_releases(version: int) -> None:
    with pytest.raises(RemoteProtocolError, match=f"ring format {version} is not the 1") as caught:
        unpack_header(put(mnist_header(), "<I", VERSION_AT, version))
    assert "install the prefetchd-client release that matches the daemon" in str(caught.value)


@pytest.mark.parametrize("features", [1, 0x80, 0x80000000])
def test_unpack_header_refuses_feature_bits_it_does_not_know(features: int) -> None:
    with pytest.raises(RemoteProtocolError, match=f"feature bits {features:#x}"):
        unpack_header(put(mnist_header(), "<I", FEATURES_AT, features))


def descriptor(i: int, field: int) -> int:
    return DESCRIPTOR_AT + i * DESCRIPTOR_BYTES + field


INCONSISTENT = {
    "header-bytes": ("<I", HEADER_BYTES_AT, 256, "header_bytes 256"),
    "slots-offset": ("<Q", SLOTS_OFFSET_AT, 1024, "slots_offset 1024"),
    "no-arrays": ("<I", ARRAY_COUNT_AT, 0, "array_count 0"),
    "four-arrays": ("<I", ARRAY_COUNT_AT, 4, "array_count 4"),
    "no-slots": ("<I", SLOT_COUNT_AT, 0, "0 slots"),
    "slot-bytes-unaligned": ("<Q", SLOT_BYTES_AT, 314944 + 8, "slots of 314952 bytes"),
    "slot-bytes-too-small": ("<Q", SLOT_BYTES_AT, 0, "slots of 0 bytes"),
    "segment-bytes": ("<Q", SEGMENT_BYTES_AT, 1260288 + 64, "says 1260352 bytes but its geometry needs 1260288"),
    "slot-count-vs-segment": ("<I", SLOT_COUNT_AT, 5, "says 1260288 bytes but its geometry needs 1575232"),
    "array-unaligned": ("<Q", descriptor(1, OFFSET_AT), 313664 + 8, "'label' does not fit"),
    "array-over-slot-header": ("<Q", descriptor(0, OFFSET_AT), 0, "'data' does not fit"),
    "arrays-overlap": ("<Q", descriptor(1, OFFSET_AT), 313600, "'label' does not fit"),
    "array-past-slot-end": ("<Q", descriptor(2, OFFSET_AT), 314944, "'index' does not fit"),
    "nbytes-not-shape": ("<Q", descriptor(2, NBYTES_AT), 808, "'index' does not fit"),
    "dim-not-nbytes": ("<Q", descriptor(0, DIMS_AT), 101, "'data' does not fit"),
    "ndim-not-nbytes": ("<I", descriptor(0, NDIM_AT), 3, "'data' does not fit"),
    "too-many-dims": ("<I", descriptor(0, NDIM_AT), 9, "array 0 claims 9 dims"),
    "dtype-unknown": ("<16s", descriptor(1, DTYPE_AT), b"<U10", "array 1 has an unreadable name or dtype"),
    "dtype-garbage": ("<16s", descriptor(1, DTYPE_AT), b"", "array 1 has an unreadable name or dtype"),
    "name-not-utf8": ("<16s", descriptor(2, NAME_AT), b"\xff\xfe", "array 2 has an unreadable name or dtype"),
}


@pytest.mark.parametrize(("fmt", "at", "value", "problem"), INCONSISTENT.values(), ids=INCONSISTENT.keys())
def test_unpack_header_refuses_inconsistent_geometry(fmt: str, at: int, value: object, problem: str) -> None:
    with pytest.raises(RemoteProtocolError, match=problem):
        unpack_header(put(mnist_header(), fmt, at, value))


@pytest.mark.parametrize("length", [0, 8, 64, HEADER_BYTES - 1])
def test_unpack_header_refuses_a_truncated_buffer(length: int) -> None:
    with pytest.raises(RemoteProtocolError, match=f"ring segment of {length} bytes is smaller than its header"):
        unpack_header(bytes(mnist_header()[:length]))


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.tuples(st.integers(min_value=0, max_value=HEADER_BYTES - 1), st.binary(min_size=1, max_size=8))))
def test_a_corrupted_header_is_refused_or_describes_a_layout_that_fits(patches: list[tuple[int, bytes]]) -> None:
    header = mnist_header()
    for at, data in patches:
        header[at : at + len(data)] = data
        del header[HEADER_BYTES:]
    try:
        geometry = unpack_header(bytes(header))
    except RemoteProtocolError:
        return
    end = SLOT_HEADER_BYTES
    for spec in geometry.arrays:
        assert spec.offset % ALIGN == 0 and spec.offset >= end
        end = spec.offset + spec.nbytes
    assert end <= geometry.slot_bytes and geometry.slot_bytes % ALIGN == 0 and geometry.slot_count >= 1


# --- the slot header --------------------------------------------------------------------------------------------

u64 = st.integers(min_value=0, max_value=2**64 - 1)
u32 = st.integers(min_value=0, max_value=2**32 - 1)


@given(st.builds(SlotHeader, fill=u64, epoch=u64, seq=u64, valid=u32, pad=u32, state=u32))
def test_slot_header_round_trips_and_touches_only_its_64_bytes(header: SlotHeader) -> None:
    buf = bytearray(b"\xaa" * (3 * SLOT_HEADER_BYTES))
    pack_slot_header(buf, SLOT_HEADER_BYTES, header)
    assert buf[:SLOT_HEADER_BYTES] == buf[2 * SLOT_HEADER_BYTES :] == b"\xaa" * SLOT_HEADER_BYTES
    assert buf[SLOT_HEADER_BYTES + 36 : 2 * SLOT_HEADER_BYTES] == bytes(28)
    assert unpack_slot_header(memoryview(buf), SLOT_HEADER_BYTES) == header
    assert struct.unpack_from("<QQQIII", buf, SLOT_HEADER_BYTES) == (
        header.fill,
        header.epoch,
        header.seq,
        header.valid,
        header.pad,
        header.state,
    )


def test_zeroed_memory_is_a_free_slot() -> None:
    assert SlotState.FREE.value == 0
    assert unpack_slot_header(bytes(SLOT_HEADER_BYTES), 0) == SlotHeader(0, 0, 0, 0, 0, SlotState.FREE)


def test_slot_states_have_their_documented_numbers() -> None:
    assert {state.name: int(state) for state in SlotState} == {"FREE": 0, "FILLING": 1, "READY": 2, "HELD": 3}


# --- slot ownership ---------------------------------------------------------------------------------------------

S, E = SlotState, SlotEvent
EXPECTED_TRANSITIONS = {
    (S.FREE, E.BEGIN_FILL): S.FILLING,  # daemon takes a free slot
    (S.FILLING, E.PUBLISH): S.READY,  # daemon wrote it and sends Batch
    (S.FILLING, E.ABORT): S.FREE,  # daemon gave up on the fill
    (S.FREE, E.DELIVER): S.READY,  # client got Batch; it never sees FILLING
    (S.READY, E.TAKE): S.HELD,  # client hands the views to the trainer
    (S.READY, E.RELEASE): S.FREE,  # client skips a stale batch
    (S.HELD, E.RELEASE): S.FREE,  # client is done with it
}


def test_the_transition_table_is_the_documented_one() -> None:
    assert SLOT_TRANSITIONS == EXPECTED_TRANSITIONS


@pytest.mark.parametrize(("state", "event"), list(itertools.product(SlotState, SlotEvent)))
def test_every_state_and_event_pair_moves_as_the_table_says_or_is_refused(state: SlotState, event: SlotEvent) -> None:
    if (state, event) in EXPECTED_TRANSITIONS:
        assert transition(state, event, slot=5) is EXPECTED_TRANSITIONS[(state, event)]
    else:
        with pytest.raises(RemoteProtocolError, match=f"slot 5: {event.value} is not allowed in state {state.name}"):
            transition(state, event, slot=5)


def test_a_slot_goes_round_the_ring_on_both_sides() -> None:
    daemon = client = SlotState.FREE
    for event in (E.BEGIN_FILL, E.PUBLISH):
        daemon = transition(daemon, event, slot=0)
    for event in (E.DELIVER, E.TAKE, E.RELEASE):
        client = transition(client, event, slot=0)
    daemon = transition(daemon, E.RELEASE, slot=0)
    assert daemon is client is SlotState.FREE
