"""Puts local files into S3: one PUT below the multipart threshold, else a multipart upload that never lingers.

Every part (or whole object) is read again and checked against the MD5 the plan was made from, and sent with
`Content-MD5`, so a file that changed since it was hashed fails its upload and S3 refuses bytes damaged on the
way. A multipart upload that fails or is cancelled (Ctrl-C) is aborted, so no partial object and no billed
orphan parts remain; the object at the key, if any, is left as it was.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
from pathlib import Path

from prefetchd_client.errors import ObjectChanged

from ..fetch.multipart import MultipartUpload
from ..fetch.s3 import S3Source
from .progress import Advance
from .sync import SHA256_METADATA, LocalFile, part_ranges

log = logging.getLogger("prefetchd.tools.upload")


class Uploader:
    """Uploads files to one bucket with at most `max_in_flight` parts (or small objects) read and sent at once.

    The bound holds the memory too: each request in flight holds one part's bytes.
    """

    def __init__(self, source: S3Source, bucket: str, *, max_in_flight: int, advance: Advance) -> None:
        self._source = source
        self._bucket = bucket
        self._slots = asyncio.Semaphore(max_in_flight)
        self._advance = advance

    async def upload(self, file: LocalFile) -> None:
        if file.multipart:
            await self._multipart(file)
        else:
            await self._put(file)

    async def _put(self, file: LocalFile) -> None:
        async with self._slots:
            body = await self._read(file, 0, file.size, file.part_md5s[0])
            await self._source.request(
                self._url(file),
                "put_object",
                Bucket=self._bucket,
                Key=file.key,
                Body=body,
                ContentMD5=_content_md5(file.part_md5s[0]),
                Metadata={SHA256_METADATA: file.sha256},
            )
        self._advance(file.size)

    async def _multipart(self, file: LocalFile) -> None:
        upload = MultipartUpload(self._source, self._url(file))
        await upload.create(metadata={SHA256_METADATA: file.sha256})
        try:
            await self._send_parts(file, upload)
            await upload.complete()
        except BaseException:
            await upload.abort()
            raise

    async def _send_parts(self, file: LocalFile, upload: MultipartUpload) -> None:
        """A slot is taken before a part's task starts, so tasks stay few."""

        async def send(number: int, start: int, length: int) -> None:
            body = await self._read(file, start, length, file.part_md5s[number - 1])
            await upload.send_part(number, body, content_md5=_content_md5(file.part_md5s[number - 1]))
            self._advance(length)

        try:
            async with asyncio.TaskGroup() as group:
                for number, (start, length) in enumerate(part_ranges(file.size, file.part_bytes), start=1):
                    await self._slots.acquire()
                    task = group.create_task(send(number, start, length))
                    task.add_done_callback(lambda _: self._slots.release())  # also for a task cancelled before it ran
        except BaseExceptionGroup as errors:
            error = first_error(errors)
            raise error from error.__cause__

    async def _read(self, file: LocalFile, start: int, length: int, md5: bytes) -> bytes:
        body = await asyncio.to_thread(_pread, file.path, start, length)
        if len(body) != length or hashlib.md5(body).digest() != md5:
            raise ObjectChanged(
                f"{file.path} changed while sync ran (bytes {start}-{start + length - 1} differ from when it was "
                f"hashed); nothing was uploaded for it — run sync again once it is written",
                url=str(file.path),
                offset=start,
            )
        return body

    def _url(self, file: LocalFile) -> str:
        return f"s3://{self._bucket}/{file.key}"


def first_error(errors: BaseExceptionGroup) -> BaseException:
    """The first failure a task group collected, unwrapped: the one the user is told about (the rest are logged)."""
    leaves: list[BaseException] = []

    def collect(group: BaseExceptionGroup) -> None:
        for error in group.exceptions:
            if isinstance(error, BaseExceptionGroup):
                collect(error)
            else:
                leaves.append(error)

    collect(errors)
    for other in leaves[1:]:
        log.warning("also failed: %s", other)
    return leaves[0]


def _pread(path: Path, start: int, length: int) -> bytes:
    with open(path, "rb") as f:
        return os.pread(f.fileno(), length, start)


def _content_md5(md5: bytes) -> str:
    return base64.b64encode(md5).decode("ascii")
