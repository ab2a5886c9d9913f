"""MXNet RecordIO (`.rec`): record framing, image-record headers, `.idx` indexes and MXNet's partition rules.

Pure functions over bytes. A malformed record raises `CorruptRecord`; a malformed `.idx` raises `FormatError`
(its parent class). Each record on disk is `[u32 magic][u32 lrecord][payload][zero pad to 4 bytes]`,
little-endian; lrecord's top 3 bits are a continuation flag, its low 29 bits the payload length. The writer cuts a
payload at every 4-byte-aligned copy of the magic word (dropping that word), so the only aligned magic words in a
file are headers; readers join the parts with the magic put back. References: dmlc-core `include/dmlc/recordio.h`
and `src/recordio.cc` (the format), `src/io/input_split_base.cc`, `recordio_split.cc` and
`indexed_recordio_split.cc` (how ImageRecordIter's num_parts/part_index divide a file), and
`mxnet/python/mxnet/recordio.py` (IRHeader and the `.idx` lines).
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from prefetchd_client.errors import CorruptRecord, FormatError, InvalidRequest

MAGIC = 0xCED7230A  # dmlc-core recordio.h, RecordIOWriter::kMagic
MAGIC_BYTES = MAGIC.to_bytes(4, "little")
HEADER_BYTES = 8  # magic + lrecord
ALIGN_BYTES = 4  # payloads are zero-padded to this; every header starts on a multiple of it
LENGTH_BITS = 29
LENGTH_MASK = (1 << LENGTH_BITS) - 1

# Continuation flags, lrecord >> 29 (recordio.h): a payload with no aligned magic is one WHOLE part.
WHOLE, FIRST, MIDDLE, LAST = 0, 1, 2, 3
_FLAG_NAMES = {WHOLE: "whole", FIRST: "first", MIDDLE: "middle", LAST: "last"}

# mxnet/recordio.py `_IR_FORMAT = 'IfQQ'` (native there, the same 24 bytes on every platform MXNet ships for)
IMAGE_HEADER = struct.Struct("<IfQQ")

_HEADER = struct.Struct("<II")
_SCAN_WORDS = 16384  # find_record_start looks at 64 KiB at a time, so a near head is found without a full scan
_INDEX_LINE = re.compile(rb"\s*-?\d+\s+(\d+)\s*")
_INT64_MAX = (1 << 63) - 1


@dataclass(frozen=True, slots=True)
class Record:
    """One record's payload (parts joined) and the byte range its parts and padding take in the object."""

    offset: int  # absolute offset of its first header
    end: int  # absolute offset just past its last part's padding
    payload: bytes


@dataclass(frozen=True, slots=True, eq=False)
class ImageHeader:
    """MXNet's IRHeader; `label` holds the `flag` labels after the header when flag > 0, else the header's one."""

    flag: int
    label: NDArray[np.float32]  # shape (max(1, flag),)
    id: int
    id2: int


@dataclass(slots=True)
class _Joining:
    """A record being read part by part: where it starts, where its next header is, its payload spans so far."""

    start: int
    next_header: int
    spans: list[tuple[int, int]] = field(default_factory=list)

    def shift(self, by: int) -> None:
        self.start += by
        self.next_header += by
        self.spans = [(begin + by, end + by) for begin, end in self.spans]


class RecordFramer:
    """Cuts a byte stream delivered in chunks of any size into records.

    Linear in the bytes fed: a chunk is framed in place and only the unfinished record at its end is kept, so a
    byte is copied at most once before its record is complete. After it raises, a framer must not be fed again.
    """

    def __init__(self, *, url: str, start_offset: int = 0) -> None:
        self.url = url
        self._buffer = bytearray()  # the unfinished record's bytes received so far
        self._buffer_offset = start_offset  # absolute offset of _buffer[0]
        self._record: _Joining | None = None  # the unfinished record, always at _buffer[0]
        self._needed = 0  # how long _buffer must grow before framing can progress

    @property
    def offset(self) -> int:
        """Absolute offset of the first byte not yet returned in a record."""
        return self._buffer_offset

    def __repr__(self) -> str:
        return f"<RecordFramer {self.url} at byte {self._buffer_offset}, {len(self._buffer)} bytes buffered>"

    def feed(self, data: bytes | memoryview) -> list[Record]:
        """Take the next bytes of the stream; return the records they complete, in order."""
        records: list[Record] = []
        with _byte_view(data) as view:
            start = 0
            while self._buffer and start < len(view):
                # finish the record in progress with only the bytes it needs, then frame the rest in place
                take = min(self._needed - len(self._buffer), len(view) - start)
                self._buffer += view[start : start + take]
                start += take
                if len(self._buffer) >= self._needed:
                    with memoryview(self._buffer) as buffered:
                        done, consumed = self._frame(buffered)
                    records += done
                    del self._buffer[:consumed]
                    self._consumed(consumed)
            if not self._buffer:
                rest = view[start:]
                done, consumed = self._frame(rest)
                records += done
                self._buffer = bytearray(rest[consumed:])
                self._consumed(consumed)
        return records

    def finish(self) -> None:
        """The stream has ended: it must not end inside a record."""
        if self._buffer:
            end = self._buffer_offset + len(self._buffer)
            raise _truncated(self.url, self._buffer_offset, end, self._buffer_offset + self._needed)

    def _consumed(self, count: int) -> None:
        self._buffer_offset += count
        if self._record is not None and count:
            self._record.shift(-count)  # it started in the bytes just framed, so this stays linear

    def _frame(self, view: memoryview) -> tuple[list[Record], int]:
        """Frame the records complete in `view` (which starts at `_buffer_offset`); return them and their bytes."""
        records: list[Record] = []
        pos = 0
        while pos < len(view):
            if self._record is None:
                self._record = _Joining(pos, pos)
            needed = _read_parts(view, self._record, url=self.url, base_offset=self._buffer_offset)
            if needed:
                self._needed = needed - pos
                return records, pos
            records.append(_record(view, self._record, self._buffer_offset))
            pos = self._record.next_header
            self._record = None
        self._needed = 0
        return records, pos


def read_record(data: bytes | memoryview, pos: int, *, url: str, base_offset: int = 0) -> tuple[bytes, int]:
    """The joined payload of the record whose first header is at `data[pos]`, and the position just past it.

    For a byte range fetched through the index; `base_offset` is the absolute offset of `data[0]`.
    """
    with _byte_view(data) as view:
        record = _Joining(pos, pos)
        needed = _read_parts(view, record, url=url, base_offset=base_offset)
        if needed:
            raise _truncated(url, base_offset + pos, base_offset + len(view), base_offset + needed)
        return _payload(view, record.spans), record.next_header


def unpack_image(payload: bytes | memoryview, *, url: str, offset: int) -> tuple[ImageHeader, memoryview]:
    """Split an image record's payload into its IRHeader (labels included) and the encoded image (a view).

    `offset` is the record's offset in the object, for errors. Same result as `mxnet.recordio.unpack`.
    """
    view = _byte_view(payload)
    if len(view) < IMAGE_HEADER.size:
        raise CorruptRecord(
            _where(url, offset) + f"an image record starts with a {IMAGE_HEADER.size}-byte IRHeader "
            f"but this record's payload has {len(view)} bytes",
            url=url,
            offset=offset,
        )
    flag, label, record_id, record_id2 = IMAGE_HEADER.unpack_from(view)
    if flag == 0:
        return ImageHeader(0, np.array([label], dtype=np.float32), record_id, record_id2), view[IMAGE_HEADER.size :]
    labels_end = IMAGE_HEADER.size + 4 * flag
    if len(view) < labels_end:
        raise CorruptRecord(
            _where(url, offset) + f"the IRHeader says {flag} float32 labels follow it ({labels_end} bytes "
            f"with the header) but this record's payload has {len(view)} bytes",
            url=url,
            offset=offset,
        )
    labels = np.frombuffer(view, dtype="<f4", count=flag, offset=IMAGE_HEADER.size).astype(np.float32)
    return ImageHeader(flag, labels, record_id, record_id2), view[labels_end:]


def parse_index(text: bytes, *, url: str) -> NDArray[np.int64]:
    """The record offsets an `.idx` lists, in the order MXNet visits them: by offset, whatever the keys.

    dmlc's IndexedRecordIOSplitter reads `key offset` pairs, ignores the keys and sorts the offsets. It reads
    keys as unsigned integers and silently stops at the first one that is not, so such a line is an error here.
    Blank lines are skipped, as dmlc does.
    """
    offsets: list[int] = []
    line_start = 0
    for number, line in enumerate(text.split(b"\n"), start=1):
        if line.strip():
            match = _INDEX_LINE.fullmatch(line)
            if match is None or int(match[1]) > _INT64_MAX:
                shown = line[:80].decode("utf-8", "backslashreplace")
                raise FormatError(
                    f"{url} line {number}: expected 'key<TAB>offset' with an integer key and offset, "
                    f"as MXIndexedRecordIO writes, got {shown!r}",
                    url=url,
                    offset=line_start,
                )
            offsets.append(int(match[1]))
        line_start += len(line) + 1
    return np.sort(np.array(offsets, dtype=np.int64), kind="stable")


def record_spans(offsets: NDArray[np.int64], object_size: int, *, url: str | None = None) -> NDArray[np.int64]:
    """Each indexed record's byte length: up to the next offset, the last one up to the object's end.

    The offsets must be what `parse_index` returns for this object: sorted, distinct, 4-byte aligned, inside it.
    """
    if offsets.size == 0:
        return np.zeros(0, dtype=np.int64)
    lengths = np.append(offsets[1:], object_size) - offsets
    unaligned = np.flatnonzero(offsets % ALIGN_BYTES)
    if offsets[0] < 0 or unaligned.size:
        bad = int(offsets[0] if offsets[0] < 0 else offsets[unaligned[0]])
        raise FormatError(
            _where(url, bad) + f"the index lists offset {bad}, but records start at non-negative multiples of "
            f"{ALIGN_BYTES}; the index does not belong to this object",
            url=url,
            offset=bad,
        )
    short = np.flatnonzero(lengths < HEADER_BYTES)
    if short.size:
        entry = int(short[0])
        bad = int(offsets[entry])
        if entry + 1 < offsets.size:
            problem = f"is followed by offset {int(offsets[entry + 1])}: offsets must be sorted and distinct"
            if offsets[entry + 1] > offsets[entry]:
                problem = f"leaves {int(lengths[entry])} bytes before the next offset, too few for a record header"
        else:
            problem = f"leaves {int(lengths[entry])} bytes before the end of the {object_size}-byte object"
        raise FormatError(
            _where(url, bad) + f"index entry {entry} (in offset order) at offset {bad} {problem}",
            url=url,
            offset=bad,
        )
    return lengths


def index_byte_range(offsets: NDArray[np.int64], object_size: int, records: range) -> tuple[int, int]:
    """The bytes MXNet reads for index entries `records`: from the first one's offset up to the next entry's.

    MXNet reads every record in that range, including any the index leaves out.
    """

    def position(entry: int) -> int:
        return int(offsets[entry]) if entry < offsets.size else object_size

    return position(records.start), position(records.stop)


def index_partition(count: int, num_parts: int, part_index: int) -> range:
    """Which index entries (in offset order) part `part_index` of `num_parts` gets when ImageRecordIter has an .idx.

    dmlc IndexedRecordIOSplitter::ResetPartition: ceil(count / num_parts) entries per part, the last parts
    shorter or empty. MXNet 1.9.1 crashes on an empty part (segfault or bad_alloc), so refuse those upstream.
    """
    _check_part(num_parts, part_index)
    step = -(-count // num_parts)
    return range(min(step * part_index, count), min(step * (part_index + 1), count))


def byte_partition(object_size: int, num_parts: int, part_index: int) -> tuple[int, int]:
    """The nominal byte range of part `part_index` of `num_parts` when ImageRecordIter has no .idx.

    dmlc InputSplitBase::ResetPartition: ceil(size / num_parts) rounded up to 4 bytes per part. The part gets the
    records whose first header lies in [aligned begin, aligned end), each bound moved forward to the next record
    start with `find_record_start` (to the object's end when none follows; 0 and the object's end stay).
    MXNet 1.9.1's ImageRecordIter raises StopIteration when it is built on a part with no records.
    """
    _check_part(num_parts, part_index)
    if object_size < 0:
        raise ValueError(f"object_size must be >= 0, got {object_size}")
    step = -(-object_size // num_parts)
    step = -(-step // ALIGN_BYTES) * ALIGN_BYTES
    return min(step * part_index, object_size), min(step * (part_index + 1), object_size)


def find_record_start(data: bytes | memoryview, pos: int, *, base_offset: int = 0) -> int | None:
    """The position in `data` of the first record start at or after `pos`, as dmlc's SeekRecordBegin finds it.

    A record start is an aligned magic word whose next word has flag whole or first. `base_offset + pos` must be
    a multiple of 4. None when `data` holds no confirmed start: at the object's end that means the end; otherwise
    fetch more and scan again from the last aligned position at most `len(data) - 4` (a magic word in the last 4
    bytes needs its flag to be confirmed).
    """
    if pos < 0 or (base_offset + pos) % ALIGN_BYTES:
        raise ValueError(f"record starts are 4-byte aligned; cannot scan from byte {base_offset + pos}")
    with _byte_view(data) as view:
        words_end = pos + (len(view) - pos) // ALIGN_BYTES * ALIGN_BYTES
        start = pos
        while start + HEADER_BYTES <= words_end:
            stop = min(words_end, start + ALIGN_BYTES * (_SCAN_WORDS + 1))  # one word of overlap
            words = np.frombuffer(view[start:stop], dtype="<u4")
            heads = np.flatnonzero((words[:-1] == MAGIC) & ((words[1:] >> LENGTH_BITS) <= FIRST))
            if heads.size:
                return start + ALIGN_BYTES * int(heads[0])
            start = stop - ALIGN_BYTES
    return None


def _read_parts(view: memoryview, record: _Joining, *, url: str, base_offset: int) -> int:
    """Read the parts of `record` that `view` holds: 0 once its last part is read, else the length `view` needs."""
    while True:
        pos = record.next_header
        if len(view) < pos + ALIGN_BYTES:
            return pos + HEADER_BYTES
        if view[pos : pos + ALIGN_BYTES] != MAGIC_BYTES:
            found = bytes(view[pos : pos + ALIGN_BYTES]).hex(" ")
            raise CorruptRecord(
                _where(url, base_offset + pos) + f"bad RecordIO magic {found} (expected {MAGIC_BYTES.hex(' ')}): "
                "not a RecordIO file, or a record before this one has a wrong length",
                url=url,
                offset=base_offset + pos,
            )
        if len(view) < pos + HEADER_BYTES:
            return pos + HEADER_BYTES
        _, lrecord = _HEADER.unpack_from(view, pos)
        flag, length = lrecord >> LENGTH_BITS, lrecord & LENGTH_MASK
        _check_flag(flag, record, pos, url=url, base_offset=base_offset)
        end = pos + HEADER_BYTES + _padded(length)
        if len(view) < end:
            return end
        record.spans.append((pos + HEADER_BYTES, pos + HEADER_BYTES + length))
        record.next_header = end
        if flag in (WHOLE, LAST):
            return 0


def _check_flag(flag: int, record: _Joining, pos: int, *, url: str, base_offset: int) -> None:
    if flag not in _FLAG_NAMES:
        raise CorruptRecord(
            _where(url, base_offset + pos) + f"unknown RecordIO continuation flag {flag} (0 to 3 are defined)",
            url=url,
            offset=base_offset + pos,
        )
    if pos == record.start and flag in (MIDDLE, LAST):
        raise CorruptRecord(
            _where(url, base_offset + pos) + f"a {_FLAG_NAMES[flag]} part of a split record, with no first part "
            "before it",
            url=url,
            offset=base_offset + pos,
        )
    if pos != record.start and flag in (WHOLE, FIRST):
        raise CorruptRecord(
            _where(url, base_offset + record.start) + "a record split into parts has no last part: a new record "
            f"starts at byte {base_offset + pos} after {len(record.spans)} of its parts",
            url=url,
            offset=base_offset + record.start,
        )


def _record(view: memoryview, record: _Joining, base_offset: int) -> Record:
    return Record(base_offset + record.start, base_offset + record.next_header, _payload(view, record.spans))


def _payload(view: memoryview, spans: list[tuple[int, int]]) -> bytes:
    if len(spans) == 1:
        begin, end = spans[0]
        return view[begin:end].tobytes()
    return MAGIC_BYTES.join(view[begin:end] for begin, end in spans)


def _truncated(url: str, record_offset: int, data_end: int, needed_end: int) -> CorruptRecord:
    return CorruptRecord(
        _where(url, record_offset) + f"truncated record: the data ends at byte {data_end} but the record needs "
        f"bytes up to {needed_end} at least",
        url=url,
        offset=record_offset,
    )


def _check_part(num_parts: int, part_index: int) -> None:
    if num_parts < 1 or not 0 <= part_index < num_parts:
        raise InvalidRequest(
            f"part_index must be in [0, num_parts) and num_parts >= 1, got part_index={part_index}, "
            f"num_parts={num_parts}"
        )


def _padded(length: int) -> int:
    return -(-length // ALIGN_BYTES) * ALIGN_BYTES


def _byte_view(data: bytes | memoryview) -> memoryview:
    view = memoryview(data)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def _where(url: str | None, offset: int) -> str:
    return f"{url} at byte {offset}: " if url else f"at byte {offset}: "
