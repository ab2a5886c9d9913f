"""`open("s3://…", "wb")` and `open("s3://…", "rb")` through the daemon: files whose credentials stay there.

Writing: the daemon hands over a part buffer (shared memory, docs/format.md section 3.7); `write()` copies
into it, and each full slot is sent as the next part of a multipart upload. `close()` commits: the object
appears at the URL whole, and `result` holds its size and ETag. Leaving a `with` block by an exception,
`abort()`, dropping the file unclosed, or the death of this process or the daemon aborts instead, and no
object appears at the key. Reading streams the object's bytes through the ring (a `bytes` stream).
"""

from __future__ import annotations

import io
import mmap
import os
from collections import deque
from types import TracebackType
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .autostart import connect
from .errors import LocalProtocolError, PrefetchdError, RemoteProtocolError, StreamClosed
from .iterator import DEFAULT_TIMEOUT_S, BatchIterator, bytes_iter
from .protocol import Close, Commit, Message, Part, PartFree, Upload, Uploaded, UploadReady

READ_BATCH_BYTES = 8 << 20


def open(
    url: str,
    mode: str = "rb",
    *,
    size_hint: int | None = None,
    socket_path: str | os.PathLike[str] | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    autostart: bool | None = None,
) -> ObjectWriter | ObjectReader:
    """A binary file over the S3 object at `url`, read or written by the daemon: mode "rb" or "wb"."""
    if mode == "wb":
        return ObjectWriter(url, size_hint=size_hint, socket_path=socket_path, timeout_s=timeout_s, autostart=autostart)
    if mode == "rb":
        return ObjectReader(url, socket_path=socket_path, timeout_s=timeout_s, autostart=autostart)
    raise ValueError(f"mode {mode!r}: prefetchd_client.open reads ('rb') or writes ('wb') whole objects")


class ObjectWriter(io.RawIOBase):
    """Writes one S3 object through the daemon; `close()` commits, an exception or `abort()` leaves no object."""

    def __init__(
        self,
        url: str,
        *,
        size_hint: int | None = None,
        socket_path: str | os.PathLike[str] | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        autostart: bool | None = None,
    ) -> None:
        super().__init__()
        self.url = url
        self.timeout_s = timeout_s
        self.result: Uploaded | None = None  # set by a successful close()
        self._conn = connect(socket_path, timeout_s=min(timeout_s, 30.0), autostart=autostart)
        try:
            self._conn.send(Upload(url, size_hint))
            ready = self._receive_ready(timeout_s)
            if not isinstance(ready, UploadReady):
                raise RemoteProtocolError(f"daemon answered Upload with {ready.TYPE}")
            fd = self._conn.take_fd()
            try:
                self._buffer = mmap.mmap(fd, ready.slots * ready.part_bytes, flags=mmap.MAP_SHARED)
            finally:
                os.close(fd)
        except BaseException:
            self._conn.close()
            raise
        self.part_bytes = ready.part_bytes
        self._free: deque[int] = deque(range(ready.slots))
        self._slot: int | None = None
        self._fill = 0  # bytes written into the current slot
        self._written = 0
        self._broken: PrefetchdError | None = None

    def _receive_ready(self, timeout_s: float) -> Message:
        try:
            return self._conn.receive(timeout_s=timeout_s, waiting_for="the upload to start")
        except LocalProtocolError as exc:
            if "unknown message type 'upload'" not in exc.message:
                raise
            raise LocalProtocolError(
                f"{self._conn.welcome.daemon} at {self._conn.path} takes no uploads (it predates them); "
                f"upgrade the prefetchd daemon to write {self.url}",
                url=self.url,
            ) from exc

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        """Copy `data` into the part buffer, sending each slot as it fills; returns len(data) in bytes."""
        self._check_usable()
        view = memoryview(data).cast("B")
        total = len(view)
        try:
            while view:
                if self._slot is None:
                    self._slot = self._take_free_slot()
                count = min(len(view), self.part_bytes - self._fill)
                start = self._slot * self.part_bytes + self._fill
                self._buffer[start : start + count] = view[:count]
                self._fill += count
                view = view[count:]
                if self._fill == self.part_bytes:
                    self._send_part()
        except PrefetchdError as exc:
            self._broken = exc
            raise
        self._written += total
        return total

    def tell(self) -> int:
        return self._written

    def _take_free_slot(self) -> int:
        while not self._free:
            message = self._conn.receive(timeout_s=self.timeout_s, waiting_for="the daemon to take a part")
            if not isinstance(message, PartFree):
                raise RemoteProtocolError(f"unexpected {message.TYPE} frame during an upload")
            self._free.append(message.slot)
        return self._free.popleft()

    def _send_part(self) -> None:
        assert self._slot is not None
        self._conn.send(Part(self._slot, self._fill))
        self._slot, self._fill = None, 0

    def close(self) -> None:
        """Send the last part and commit; returns once the object is in S3 (`result` says its size and ETag)."""
        if self.closed:
            return
        try:
            self._check_usable()
            if self._fill:
                self._send_part()
            self._conn.send(Commit())
            while True:
                message = self._conn.receive(timeout_s=self.timeout_s, waiting_for="the upload to complete")
                if isinstance(message, Uploaded):
                    self.result = message
                    break
                if not isinstance(message, PartFree):
                    raise RemoteProtocolError(f"unexpected {message.TYPE} frame while committing an upload")
        finally:
            self._release()

    def abort(self) -> None:
        """Give up: the daemon aborts the upload and nothing appears at the key."""
        if self.closed:
            return
        try:
            self._conn.send(Close())
        except PrefetchdError:
            pass  # the daemon is gone; it aborted (or could not) already
        finally:
            self._release()

    def _release(self) -> None:
        self._conn.close()
        self._buffer.close()
        super().close()

    def _check_usable(self) -> None:
        if self.closed:
            raise StreamClosed(f"the upload to {self.url} was closed; open a new one")
        if self._broken is not None:
            raise self._broken

    def __enter__(self) -> ObjectWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __del__(self) -> None:
        # unlike a local file, an upload dropped without close() is given up: half a checkpoint is worse than none
        if not getattr(self, "closed", True) and hasattr(self, "_buffer"):
            self.abort()

    def __repr__(self) -> str:
        return f"<ObjectWriter {self.url} written={self._written} part_bytes={self.part_bytes}>"


class ObjectReader(io.RawIOBase):
    """Reads one S3 object's bytes through the daemon, start to end (no seeking)."""

    def __init__(
        self,
        url: str,
        *,
        socket_path: str | os.PathLike[str] | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        autostart: bool | None = None,
        batch_bytes: int = READ_BATCH_BYTES,
    ) -> None:
        super().__init__()
        self.url = url
        self._batches: BatchIterator = bytes_iter(
            url, batch_bytes=batch_bytes, prefetch=2, socket_path=socket_path, timeout_s=timeout_s, autostart=autostart
        )
        self.size = int(self._batches.opened.objects["object"]["size"])
        self._pending: NDArray[np.uint8] = np.empty(0, np.uint8)  # the current batch's bytes not yet read
        self._read = 0
        self._delivered = 0  # bytes the batches so far brought

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        out = memoryview(buffer).cast("B")
        if not len(self._pending) and not self._next_batch():
            return 0
        count = min(len(out), len(self._pending))
        out[:count] = self._pending[:count].data
        self._pending = self._pending[count:]
        self._read += count
        return count

    def readall(self) -> bytes:
        pieces = [self._pending.tobytes()]
        while self._next_batch():
            pieces.append(self._pending.tobytes())  # a copy: the view is valid until the next batch only
        self._pending = self._pending[:0]
        data = b"".join(pieces)
        self._read += len(data)
        return data

    def _next_batch(self) -> bool:
        """Make the next batch's bytes pending; False at the end of the object."""
        if self.closed:
            raise StreamClosed(f"the download of {self.url} was closed; open a new one")
        if self._delivered >= self.size:
            return False
        batch = next(self._batches)
        self._pending = batch.data
        self._delivered += len(batch.data)
        return True

    def tell(self) -> int:
        return self._read

    def close(self) -> None:
        if not self.closed:
            self._pending = self._pending[:0]
            self._batches.close()
        super().close()

    def __enter__(self) -> ObjectReader:
        return self

    def __repr__(self) -> str:
        return f"<ObjectReader {self.url} read={self._read}/{self.size}>"
