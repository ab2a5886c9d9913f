"""A stream's shared memory: an anonymous, sealed memfd that the daemon maps read-write.

There is no name, so nothing can leak or collide: the memory is freed when the daemon and the client have
both closed their descriptors and mappings, whichever way they die. The size is sealed (no shrink, no
grow), so a client cannot truncate the segment under the daemon (a SIGBUS, not an exception), and once the
daemon has mapped it, future writes are sealed too: the fd the client receives maps read-only or not at all.
"""

from __future__ import annotations

import ctypes
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

MADV_POPULATE_WRITE = 23  # linux/mman.h, Linux 5.14+; Python's mmap module names it from 3.13 on
_POPULATE_STEP = 8 << 20  # a closed segment stops the population within one step
_libc = ctypes.CDLL(None, use_errno=True)
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.madvise.restype = ctypes.c_int


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

    def populate(self) -> bool:
        """Have the kernel allocate and map every page now, a step at a time; meant for a thread (ctypes calls
        run without the GIL). False when the kernel cannot (before Linux 5.14) or the segment closed meanwhile.

        Why: a fresh page's first write costs a fault, ~3.4 µs a page on this VM, in whoever writes first (the
        loop receiving into a slot, a worker decoding into one). One madvise per 8 MiB costs less per page,
        and on a thread while the first GETs wait. A fresh stream reading the 1 GB .rec at 30 ms, medians of
        four runs: 753-945 MB/s without, 997-1,108 MB/s with (docs/benchmarks.md).
        """
        try:
            anchor = ctypes.c_char.from_buffer(self.map)  # holds the mapping while the kernel fills it
        except (ValueError, BufferError):
            return False  # closed already
        try:
            base = ctypes.addressof(anchor)
            for start in range(0, self.size, _POPULATE_STEP):
                if self._closed:
                    return False
                if _libc.madvise(base + start, min(_POPULATE_STEP, self.size - start), MADV_POPULATE_WRITE):
                    reason = os.strerror(ctypes.get_errno())
                    log.debug("no MADV_POPULATE_WRITE here (%s): pages fault in as they are written", reason)
                    return False
            return True
        finally:
            del anchor
            if self._closed:
                self._unmap()  # a close() meanwhile could not unmap while the kernel was filling the mapping

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
