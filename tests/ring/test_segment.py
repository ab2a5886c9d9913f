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
