"""The HTTP/1.1 a ranged GET needs, as pure functions: the request's bytes, and the response head parsed.

No sockets here (h11's lesson): `range_get.py` moves the bytes. Only what a ranged GET of an S3 object
meets is accepted; anything else (a chunked body, a missing Content-Length, a head over 64 KiB) is refused
with `MalformedResponse`, and the caller takes the careful path for that range.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

MAX_HEAD_BYTES = 64 << 10  # S3's response heads are well under 2 KiB
HEAD_END = b"\r\n\r\n"


class MalformedResponse(Exception):
    """The response head is not one a ranged GET may be read from."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where a URL's request goes: the connection's (scheme, host, port) and the request line's path."""

    scheme: str
    host: str
    port: int
    path_and_query: str

    @property
    def origin(self) -> tuple[str, str, int]:
        return (self.scheme, self.host, self.port)

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


def parse_target(url: str) -> Target:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} is not an http(s) URL")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    path = parts.path or "/"
    return Target(parts.scheme, parts.hostname, port, path + (f"?{parts.query}" if parts.query else ""))


def range_request(target: Target, first: int, last: int, if_match: str | None) -> bytes:
    """A keep-alive GET of bytes [first, last] of `target`, refused by the server if the ETag moved."""
    lines = [
        f"GET {target.path_and_query} HTTP/1.1",
        f"Host: {target.host_header}",
        f"Range: bytes={first}-{last}",
        "Accept-Encoding: identity",  # S3 never compresses, but a proxy might: the body must be the object's bytes
        "User-Agent: prefetchd",
    ]
    if if_match is not None:
        lines.append(f"If-Match: {if_match}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


@dataclass(frozen=True, slots=True)
class ResponseHead:
    status: int
    reason: str
    headers: dict[str, str]  # names lower-cased; a repeated header keeps its last value

    @property
    def content_length(self) -> int:
        value = self.headers.get("content-length")
        if value is None or not value.isdigit():
            raise MalformedResponse(f"HTTP {self.status} without a usable Content-Length ({value!r})")
        return int(value)

    @property
    def keep_alive(self) -> bool:
        return "close" not in self.headers.get("connection", "").lower()

    @property
    def content_range(self) -> str | None:
        return self.headers.get("content-range")

    @property
    def etag(self) -> str | None:
        return self.headers.get("etag")


def parse_head(data: bytes | bytearray | memoryview) -> ResponseHead:
    """Parse a response head: the bytes up to, not including, the blank line that ends it."""
    text = bytes(data).decode("latin-1")
    status_line, _, rest = text.partition("\r\n")
    version, _, status_and_reason = status_line.partition(" ")
    status_text, _, reason = status_and_reason.partition(" ")
    if version not in ("HTTP/1.1", "HTTP/1.0") or len(status_text) != 3 or not status_text.isdigit():
        raise MalformedResponse(f"not an HTTP/1.x status line: {status_line[:80]!r}")
    headers: dict[str, str] = {}
    for line in rest.split("\r\n") if rest else ():
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip() or any(c in name for c in " \t"):
            raise MalformedResponse(f"malformed header line: {line[:80]!r}")
        headers[name.lower()] = value.strip(" \t")
    if "chunked" in headers.get("transfer-encoding", "").lower():
        raise MalformedResponse("a chunked body; ranged GETs are read by Content-Length only")
    if version == "HTTP/1.0" and "keep-alive" not in headers.get("connection", "").lower():
        headers["connection"] = "close"
    return ResponseHead(int(status_text), reason, headers)


def expected_content_range(first: int, last: int, size: int) -> str:
    return f"bytes {first}-{last}/{size}"
