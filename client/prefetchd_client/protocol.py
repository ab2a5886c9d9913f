"""The control protocol between trainer and daemon: the one definition both sides import (sans-IO).

A frame is a 4-byte little-endian length, then that many bytes of UTF-8 JSON holding one object whose
`type` names the message. Bytes go in through `FrameReader.feed()`, messages come out of `next_message()`,
and `encode()` turns a message into a frame. Nothing here touches a socket, a clock or a logger, so every
rule is tested with plain function calls; docs/format.md draws the frames byte by byte.

Conversation (C = client, D = daemon):

    C: Hello      D: Welcome            version handshake; a mismatch is an Error and the connection closes
    C: Open       D: Opened (+ ring fd) one stream per connection; the ring's memfd rides on this frame
    D: Batch ...  C: Release ...        a slot is the client's from Batch until its Release
    D: EndOfEpoch                       then the daemon goes on with the next epoch
    C: Seek       D: Batch ...          drop what is in flight and restart at (epoch, batch)
    C: Close                            or just close the socket
    D: Error                            `fatal` errors end the stream; the daemon keeps serving others

A connection may write an object instead of reading one (docs/format.md section 3.7):

    C: Upload     D: UploadReady (+ fd) the part buffer: a memfd of `slots` × `part_bytes` the client writes
    C: Part ...   D: PartFree ...       slot `slot` holds the next part; the daemon has copied it out
    C: Commit     D: Uploaded           the object exists at the URL; a Close or an EOF before it aborts
"""

from __future__ import annotations

import dataclasses
import enum
import json
import struct
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .errors import RemoteProtocolError

PROTOCOL_VERSION = 2  # bumped on any incompatible change to the messages below (2: shuffle_window)
LENGTH_PREFIX = struct.Struct("<I")
MAX_FRAME_BYTES = 1 << 20  # a frame larger than this is refused before it is buffered


class Sentinel(enum.Enum):
    """What `FrameReader.next_message()` returns when it has no message to give."""

    NEED_DATA = "need_data"
    PEER_CLOSED = "peer_closed"


NEED_DATA = Sentinel.NEED_DATA
PEER_CLOSED = Sentinel.PEER_CLOSED


@dataclass(frozen=True, slots=True)
class Hello:
    """C→D, first frame: the versions the client speaks."""

    TYPE: ClassVar[str] = "hello"
    protocol: int
    ring_format: int
    client: str
    pid: int


@dataclass(frozen=True, slots=True)
class Welcome:
    """D→C: the handshake succeeded."""

    TYPE: ClassVar[str] = "welcome"
    protocol: int
    ring_format: int
    daemon: str
    pid: int


@dataclass(frozen=True, slots=True)
class Open:
    """C→D: what to read and how to batch it. `sources` maps a role ("image", "label") to a URL."""

    TYPE: ClassVar[str] = "open"
    format: str
    sources: dict[str, str]
    batch_size: int
    shuffle: bool = False
    reshuffle: bool = True  # a new permutation each epoch; MXNet's MNISTIter keeps one for all epochs
    seed: int = 0
    num_parts: int = 1
    part_index: int = 0
    epoch: int = 0
    batch: int = 0
    last_batch: str = "discard"
    prefetch: int = 4
    decode: dict[str, Any] = field(default_factory=dict)
    shuffle_window: int = 0  # records per shuffle window; 0: the daemon's choice (a resumed stream pins its own)


@dataclass(frozen=True, slots=True)
class Opened:
    """D→C: the stream exists; its ring is the memfd that rides on this frame."""

    TYPE: ClassVar[str] = "opened"
    stream: int
    segment_bytes: int
    batches_per_epoch: int
    samples_per_epoch: int
    objects: dict[str, dict[str, Any]]
    shuffle_window: int = 0  # records per shuffle window the stream's order uses; 0 when it is not shuffled


@dataclass(frozen=True, slots=True)
class Batch:
    """D→C: slot `slot` holds batch `seq` of `epoch`; `fill` must match the slot header."""

    TYPE: ClassVar[str] = "batch"
    slot: int
    fill: int
    epoch: int
    seq: int


@dataclass(frozen=True, slots=True)
class EndOfEpoch:
    """D→C: every batch of `epoch` has been sent."""

    TYPE: ClassVar[str] = "end_of_epoch"
    epoch: int
    batches: int


@dataclass(frozen=True, slots=True)
class Release:
    """C→D: the client is done with the slot; the daemon may refill it."""

    TYPE: ClassVar[str] = "release"
    slot: int
    fill: int


@dataclass(frozen=True, slots=True)
class Seek:
    """C→D: drop everything in flight and continue from batch `batch` of `epoch`."""

    TYPE: ClassVar[str] = "seek"
    epoch: int
    batch: int = 0


@dataclass(frozen=True, slots=True)
class Close:
    """C→D: the client is done with the stream."""

    TYPE: ClassVar[str] = "close"


@dataclass(frozen=True, slots=True)
class Error:
    """Either way: what went wrong, to which object, at which byte. `fatal` ends the stream."""

    TYPE: ClassVar[str] = "error"
    code: str
    message: str
    url: str | None = None
    offset: int | None = None
    fatal: bool = True


@dataclass(frozen=True, slots=True)
class Upload:
    """C→D, instead of `open`: write one object at `url`; `size_hint` (bytes, if known) sizes the parts."""

    TYPE: ClassVar[str] = "upload"
    url: str
    size_hint: int | None = None


@dataclass(frozen=True, slots=True)
class UploadReady:
    """D→C: the part buffer rides on this frame, a memfd of `slots` slots of `part_bytes` the client may write."""

    TYPE: ClassVar[str] = "upload_ready"
    upload: int
    part_bytes: int
    slots: int


@dataclass(frozen=True, slots=True)
class Part:
    """C→D: the first `length` bytes of slot `slot` are the object's next part (parts come in order)."""

    TYPE: ClassVar[str] = "part"
    slot: int
    length: int


@dataclass(frozen=True, slots=True)
class PartFree:
    """D→C: the daemon has taken the part in `slot`; the client may write the slot again."""

    TYPE: ClassVar[str] = "part_free"
    slot: int


@dataclass(frozen=True, slots=True)
class Commit:
    """C→D: every part has been sent; make the object visible at the URL."""

    TYPE: ClassVar[str] = "commit"


@dataclass(frozen=True, slots=True)
class Uploaded:
    """D→C: the object is at `url`, `size` bytes, with S3's `etag`; the connection then closes."""

    TYPE: ClassVar[str] = "uploaded"
    url: str
    size: int
    etag: str


Message = (
    Hello
    | Welcome
    | Open
    | Opened
    | Batch
    | EndOfEpoch
    | Release
    | Seek
    | Close
    | Error
    | Upload
    | UploadReady
    | Part
    | PartFree
    | Commit
    | Uploaded
)
MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        Hello,
        Welcome,
        Open,
        Opened,
        Batch,
        EndOfEpoch,
        Release,
        Seek,
        Close,
        Error,
        Upload,
        UploadReady,
        Part,
        PartFree,
        Commit,
        Uploaded,
    )
}


def _field_checkers(cls: type[Message]) -> dict[str, tuple[type, ...]]:
    """Map each field to the JSON types it accepts, from the dataclass annotations."""
    hints = typing.get_type_hints(cls)
    checkers: dict[str, tuple[type, ...]] = {}
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
        checkers[f.name] = tuple(typing.get_origin(o) or o for o in options)
    return checkers


_CHECKERS = {name: _field_checkers(cls) for name, cls in MESSAGE_TYPES.items()}
_FIELD_NAMES = {name: tuple(f.name for f in dataclasses.fields(cls)) for name, cls in MESSAGE_TYPES.items()}


def _accepts(value: Any, allowed: tuple[type, ...]) -> bool:
    for kind in allowed:
        if kind is type(None) and value is None:
            return True
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        if kind in (str, bool, dict, list) and isinstance(value, kind):
            return True
        if kind is Any:
            return True
    return False


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Duplicate keys are refused: parsers disagree on which one wins."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen = [key for key, _ in pairs]
        raise ValueError(f"duplicate keys {sorted({k for k in seen if seen.count(k) > 1})}")
    return obj


def _shown(value: Any) -> str:
    """A bad value as an error message quotes it: never more than a line."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# made once: json.dumps/json.loads with options build a new encoder/decoder on every call
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, object_pairs_hook=_refuse_duplicates)


def encode(message: Message) -> bytes:
    """One frame: length prefix and JSON body."""
    body = {"type": message.TYPE}
    for name in _FIELD_NAMES[message.TYPE]:  # shallow: json.dumps copies nothing, and asdict's deep copy costs
        body[name] = getattr(message, name)
    payload = _ENCODER.encode(body).encode()
    if len(payload) > MAX_FRAME_BYTES:
        raise ValueError(f"{message.TYPE} frame of {len(payload)} bytes exceeds {MAX_FRAME_BYTES}")
    return LENGTH_PREFIX.pack(len(payload)) + payload


def decode_body(payload: bytes) -> Message:
    """Parse and validate one frame body; anything off is a `RemoteProtocolError` naming what."""
    try:
        text = payload.decode("utf-8")  # json.loads(bytes) would also take UTF-16 and UTF-32
    except UnicodeDecodeError as exc:
        raise RemoteProtocolError(f"frame body is not UTF-8: {exc}") from exc
    try:
        obj = _DECODER.decode(text)
    except (ValueError, RecursionError) as exc:  # also a 4300-digit int, or arrays nested thousands deep
        raise RemoteProtocolError(f"frame body is not JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise RemoteProtocolError(f"frame holds a JSON {type(obj).__name__}, not an object")
    if "type" not in obj:
        raise RemoteProtocolError("frame object has no type field")
    kind = obj.pop("type")
    cls = MESSAGE_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise RemoteProtocolError(f"unknown message type {_shown(kind)}")
    checkers = _CHECKERS[cls.TYPE]
    unknown = sorted(set(obj) - set(checkers))
    if unknown:
        raise RemoteProtocolError(f"{kind} frame has unknown fields {unknown}")
    for name, value in obj.items():
        if not _accepts(value, checkers[name]):
            raise RemoteProtocolError(f"{kind}.{name} has the wrong type: {_shown(value)}")
    try:
        return cls(**obj)
    except TypeError as exc:  # a required field is missing
        raise RemoteProtocolError(f"{kind} frame is incomplete: {exc}") from exc


class FrameReader:
    """Buffers bytes from the peer and cuts them into messages. `feed(b"")` means the peer closed."""

    def __init__(self, max_frame_bytes: int = MAX_FRAME_BYTES) -> None:
        self._buffer = bytearray()
        self._closed = False
        self._max_frame_bytes = max_frame_bytes

    def feed(self, data: bytes) -> None:
        if not data:
            self._closed = True
            return
        if self._closed:
            raise RuntimeError("received data after the peer closed")
        self._buffer += data

    @property
    def buffered_bytes(self) -> int:
        return len(self._buffer)

    def next_message(self) -> Message | Sentinel:
        """The next whole message, `NEED_DATA` if it has not all arrived, or `PEER_CLOSED` at a clean EOF."""
        if len(self._buffer) >= LENGTH_PREFIX.size:
            (length,) = LENGTH_PREFIX.unpack_from(self._buffer)
            if length > self._max_frame_bytes:
                raise RemoteProtocolError(f"frame of {length} bytes exceeds the {self._max_frame_bytes} limit")
            end = LENGTH_PREFIX.size + length
            if len(self._buffer) >= end:
                payload = bytes(self._buffer[LENGTH_PREFIX.size : end])
                del self._buffer[:end]
                return decode_body(payload)
        if self._closed:
            if self._buffer:
                raise RemoteProtocolError(f"peer closed the connection mid-frame ({len(self._buffer)} bytes)")
            return PEER_CLOSED
        return NEED_DATA
