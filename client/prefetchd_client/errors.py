"""Every error prefetchd raises, on both sides of the socket.

Errors cross the socket as data (code, message, url, offset) and are rebuilt here as the same class, so a
trainer catches `ObjectNotFound` whether the daemon or the client noticed it. Each class says whose fault it
was: `StreamClosed` (you closed it) is not `DaemonUnavailable` (the daemon died or was never there), and a
malformed frame we sent (`LocalProtocolError`) is not one we received (`RemoteProtocolError`).
"""

from __future__ import annotations

from typing import Any, ClassVar


class PrefetchdError(Exception):
    """Base of the tree; `code` names the class on the wire, `url` and `offset` say where it happened."""

    code: ClassVar[str] = "internal"

    def __init__(self, message: str, *, url: str | None = None, offset: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.url = url
        self.offset = offset

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:
        # by class, not code: the daemon's own subclasses (ConfigError, ...) are not in ERROR_CLASSES
        return (_unpickle, (type(self), self.message, self.url, self.offset))

    def to_wire(self) -> dict[str, Any]:
        """The fields an `error` frame carries."""
        return {"code": self.code, "message": self.message, "url": self.url, "offset": self.offset}


class SourceError(PrefetchdError):
    """The object could not be read; the message names it and says what to check."""

    code = "source_error"


class ObjectNotFound(SourceError):
    """The bucket or key does not exist (HTTP 404), or a local path is missing."""

    code = "object_not_found"


class AccessDenied(SourceError):
    """The daemon's credentials may not read the object (HTTP 403)."""

    code = "access_denied"


class ObjectChanged(SourceError):
    """The object was overwritten after the stream pinned its version (ETag); the epoch cannot be trusted."""

    code = "object_changed"


class SourceUnavailable(SourceError):
    """The store did not answer well enough after the retry policy's attempts (network, 5xx, throttling)."""

    code = "source_unavailable"


class FormatError(PrefetchdError):
    """The bytes are not what the format says they must be; `url` and `offset` locate the bad bytes."""

    code = "format_error"


class CorruptRecord(FormatError):
    """A RecordIO record is malformed: bad magic, truncated, or its parts do not join."""

    code = "corrupt_record"


class UndecodableImage(FormatError):
    """A record's image bytes are not an image the decoder can read (or are too small for the crop)."""

    code = "undecodable_image"


class InvalidRequest(PrefetchdError):
    """The stream's arguments cannot be served (bad batch size, unknown format, unsupported URL scheme...)."""

    code = "invalid_request"


class LimitExceeded(InvalidRequest):
    """The stream would pass one of the daemon's per-client caps (open streams, ring memory); the message names it."""

    code = "limit_exceeded"


class ProtocolError(PrefetchdError):
    """A frame broke the control protocol; see the two subclasses for whose fault it was."""

    code = "protocol_error"


class LocalProtocolError(ProtocolError):
    """We sent something the peer could not accept (a bug on our side, or a version we do not share)."""

    code = "local_protocol_error"


class RemoteProtocolError(ProtocolError):
    """The peer sent something we cannot accept (a bug on its side, or a version we do not share)."""

    code = "remote_protocol_error"


class DaemonUnavailable(PrefetchdError):
    """No daemon answers at the socket, or the daemon died mid-stream; start one with `prefetchd serve`."""

    code = "daemon_unavailable"


class StreamClosed(PrefetchdError):
    """The stream was closed by this process; open a new one."""

    code = "stream_closed"


class BatchTimeout(PrefetchdError):
    """No batch arrived within the deadline; the daemon is alive but the store is too slow or stuck."""

    code = "batch_timeout"


class IncompatibleState(PrefetchdError):
    """A saved iterator state belongs to other data, other settings or a newer client; the message names what."""

    code = "incompatible_state"


class DaemonError(PrefetchdError):
    """The daemon failed in a way it did not expect; its log has the traceback."""

    code = "internal"


def _subclasses(cls: type[PrefetchdError]) -> list[type[PrefetchdError]]:
    found = [cls]
    for sub in cls.__subclasses__():
        found.extend(_subclasses(sub))
    return found


ERROR_CLASSES: dict[str, type[PrefetchdError]] = {
    cls.code: cls for cls in _subclasses(PrefetchdError) if cls is not PrefetchdError
}


def _rebuild(code: str, message: str, url: str | None, offset: int | None) -> PrefetchdError:
    return ERROR_CLASSES.get(code, DaemonError)(message, url=url, offset=offset)


def _unpickle(cls: type[PrefetchdError], message: str, url: str | None, offset: int | None) -> PrefetchdError:
    return cls(message, url=url, offset=offset)


def error_from_wire(fields: dict[str, Any], *, sent_by_peer: bool = True) -> PrefetchdError:
    """Rebuild the error a peer reported as the class it named.

    The peer's `protocol_error` means *we* broke the protocol, so it comes back as `LocalProtocolError`;
    a peer owning up to its own `local_protocol_error` comes back as `RemoteProtocolError`.
    """
    code = str(fields.get("code", "internal"))
    if sent_by_peer and code in ("protocol_error", "remote_protocol_error"):
        code = LocalProtocolError.code
    elif sent_by_peer and code == LocalProtocolError.code:
        code = RemoteProtocolError.code
    url = fields.get("url")
    offset = fields.get("offset")
    return _rebuild(
        code,
        str(fields.get("message", "")),
        url if isinstance(url, str) else None,
        offset if isinstance(offset, int) else None,
    )
