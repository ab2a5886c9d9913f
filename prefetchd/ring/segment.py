"""A stream's shared memory: an anonymous, sealed memfd that the daemon maps read-write.

There is no name, so nothing can leak or collide: the memory is freed when the daemon and the client have
both closed their descriptors and mappings, whichever way they die. The size is sealed (no shrink, no
grow), so a client cannot truncate the segment under the daemon (a SIGBUS, not an exception).
"""

from __future__ import annotations

import fcntl
import mmap
import os

_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL


class Segment:
    """A sealed memfd of `size` bytes and the daemon's read-write mapping of it."""

    def __init__(self, name: str, size: int) -> None:
        self.size = size
        self.fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(self.fd, size)
            fcntl.fcntl(self.fd, fcntl.F_ADD_SEALS, _SEALS)
            self.map = mmap.mmap(self.fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(self.fd)
            raise
        self.buffer = memoryview(self.map)
        self._closed = False

    def close(self) -> None:
        """Drop the daemon's hold; the memory goes when the client lets go too."""
        if self._closed:
            return
        self._closed = True
        self.buffer.release()
        try:
            self.map.close()
        except BufferError:
            pass  # a numpy view still exists (a decode thread finishing); the mapping goes with it
        os.close(self.fd)

    def __enter__(self) -> Segment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
