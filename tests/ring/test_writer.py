"""The daemon's side of the ring: the sealed memfd (prefetchd/ring/segment.py) and slot ownership (writer.py)."""

from __future__ import annotations

import asyncio
import fcntl
import mmap
import os
from collections.abc import Iterator

import numpy as np
import pytest

from prefetchd.ring.segment import F_SEAL_FUTURE_WRITE, Segment
from prefetchd.ring.writer import RingWriter
from prefetchd_client import layout
from prefetchd_client.errors import RemoteProtocolError

SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
ARRAYS = [("data", "<f4", (4, 1, 3, 2)), ("label", "<f4", (4,)), ("index", "<u8", (4,))]


def geometry(slot_count: int = 3) -> layout.RingGeometry:
    return layout.RingGeometry.build(slot_count, ARRAYS)


@pytest.fixture
def segment() -> Iterator[Segment]:
    with Segment("prefetchd-test", geometry().segment_bytes) as seg:
        yield seg


@pytest.fixture
def writer(segment: Segment) -> Iterator[RingWriter]:
    ring = RingWriter(segment, geometry())
    yield ring
    ring.close()


def client_view(segment: Segment) -> mmap.mmap:
    """What the client maps from the fd it receives: the same memory, read-only."""
    return mmap.mmap(segment.fd, segment.size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)


def fill(writer: RingWriter, slot: int, value: float) -> None:
    arrays = writer.arrays(slot)
    arrays["data"][...] = value
    arrays["label"][...] = np.arange(4) + value
    arrays["index"][...] = np.arange(4, dtype=np.uint64) + 1000


def test_segment_is_a_memfd_sealed_against_shrink_grow_and_new_seals(segment: Segment) -> None:
    seals = fcntl.fcntl(segment.fd, fcntl.F_GET_SEALS)

    assert seals & SEALS == SEALS
    assert os.readlink(f"/proc/self/fd/{segment.fd}").startswith("/memfd:prefetchd-test")
    assert os.fstat(segment.fd).st_size == segment.size == geometry().segment_bytes
    assert len(segment.map) == len(segment.buffer) == segment.size
    with pytest.raises(PermissionError):
        fcntl.fcntl(segment.fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE)


def test_the_fd_a_client_receives_cannot_write_the_ring(segment: Segment) -> None:
    segment.buffer[:4] = b"ring"
    with pytest.raises(PermissionError):
        mmap.mmap(segment.fd, segment.size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    with pytest.raises(PermissionError):
        os.pwrite(segment.fd, b"evil", 0)
    assert fcntl.fcntl(segment.fd, fcntl.F_GET_SEALS) & F_SEAL_FUTURE_WRITE
    assert bytes(client_view(segment)[:4]) == b"ring", "the daemon's own mapping still writes"


@pytest.mark.parametrize("new_size", ["zero", "one byte less", "one byte more", "twice"])
def test_segment_cannot_be_truncated_or_grown(segment: Segment, new_size: str) -> None:
    sizes = {"zero": 0, "one byte less": segment.size - 1, "one byte more": segment.size + 1, "twice": 2 * segment.size}

    with pytest.raises(PermissionError):
        os.ftruncate(segment.fd, sizes[new_size])

    assert os.fstat(segment.fd).st_size == segment.size


def test_segment_fd_is_not_inherited_by_child_processes(segment: Segment) -> None:
    assert not os.get_inheritable(segment.fd)


def test_close_closes_the_fd_and_is_idempotent() -> None:
    seg = Segment("prefetchd-test", 4096)
    fd = seg.fd

    seg.close()

    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(fd)
    assert seg.map.closed
    seg.close()


def test_read_only_mapping_sees_what_the_daemon_writes(segment: Segment) -> None:
    view = client_view(segment)
    try:
        segment.buffer[1000:1004] = b"ring"
        assert view[1000:1004] == b"ring"
        segment.buffer[1000:1004] = b"RING"
        assert view[1000:1004] == b"RING"
    finally:
        view.close()


def test_read_only_mapping_cannot_be_written(segment: Segment) -> None:
    view = client_view(segment)
    try:
        with pytest.raises(TypeError, match="readonly"):
            view[0:4] = b"evil"
        array = np.frombuffer(view, dtype=np.uint8)
        assert not array.flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            array[0] = 1
        del array
    finally:
        view.close()


def test_header_at_offset_0_unpacks_to_the_geometry(writer: RingWriter, segment: Segment) -> None:
    view = client_view(segment)
    try:
        assert layout.unpack_header(view[: layout.HEADER_BYTES]) == geometry()
        assert view[: len(layout.MAGIC)] == layout.MAGIC
    finally:
        view.close()


def test_geometry_of_another_size_is_refused(segment: Segment) -> None:
    with pytest.raises(ValueError, match="does not match"):
        RingWriter(segment, geometry(slot_count=4))


def test_acquire_hands_out_each_free_slot_once(writer: RingWriter) -> None:
    async def body() -> list[int]:
        return [await writer.acquire() for _ in range(3)]

    slots = asyncio.run(body())

    assert sorted(slots) == [0, 1, 2]
    assert writer.statistics().filling == 3


def test_acquire_waits_for_a_release_when_no_slot_is_free(writer: RingWriter) -> None:
    async def body() -> None:
        for slot in range(3):
            assert await writer.acquire() == slot
            fill(writer, slot, float(slot))
            writer.publish(slot, epoch=0, seq=slot, valid=4, pad=0)
        waiting = asyncio.Event()

        async def acquire_one() -> int:
            waiting.set()
            return await writer.acquire()

        fourth = asyncio.create_task(acquire_one())
        await waiting.wait()  # acquire_one is now parked in acquire(): no slot is free
        assert not fourth.done()

        writer.release(1, 2)

        assert await fourth == 1
        assert writer.statistics().filling == 1

    asyncio.run(body())


def test_publish_writes_the_slot_header_and_numbers_fills_in_order(writer: RingWriter, segment: Segment) -> None:
    async def body() -> list[int]:
        fills = []
        for seq in range(5):
            slot = await writer.acquire()
            fill(writer, slot, float(seq))
            fills.append(writer.publish(slot, epoch=2, seq=seq, valid=4 if seq < 4 else 1, pad=0 if seq < 4 else 3))
            view = client_view(segment)
            try:
                offset = writer.geometry.slot_offset(slot)
                header = layout.unpack_slot_header(view[offset : offset + layout.SLOT_HEADER_BYTES], 0)
                assert header == layout.SlotHeader(
                    fills[-1], 2, seq, 4 if seq < 4 else 1, 0 if seq < 4 else 3, int(layout.SlotState.READY)
                )
                data = writer.geometry.array("data")
                start = writer.geometry.slot_offset(slot) + data.offset
                pixels = np.frombuffer(view, dtype="<f4", count=data.nbytes // 4, offset=start)
                assert (pixels == float(seq)).all()
                del pixels
            finally:
                view.close()
            writer.release(slot, fills[-1])
        return fills

    assert asyncio.run(body()) == [1, 2, 3, 4, 5]


def test_arrays_are_views_of_the_slot_in_shared_memory(writer: RingWriter, segment: Segment) -> None:
    async def body() -> None:
        slot = await writer.acquire()
        arrays = writer.arrays(slot)
        assert {name: (a.dtype.str, a.shape) for name, a in arrays.items()} == {
            name: (dtype, shape) for name, dtype, shape in ARRAYS
        }
        arrays["index"][...] = [7, 8, 9, 10]
        index = writer.geometry.array("index")
        start = writer.geometry.slot_offset(slot) + index.offset
        assert np.frombuffer(segment.buffer[start : start + index.nbytes], dtype="<u8").tolist() == [7, 8, 9, 10]

    asyncio.run(body())


def test_arrays_refuse_a_slot_that_is_not_filling(writer: RingWriter) -> None:
    async def body() -> None:
        with pytest.raises(RuntimeError, match="slot 0 is FREE"):
            writer.arrays(0)
        slot = await writer.acquire()
        writer.publish(slot, epoch=0, seq=0, valid=4, pad=0)
        with pytest.raises(RuntimeError, match=f"slot {slot} is READY"):
            writer.arrays(slot)

    asyncio.run(body())


def test_release_with_a_wrong_fill_or_slot_is_the_clients_protocol_error(writer: RingWriter) -> None:
    async def body() -> None:
        slot = await writer.acquire()
        fill_number = writer.publish(slot, epoch=0, seq=0, valid=4, pad=0)
        with pytest.raises(RemoteProtocolError, match="names fill 7"):
            writer.release(slot, 7)
        for bad_slot in (-1, 3, 99):
            with pytest.raises(RemoteProtocolError, match=f"names slot {bad_slot}"):
                writer.release(bad_slot, fill_number)
        assert writer.statistics().ready == 1  # the bad releases changed nothing
        writer.release(slot, fill_number)
        with pytest.raises(RemoteProtocolError, match="release is not allowed in state FREE"):
            writer.release(slot, fill_number)  # a second Release of the same fill

    asyncio.run(body())


def test_release_of_a_slot_being_refilled_is_refused(writer: RingWriter) -> None:
    async def body() -> None:
        for _ in range(3):
            slot = await writer.acquire()
            writer.publish(slot, epoch=0, seq=0, valid=4, pad=0)
        writer.release(0, 1)
        assert await writer.acquire() == 0
        with pytest.raises(RemoteProtocolError, match="not allowed in state FILLING"):
            writer.release(0, 1)  # a stale duplicate of the Release that freed it

    asyncio.run(body())


def test_abort_frees_a_filling_slot(writer: RingWriter) -> None:
    async def body() -> None:
        slots = [await writer.acquire() for _ in range(3)]
        writer.abort(slots[1])
        assert writer.statistics().free == 1
        assert await writer.acquire() == slots[1]

    asyncio.run(body())


def test_illegal_transitions_raise(writer: RingWriter) -> None:
    async def body() -> None:
        with pytest.raises(RemoteProtocolError, match="publish is not allowed in state FREE"):
            writer.publish(0, epoch=0, seq=0, valid=4, pad=0)
        with pytest.raises(RemoteProtocolError, match="abort is not allowed in state FREE"):
            writer.abort(0)
        slot = await writer.acquire()
        writer.publish(slot, epoch=0, seq=0, valid=4, pad=0)
        with pytest.raises(RemoteProtocolError, match="publish is not allowed in state READY"):
            writer.publish(slot, epoch=0, seq=1, valid=4, pad=0)
        with pytest.raises(RemoteProtocolError, match="abort is not allowed in state READY"):
            writer.abort(slot)
        assert writer.statistics().published == 1

    asyncio.run(body())


def test_statistics_and_repr_count_slot_states(writer: RingWriter) -> None:
    async def body() -> None:
        assert repr(writer) == "<RingWriter slots=3 free=3 filling=0 ready=0>"
        first = await writer.acquire()
        second = await writer.acquire()
        writer.publish(first, epoch=0, seq=0, valid=4, pad=0)
        stats = writer.statistics()
        assert (stats.slots, stats.free, stats.filling, stats.ready, stats.published) == (3, 1, 1, 1, 1)
        assert repr(writer) == "<RingWriter slots=3 free=1 filling=1 ready=1>"
        writer.publish(second, epoch=0, seq=1, valid=4, pad=0)
        writer.release(first, 1)
        stats = writer.statistics()
        assert (stats.free, stats.filling, stats.ready, stats.published) == (2, 0, 1, 2)

    asyncio.run(body())


def test_all_ready_only_while_every_slot_waits_for_the_client(writer: RingWriter) -> None:
    """What the bucket gates ask of a stream: with nothing to fill, its GETs are read-ahead and go last."""

    async def body() -> list[bool]:
        seen = [writer.all_ready()]
        slots = [await writer.acquire() for _ in range(3)]
        seen.append(writer.all_ready())
        fills = [writer.publish(slot, epoch=0, seq=n, valid=4, pad=0) for n, slot in enumerate(slots[:2])]
        seen.append(writer.all_ready())  # one slot still filling
        fills.append(writer.publish(slots[2], epoch=0, seq=2, valid=4, pad=0))
        seen.append(writer.all_ready())
        writer.release(slots[0], fills[0])
        seen.append(writer.all_ready())  # the client took one: a slot to fill
        return seen

    assert asyncio.run(body()) == [False, False, False, True, False]


def test_writer_close_closes_the_segment(segment: Segment) -> None:
    ring = RingWriter(segment, geometry())
    fd = segment.fd

    ring.close()

    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(fd)
