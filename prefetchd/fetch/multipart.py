"""One S3 multipart upload through `S3Source.request`: create, send parts, complete, or abort.

Its owner aborts it on any failure or cancellation, so that no partial object and no billed orphan parts
remain. Only a process killed outright (SIGKILL, OOM) leaves an incomplete upload behind; the bucket's
lifecycle rule `AbortIncompleteMultipartUpload` removes those (README, "Checkpoints to s3://").
"""

from __future__ import annotations

import asyncio
import logging

from .s3 import S3Source
from .source import parse_s3_url

log = logging.getLogger("prefetchd.fetch.multipart")

MIN_PART_BYTES = 5 << 20  # S3: every part but the last is at least 5 MiB (EntityTooSmall otherwise)
MAX_PARTS = 10_000  # S3: part numbers run from 1 to 10,000
ABORT_TIMEOUT_S = 30.0  # an abort during shutdown must not hold the daemon forever


class MultipartUpload:
    """An upload to `url` once `create()` has run; parts may be sent concurrently, in any order."""

    def __init__(self, source: S3Source, url: str) -> None:
        self.source = source
        self.url = url
        location = parse_s3_url(url)
        self.bucket, self.key = location.bucket, location.key
        self.upload_id: str | None = None
        self._etags: dict[int, str] = {}

    async def create(self, metadata: dict[str, str] | None = None) -> None:
        """Start the upload; `metadata` becomes the object's user metadata (x-amz-meta-*)."""
        extra = {"Metadata": metadata} if metadata else {}
        created = await self.source.request(
            self.url, "create_multipart_upload", Bucket=self.bucket, Key=self.key, **extra
        )
        self.upload_id = str(created["UploadId"])

    async def send_part(self, number: int, body: bytes, *, content_md5: str | None = None) -> None:
        """Send part `number`; with `content_md5` (base64) S3 refuses a body damaged on the way."""
        extra = {"ContentMD5": content_md5} if content_md5 else {}
        answer = await self.source.request(
            self.url,
            "upload_part",
            Bucket=self.bucket,
            Key=self.key,
            UploadId=self.upload_id,
            PartNumber=number,
            Body=body,
            **extra,
        )
        self._etags[number] = str(answer["ETag"])

    async def complete(self) -> str:
        """Make the object visible from every part sent; returns its ETag."""
        parts = [{"ETag": self._etags[number], "PartNumber": number} for number in sorted(self._etags)]
        answer = await self.source.request(
            self.url,
            "complete_multipart_upload",
            Bucket=self.bucket,
            Key=self.key,
            UploadId=self.upload_id,
            MultipartUpload={"Parts": parts},
        )
        return str(answer.get("ETag", ""))

    async def abort(self) -> None:
        """Drop the parts; a failure here is logged, never raised (the original failure is the one to report)."""
        if self.upload_id is None:
            return
        try:
            async with asyncio.timeout(ABORT_TIMEOUT_S):
                await self.source.request(
                    self.url, "abort_multipart_upload", Bucket=self.bucket, Key=self.key, UploadId=self.upload_id
                )
        except Exception as exc:
            log.warning(
                "%s: could not abort multipart upload %s (%s); its parts stay until aborted or a lifecycle rule "
                "(AbortIncompleteMultipartUpload) removes them",
                self.url,
                self.upload_id,
                exc,
            )
        else:
            log.info("%s: multipart upload %s aborted", self.url, self.upload_id)
