"""A stream's shared memory: faulted in ahead of its first writes, without holding it past its close."""

from __future__ import annotations

import re
from pathlib import Path

from prefetchd.ring.segment import Segment

MiB = 1 << 20


def _shared_resident_bytes() -> int:
    """This process's resident shared memory (memfd pages it maps), from /proc."""
    status = Path("/proc/self/status").read_text()
    match = re.search(r"^RssShmem:\s+(\d+) kB$", status, re.MULTILINE)
    assert match is not None, "this kernel's /proc/self/status has no RssShmem"
    return int(match.group(1)) * 1024


def test_populate_makes_every_page_resident_before_anything_writes_it() -> None:
    with Segment("test-populate", 48 * MiB) as segment:
        before = _shared_resident_bytes()
        assert segment.populate()
        grown = _shared_resident_bytes() - before
        assert grown >= 48 * MiB - 64 * 1024, f"only {grown} bytes became resident"
        assert bytes(segment.buffer[-4096:]) == bytes(4096), "populated pages read as zeros"


def test_populate_of_a_closed_segment_does_nothing_and_says_so() -> None:
    segment = Segment("test-populate-closed", 4 * MiB)
    segment.close()
    before = _shared_resident_bytes()
    assert not segment.populate()
    assert _shared_resident_bytes() - before < MiB


def _mapped(name: str) -> bool:
    return f"/memfd:{name} " in Path("/proc/self/maps").read_text() + " "


def test_a_segment_closed_while_it_is_populated_is_unmapped_when_the_population_stops() -> None:
    """close() cannot unmap while the kernel fills the mapping; the population then unmaps it itself,
    without waiting for the collector (a daemon may run with it off)."""
    import gc
    import threading

    name = "test-populate-race"
    segment = Segment(name, 512 * MiB)
    started = threading.Event()

    def populate() -> None:
        started.set()
        segment.populate()

    gc.disable()
    try:
        thread = threading.Thread(target=populate)
        thread.start()
        started.wait()
        segment.close()
        thread.join()
        assert not _mapped(name), "the ring outlived its close"
    finally:
        gc.enable()
