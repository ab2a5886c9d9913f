"""One client's write of one S3 object: parts through a shared buffer, one multipart upload, all or nothing.

The daemon makes the part buffer (a memfd of `slots` slots of `part_bytes`, its size sealed so that the
client cannot truncate it under the daemon's mapping) and passes it with `upload_ready`. The client fills a
slot and sends `part`; the daemon copies the part out (botocore resends a body on a retry, so it must own
it), frees the slot with `part_free` and sends the part to S3, at most `MAX_PARTS_IN_FLIGHT` at once: the
daemon holds the buffer and at most that many parts per upload, and a client that writes faster waits for
a free slot. `commit` completes the upload and answers `uploaded`. A `close`, an EOF or the client's death
before it, a failed part, or the daemon's shutdown aborts the multipart upload, so nothing appears at the
key. An object that fits in one part is one PUT, which S3 makes visible whole or not at all.
"""

from __future__ import annotations

import asyncio
import logging
import math

from prefetchd_client.errors import InvalidRequest, RemoteProtocolError
from prefetchd_client.protocol import Close, Commit, Part, PartFree, Upload, Uploaded, UploadReady

from ..fetch.multipart import MAX_PARTS, MIN_PART_BYTES, MultipartUpload
from ..fetch.s3 import S3Source
from ..ring.segment import Segment
from ..tools.upload import first_error
from .peer import PeerConnection
from .stream import wait_for_exit

log = logging.getLogger("prefetchd.serve.upload")

PART_BYTES = 8 << 20  # aws-cli's default part size
MAX_PART_BYTES = 512 << 20  # an object of 5 TB (S3's largest) in 10,000 parts needs 525 MiB; we stop lower
BUFFER_SLOTS = 2  # the client fills one slot while the daemon copies the other out
MAX_PARTS_IN_FLIGHT = 2


def part_bytes_for(size_hint: int | None) -> int:
    """The part size: aws-cli's 8 MiB, or larger when the hinted size would need more than 10,000 parts."""
    if size_hint is None or size_hint <= PART_BYTES * MAX_PARTS:
        return PART_BYTES
    needed = math.ceil(size_hint / MAX_PARTS / (1 << 20)) << 20
    if needed > MAX_PART_BYTES:
        raise InvalidRequest(f"an upload of {size_hint} bytes needs parts over {MAX_PART_BYTES >> 20} MiB")
    return needed


def buffer_bytes_for(request: Upload) -> int:
    """The shared memory an upload holds, counted against the client's ring-memory cap."""
    return BUFFER_SLOTS * part_bytes_for(request.size_hint)


class UploadSession:
    """Receives one object's parts from `peer` and writes them to `url`; `run()` returns once it is done."""

    def __init__(self, upload_id: int, peer: PeerConnection, source: S3Source, request: Upload) -> None:
        self.id = upload_id
        self.peer = peer
        self.url = request.url
        self.part_bytes = part_bytes_for(request.size_hint)
        self.slots = BUFFER_SLOTS
        self._multipart = MultipartUpload(source, request.url)
        self._source = source
        self._in_flight = asyncio.Semaphore(MAX_PARTS_IN_FLIGHT)
        self._first: bytes | None = None  # part 1 waits for part 2: an object of one part is one PUT
        self._parts = 0
        self._bytes = 0
        self._last_was_short = False
        self._completed = False
        self._sending: list[asyncio.Task[None]] = []

    async def run(self) -> None:
        """Take the parts and complete the upload, or abort it whatever ended the conversation early."""
        segment = Segment(f"prefetchd-upload-{self.id}", self.slots * self.part_bytes, seal=False)
        try:
            segment.seal_size()
            await self.peer.send(UploadReady(self.id, self.part_bytes, self.slots), fds=(segment.fd,))
            log.info(
                "upload %d for pid %d: %s, parts of %d bytes",
                self.id,
                self.peer.credentials.pid,
                self.url,
                self.part_bytes,
            )
            committed = await self._receive_parts(segment)
            uploaded = await self._finish() if committed else None
        except BaseException:
            await self._abort("failed")
            raise
        finally:
            segment.close()
        if uploaded is None:
            await self._abort("the client left before committing")
            return
        log.info("upload %d: %s complete, %d bytes in %d parts", self.id, self.url, uploaded.size, self._parts)
        await self.peer.send(uploaded)

    async def _receive_parts(self, segment: Segment) -> bool:
        """True at `commit` once every part is in S3; False if the client closed, went away or exited first."""
        try:
            async with asyncio.TaskGroup() as group:
                watcher = group.create_task(wait_for_exit(self.peer.credentials.pid))
                receiver = group.create_task(self._receive(group, segment))
                done, _ = await asyncio.wait([watcher, receiver], return_when=asyncio.FIRST_COMPLETED)
                watcher.cancel()
                committed = receiver in done and receiver.result()
                if not committed:
                    if receiver not in done:
                        log.info("upload %d: client process %d exited", self.id, self.peer.credentials.pid)
                    for task in (receiver, *self._sending):
                        task.cancel()
                    return False
        except BaseExceptionGroup as errors:
            error = first_error(errors)
            raise error from error.__cause__
        return True  # the group has waited for every part

    async def _receive(self, group: asyncio.TaskGroup, segment: Segment) -> bool:
        while True:
            message = await self.peer.receive()
            if message is None or isinstance(message, Close):
                return False
            if isinstance(message, Commit):
                return True
            if not isinstance(message, Part):
                raise RemoteProtocolError(f"a {message.TYPE} frame is not expected during an upload")
            body = await self._take_part(message, segment)
            await self._start_part(group, body)

    async def _take_part(self, part: Part, segment: Segment) -> bytes:
        """Copy the part out of its slot (after waiting for room), and give the slot back to the client."""
        if not 0 <= part.slot < self.slots or not 0 < part.length <= self.part_bytes:
            raise RemoteProtocolError(f"part of {part.length} bytes in slot {part.slot}: outside the buffer")
        if self._last_was_short:
            raise RemoteProtocolError("a part came after a short one; only the last part may be shorter")
        if self._parts + 1 > MAX_PARTS:
            raise InvalidRequest(f"{self.url}: more than {MAX_PARTS} parts; give a size_hint", url=self.url)
        await self._in_flight.acquire()  # released when the part is in S3
        start = part.slot * self.part_bytes
        try:
            body = await asyncio.to_thread(bytes, segment.buffer[start : start + part.length])
        except BaseException:
            self._in_flight.release()
            raise
        self._last_was_short = part.length < self.part_bytes
        self._parts += 1
        self._bytes += part.length
        await self.peer.send(PartFree(part.slot))
        return body

    async def _start_part(self, group: asyncio.TaskGroup, body: bytes) -> None:
        if self._parts == 1:
            self._first = body  # keeps its permit until part 2 arrives or the commit PUTs it
            return
        if self._parts == 2:
            if len(self._first or b"") < MIN_PART_BYTES:
                raise RemoteProtocolError(f"a part of {len(self._first or b'')} bytes is below S3's 5 MiB minimum")
            await self._multipart.create()
            first, self._first = self._first or b"", None
            self._spawn(group, 1, first)
        self._spawn(group, self._parts, body)

    def _spawn(self, group: asyncio.TaskGroup, number: int, body: bytes) -> None:
        async def send() -> None:
            try:
                await self._multipart.send_part(number, body)
            finally:
                self._in_flight.release()

        self._sending.append(group.create_task(send()))

    async def _finish(self) -> Uploaded:
        if self._multipart.upload_id is None:  # zero or one part: one PUT, visible whole or not at all
            body, self._first = self._first or b"", None
            answer = await self._source.request(
                self.url, "put_object", Bucket=self._multipart.bucket, Key=self._multipart.key, Body=body
            )
            etag = str(answer.get("ETag", ""))
        else:
            etag = await self._multipart.complete()
        self._completed = True
        return Uploaded(self.url, self._bytes, etag)

    async def _abort(self, why: str) -> None:
        if self._completed:
            return
        self._completed = True  # once
        log.info("upload %d: %s: %s; aborting", self.id, self.url, why)
        await self._multipart.abort()
