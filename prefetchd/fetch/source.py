"""What a byte source is: a URL, its size and pinned version, and ranged reads into caller memory.

Above this module nothing knows whether bytes come from S3 or a local file. `SourceRouter` picks the
source by URL scheme: `s3://bucket/key`, `file:///path`, or a plain path.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import unquote, urlsplit

from prefetchd_client.errors import InvalidRequest


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """An object as it was when the stream opened it; reads must match `version` or fail."""

    url: str
    size: int
    version: str  # S3: the ETag; local files: inode, size and mtime

    def describe(self) -> dict[str, object]:
        return {"url": self.url, "size": self.size, "version": self.version}


class Source(Protocol):
    async def stat(self, url: str) -> ObjectInfo:
        """Size and version of the object; `ObjectNotFound`/`AccessDenied` if it cannot be read."""
        ...

    async def read_range(self, info: ObjectInfo, start: int, out: memoryview) -> None:
        """Fill `out` with the object's bytes from `start` on; `ObjectChanged` if its version moved."""
        ...

    async def open(self, url: str, head_bytes: int) -> tuple[ObjectInfo, bytes]:
        """`stat` and the first `head_bytes` bytes (all of them, if the object is shorter), in one round trip."""
        ...


@dataclass(frozen=True, slots=True)
class S3Location:
    bucket: str
    key: str

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def parse_s3_url(url: str) -> S3Location:
    parts = urlsplit(url)
    key = parts.path.lstrip("/")
    if parts.scheme != "s3" or not parts.netloc or not key:
        raise InvalidRequest(f"{url!r} is not an s3://bucket/key URL", url=url)
    return S3Location(parts.netloc, key)


def local_path(url: str) -> str:
    """The filesystem path of a `file://` URL or a plain path."""
    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise InvalidRequest(f"{url!r} names a remote host; file:// URLs must be local", url=url)
        return unquote(parts.path)
    return url


def scheme_of(url: str) -> str:
    if not url:
        raise InvalidRequest("empty source URL")
    scheme = urlsplit(url).scheme
    if scheme in ("", "file", "s3"):
        return scheme or "file"
    raise InvalidRequest(
        f"{url!r}: the {scheme}:// scheme is not supported; use s3://bucket/key, file:///path or a path",
        url=url,
    )


ReadRange = Callable[[ObjectInfo, int, memoryview], Awaitable[None]]  # fill the memoryview from that offset on
