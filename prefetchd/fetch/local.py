"""Local files as a source (`file://` URLs and plain paths), read with pread in worker threads.

The loop never blocks on the disk: every stat and read runs in the loop's default executor. The version
pins inode, size and mtime, so a file replaced mid-epoch fails the epoch as an overwritten S3 object does.
"""

from __future__ import annotations

import asyncio
import errno
import os
import stat

from prefetchd_client.errors import AccessDenied, ObjectChanged, ObjectNotFound, SourceError

from .source import ObjectInfo, local_path


def _version(st: os.stat_result) -> str:
    return f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"


def _translate(exc: OSError, url: str) -> SourceError:
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return ObjectNotFound(f"{url}: no such file — check the path", url=url)
    if exc.errno in (errno.EACCES, errno.EPERM):
        return AccessDenied(f"{url}: permission denied for the daemon's user", url=url)
    if exc.errno == errno.EISDIR:
        return ObjectNotFound(f"{url} is a directory, not a file", url=url)
    return SourceError(f"{url}: {exc.strerror}", url=url)


class LocalSource:
    """Reads files the daemon can see; paths are resolved in the daemon's filesystem, not the client's."""

    async def stat(self, url: str) -> ObjectInfo:
        path = local_path(url)
        try:
            st = await asyncio.to_thread(os.stat, path)
        except OSError as exc:
            raise _translate(exc, url) from exc
        if not stat.S_ISREG(st.st_mode):
            raise ObjectNotFound(f"{url} is not a regular file", url=url)
        return ObjectInfo(url, st.st_size, _version(st))

    async def read_range(self, info: ObjectInfo, start: int, out: memoryview) -> None:
        await asyncio.to_thread(self._read_range, info, start, out)

    async def open(self, url: str, head_bytes: int) -> tuple[ObjectInfo, bytes]:
        info = await self.stat(url)
        head = bytearray(min(head_bytes, info.size))
        if head:
            await self.read_range(info, 0, memoryview(head))
        return info, bytes(head)

    def _read_range(self, info: ObjectInfo, start: int, out: memoryview) -> None:
        try:
            fd = os.open(local_path(info.url), os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise _translate(exc, info.url) from exc
        try:
            if _version(os.fstat(fd)) != info.version:
                raise ObjectChanged(
                    f"{info.url} changed after the stream opened it; reopen the stream to read the new file",
                    url=info.url,
                    offset=start,
                )
            done = 0
            while done < len(out):
                n = os.preadv(fd, [out[done:]], start + done)
                if n == 0:
                    raise ObjectChanged(
                        f"{info.url} ended at byte {start + done}, before the {info.size} bytes it had at open",
                        url=info.url,
                        offset=start + done,
                    )
                done += n
        finally:
            os.close(fd)
