"""A stream's shared memory: an anonymous, sealed memfd that the daemon maps read-write.

There is no name, so nothing can leak or collide: the memory is freed when the daemon and the client have
both closed their descriptors and mappings, whichever way they die. The size is sealed (no shrink, no
grow), so a client cannot truncate the segment under the daemon (a SIGBUS, not an exception), and once the
daemon has mapped it, future writes are sealed too: the fd the client receives maps read-only or not at all.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import mmap
import os

log = logging.getLogger("prefetchd.ring.segment")

# memfd_create makes the file 0777: a process of another uid that gets hold of the fd's /proc path could
# reopen it. The descriptor we pass is what grants access; nobody else may open the file by name.
SEGMENT_MODE = 0o600
F_SEAL_FUTURE_WRITE = 0x0010  # linux/fcntl.h, Linux 5.1+; Python's fcntl module does not name it
_SIZE_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
_SEALS = _SIZE_SEALS | F_SEAL_FUTURE_WRITE | fcntl.F_SEAL_SEAL


def _seal(fd: int) -> None:
    try:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        log.warning("this kernel has no F_SEAL_FUTURE_WRITE (Linux < 5.1): clients could map the ring writable")
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SIZE_SEALS | fcntl.F_SEAL_SEAL)


class Segment:
    """A sealed memfd of `size` bytes and the daemon's read-write mapping of it."""

    def __init__(self, name: str, size: int, *, seal: bool = True) -> None:
        self.size = size
        self.fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.fchmod(self.fd, SEGMENT_MODE)
            os.ftruncate(self.fd, size)
            self.map = mmap.mmap(self.fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
            if seal:
                _seal(self.fd)  # after our own writable mapping: the future-write seal refuses any later one
        except BaseException:
            os.close(self.fd)
            raise
        self.buffer = memoryview(self.map)
        self._closed = False

    def seal(self) -> None:
        """Seal a segment made with `seal=False`, once every writer (decode workers) has mapped it."""
        _seal(self.fd)

    def seal_size(self) -> None:
        """Seal only the size of a segment made with `seal=False`: a buffer the client writes (uploads) and the
        daemon reads, which the client still cannot truncate under the daemon's mapping."""
        fcntl.fcntl(self.fd, fcntl.F_ADD_SEALS, _SIZE_SEALS | fcntl.F_SEAL_SEAL)

    def close(self) -> None:
        """Drop the daemon's hold, descriptor and mapping; the memory goes when the client lets go too."""
        if self._closed:
            return
        self._closed = True
        os.close(self.fd)
        if self._unmap():
            return
        # Something still views it: a read cancelled with the stream that has not let go yet (a worker thread's
        # pread, a connection's protocol until its transport closes). The mapping, and mmap's duplicate of the
        # descriptor, go with the last view; nobody waits. Views kept in reference cycles would stay until a
        # collection: serve/stream.py releases the frames of cancelled fills so that none are.
        log.debug("a ring of %d bytes is still viewed in the daemon; its memory goes with the last view", self.size)

    def _unmap(self) -> bool:
        """Release our view and the mapping; False while some array or slice still refers to it."""
        try:
            self.buffer.release()
            self.map.close()
        except BufferError:
            return False
        return True

    def __enter__(self) -> Segment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
