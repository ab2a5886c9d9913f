"""What `prefetchd inspect` reports: pure summaries of an IDX header or a RecordIO object's records and index.

The checks are the readers' own (`formats/idx.py`, `formats/recordio.py`), so an object that passes here frames
the same way in a stream, and a corrupt one fails with the same error, naming the object and the byte offset.
The shell (`inspect_run.py`) fetches the bytes; these functions never await.
"""

from __future__ import annotations

import enum
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from prefetchd_client.errors import FormatError, InvalidRequest

from ..formats import idx, recordio

# what IDX's type byte means, as the format's page names them
IDX_TYPE_NAMES = {
    0x08: "unsigned byte",
    0x09: "signed byte",
    0x0B: "short (2 bytes)",
    0x0C: "int (4 bytes)",
    0x0D: "float (4 bytes)",
    0x0E: "double (8 bytes)",
}
GZIP_MAGIC = b"\x1f\x8b"


class Format(enum.Enum):
    IDX = "idx"
    RECORDIO = "recordio"


def detect_format(url: str, head: bytes) -> Format:
    """IDX or RecordIO, from the first bytes (or, for a damaged one, the name); else an `InvalidRequest`."""
    name = url.rstrip("/").rsplit("/", 1)[-1]
    if head.startswith(recordio.MAGIC_BYTES) or name.endswith(".rec"):
        return Format.RECORDIO
    if len(head) >= idx.PREAMBLE_BYTES and head[:2] == idx.MAGIC_PREFIX and head[2] in idx.IDX_DTYPES and head[3]:
        return Format.IDX
    if "-idx" in name and name.endswith("-ubyte"):
        return Format.IDX  # MNIST's names; a bad header is then reported as a format error
    if name.endswith(".idx"):
        hint = f"it looks like a RecordIO index: inspect the .rec beside it ({url[: -len('.idx')]}.rec)"
    elif head.startswith(GZIP_MAGIC):
        hint = "it is gzip-compressed: decompress it first (MNIST's downloads are .gz)"
    else:
        hint = f"its first bytes are {head[:8].hex(' ') or 'absent (empty object)'}"
    raise InvalidRequest(
        f"{url} is not a format prefetchd reads: IDX starts with 00 00 <type> <ndim>, RecordIO with "
        f"{recordio.MAGIC_BYTES.hex(' ')}; {hint}",
        url=url,
    )


def index_url_for(url: str) -> str | None:
    """`x.idx` beside `x.rec`, as im2rec writes them."""
    return url[: -len(".rec")] + ".idx" if url.endswith(".rec") else None


def plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}{'s' * (count != 1)}"


def label_key(value: float) -> str:
    """A label as people write it: 3, not 3.0; 0.1, not float32's 0.10000000149011612."""
    return str(np.format_float_positional(np.float32(value), trim="-"))


def tally_labels(values: NDArray[Any], counts: Counter[str]) -> None:
    """Add `values` (an IDX label file's, of any numeric dtype) to a histogram keyed by `label_key`."""
    uniques, found = np.unique(values, return_counts=True)
    integers = values.dtype.kind in "iu"
    for value, count in zip(uniques.tolist(), found.tolist(), strict=True):
        counts[str(value) if integers else label_key(value)] += count


def sorted_histogram(counts: Counter[str]) -> dict[str, int]:
    """By label value where labels are numbers (all of ours are)."""
    return {key: counts[key] for key in sorted(counts, key=float)}


@dataclass(frozen=True, slots=True)
class IdxSummary:
    url: str
    size: int
    header: idx.IdxHeader
    type_code: int
    labels: dict[str, int] | None  # for a label file (one dimension)

    @property
    def magic(self) -> str:
        return f"00 00 {self.type_code:02x} {len(self.header.dims):02x}"

    def to_json(self) -> dict[str, Any]:
        h = self.header
        return {
            "url": self.url,
            "format": Format.IDX.value,
            "magic": self.magic,
            "type": IDX_TYPE_NAMES[self.type_code],
            "dtype": h.dtype.str,
            "dims": list(h.dims),
            "records": h.count,
            "record_bytes": h.record_bytes,
            "header_bytes": h.header_bytes,
            "bytes": self.size,
            "labels": self.labels,
        }

    def lines(self) -> list[str]:
        h = self.header
        shape = " x ".join(str(d) for d in h.record_shape) or "one value"
        out = [
            f"{self.url}: IDX, {self.size:,} bytes",
            f"  magic    {self.magic} (type 0x{self.type_code:02x} {IDX_TYPE_NAMES[self.type_code]}, "
            f"{plural(len(h.dims), 'dimension')})",
            f"  dims     {' x '.join(str(d) for d in h.dims)}",
            f"  records  {h.count:,} of {shape} ({plural(h.record_bytes, 'byte')} each), "
            f"after a {h.header_bytes}-byte header",
            "  check    ok: the size is what the header declares",
        ]
        return out + (histogram_lines(self.labels) if self.labels is not None else [])


def summarize_idx_header(url: str, size: int, head: bytes) -> idx.IdxHeader:
    """The header, checked against the object's size (`FormatError` naming the byte if they disagree)."""
    header = idx.parse_header(head, url=url)
    idx.check_size(header, size, url=url)
    return header


def summarize_idx(url: str, data: bytes) -> IdxSummary:
    """A whole IDX object's summary (the shell reads only a label file's data, in ranges, through `tally_labels`)."""
    header = summarize_idx_header(url, len(data), data)
    labels = None
    if len(header.dims) == 1:
        counts: Counter[str] = Counter()
        tally_labels(np.frombuffer(data, dtype=header.dtype, offset=header.header_bytes), counts)
        labels = sorted_histogram(counts)
    return IdxSummary(url, len(data), header, data[2], labels)


def histogram_lines(labels: dict[str, int]) -> list[str]:
    total = sum(labels.values())
    width = max((len(key) for key in labels), default=1)
    lines = [f"  labels   {len(labels)} distinct"]
    for key, count in labels.items():
        lines.append(f"    {key:>{width}}  {count:>10,}  {100 * count / max(1, total):5.1f}%")
    return lines


@dataclass(frozen=True, slots=True)
class IndexCheck:
    """How the `.idx` beside a `.rec` agrees with the records framed from it."""

    url: str
    entries: int
    records_not_listed: int  # records the index leaves out (MXNet still reads them between listed ones)


def check_index(
    record_offsets: NDArray[np.int64], index_offsets: NDArray[np.int64], *, rec_url: str, index_url: str
) -> IndexCheck:
    """Every offset the index lists must be where a record starts; a `FormatError` names the first that is not."""
    listed = np.isin(index_offsets, record_offsets)
    if not listed.all():
        bad = int(index_offsets[np.flatnonzero(~listed)[0]])
        position = int(np.searchsorted(record_offsets, bad))
        around = [str(int(record_offsets[i])) for i in (position - 1, position) if 0 <= i < record_offsets.size]
        where = f"records start at bytes {' and '.join(around)} around it" if around else "the .rec has no records"
        raise FormatError(
            f"{index_url} lists byte {bad} of {rec_url}, where no record starts ({where}); the index does not "
            "belong to this .rec — write both again (im2rec, or MXIndexedRecordIO)",
            url=index_url,
            offset=bad,
        )
    duplicates = index_offsets.size - np.unique(index_offsets).size
    if duplicates:
        raise FormatError(
            f"{index_url} lists {duplicates} offset(s) of {rec_url} more than once; MXNet would read those records "
            "twice an epoch — write the index again",
            url=index_url,
        )
    return IndexCheck(index_url, int(index_offsets.size), int(record_offsets.size - index_offsets.size))


class RecordScan:
    """Frames a RecordIO object fed in order, in chunks of any size, and tallies its records' labels.

    A framing error (bad magic, bad lengths, a split record that does not join, a truncated end) is the
    framer's `CorruptRecord`, naming the object and the byte offset.
    """

    def __init__(self, url: str, *, label_width: int = 1) -> None:
        self.url = url
        self.label_width = label_width
        self._framer = recordio.RecordFramer(url=url)
        self._offsets: list[int] = []
        self.split_records = 0  # written in parts (the payload held an aligned magic word) and joined
        self.unlabelled = 0  # too short for an IRHeader: not an image record
        self.labels: Counter[str] = Counter()
        self.labels_per_record: Counter[int] = Counter()

    def feed(self, data: bytes | memoryview) -> None:
        for record in self._framer.feed(data):
            self._offsets.append(record.offset)
            padded = -(-len(record.payload) // recordio.ALIGN_BYTES) * recordio.ALIGN_BYTES
            if record.end - record.offset != recordio.HEADER_BYTES + padded:
                self.split_records += 1
            if len(record.payload) < recordio.IMAGE_HEADER.size:
                self.unlabelled += 1
                continue
            header, _ = recordio.unpack_image(record.payload, url=self.url, offset=record.offset)
            self.labels_per_record[header.label.size] += 1
            for value in header.label[: self.label_width].tolist():
                self.labels[label_key(value)] += 1

    def finish(self) -> NDArray[np.int64]:
        """Every record's offset; the object must not end inside a record."""
        self._framer.finish()
        return np.asarray(self._offsets, dtype=np.int64)


@dataclass(frozen=True, slots=True)
class RecordIOSummary:
    url: str
    size: int
    records: int
    split_records: int
    unlabelled: int
    label_width: int
    labels: dict[str, int]
    labels_per_record: dict[int, int]
    index: IndexCheck | None

    def to_json(self) -> dict[str, Any]:
        index = None
        if self.index is not None:
            index = {
                "url": self.index.url,
                "entries": self.index.entries,
                "records_not_listed": self.index.records_not_listed,
            }
        return {
            "url": self.url,
            "format": Format.RECORDIO.value,
            "bytes": self.size,
            "records": self.records,
            "split_records": self.split_records,
            "unlabelled_records": self.unlabelled,
            "label_width": self.label_width,
            "labels": self.labels,
            "labels_per_record": {str(k): v for k, v in self.labels_per_record.items()},
            "index": index,
        }

    def lines(self) -> list[str]:
        per_record = ", ".join(f"{n:,} records with {k}" for k, n in self.labels_per_record.items())
        out = [
            f"{self.url}: RecordIO, {self.size:,} bytes",
            f"  records  {self.records:,} ({self.split_records:,} written in parts and joined)",
            "  check    ok: every record frames (magic, lengths, parts), and the object ends after the last",
        ]
        if self.index is None:
            out.append("  index    none beside it (readers frame the whole .rec once to find the records)")
        else:
            left_out = (
                f", {self.index.records_not_listed:,} records not listed" if self.index.records_not_listed else ""
            )
            out.append(f"  index    {self.index.url}: {self.index.entries:,} entries, each at a record start{left_out}")
        if self.unlabelled:
            out.append(f"  {self.unlabelled:,} records too short for an image header (IRHeader): no labels")
        if per_record:
            out.append(f"  labels per record  {per_record} (histogram of the first {self.label_width})")
        return out + histogram_lines(self.labels)


def summarize_recordio(
    url: str,
    data: bytes | memoryview,
    *,
    label_width: int = 1,
    index_text: bytes | None = None,
    index_url: str | None = None,
) -> RecordIOSummary:
    """A whole RecordIO object's summary; the shell feeds the same `RecordScan` range by range."""
    scan = RecordScan(url, label_width=label_width)
    scan.feed(data)
    return finish_recordio(scan, len(data), index_text, index_url)


def finish_recordio(scan: RecordScan, size: int, index_text: bytes | None, index_url: str | None) -> RecordIOSummary:
    offsets = scan.finish()
    check = None
    if index_text is not None:
        index_url = index_url or index_url_for(scan.url) or f"{scan.url}.idx"
        check = check_index(
            offsets, recordio.parse_index(index_text, url=index_url), rec_url=scan.url, index_url=index_url
        )
    return RecordIOSummary(
        scan.url,
        size,
        int(offsets.size),
        scan.split_records,
        scan.unlabelled,
        scan.label_width,
        sorted_histogram(scan.labels),
        dict(sorted(scan.labels_per_record.items())),
        check,
    )
