"""The decode worker process: RecordIO bytes in shared memory → decoded images in a ring slot.

A worker holds writable mappings of the rings it serves (mapped while the daemon still could, before the
ring was sealed) and is sent small jobs: where the raw records lie in a staging memfd, which rows of which
slot to fill, and how. Nothing bulky crosses the pipe; the pixels go straight into the client's memory.
The module imports no asyncio and no S3 client: workers start fast and stay small.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
from numpy.typing import NDArray

from prefetchd_client.errors import CorruptRecord, PrefetchdError

from ..formats import recordio
from .image import ImageOptions, decode_image


@dataclass(frozen=True, slots=True)
class OutputRows:
    """Where a job's rows lie in a ring segment: the byte offset of its first row in each array (row sizes follow
    from the image options and `label_width`)."""

    segment: int
    data_offset: int
    label_offset: int
    label_width: int
    index_offset: int


@dataclass(frozen=True, slots=True)
class DecodeJob:
    job: int
    staging: int  # the mapping id of the staging memory that holds the raw records
    records: tuple[tuple[int, int, int], ...]  # (offset in staging, bytes, offset in the object) per row
    url: str
    rows: OutputRows
    options: ImageOptions
    seed: int | None  # for rand_crop / rand_mirror: the epoch's seed; each record's Generator adds its position
    first_position: int  # the first row's position in the epoch (batch number × batch size + row)
    skip_bad: bool


@dataclass(frozen=True, slots=True)
class Failure:
    """A record the job could not decode: its row, and the error as the wire carries it."""

    row: int
    code: str
    message: str
    offset: int | None


def serve(conn: Connection) -> None:
    """The worker's main loop; returns when the daemon closes its end of the pipe."""
    try:
        import cv2

        cv2.setNumThreads(1)  # one process per core already; OpenCV's own threads would oversubscribe
    except ImportError:  # pragma: no cover - the daemon's dependencies include OpenCV
        pass
    segments: dict[int, mmap.mmap] = {}
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        kind = message[0]
        if kind == "map":
            _, segment, path, size, writable = message
            try:
                segments[segment] = _map(path, size, writable=writable)
                conn.send(("mapped", segment, None))
            except OSError as exc:
                conn.send(("mapped", segment, f"{type(exc).__name__}: {exc}"))
        elif kind == "unmap":
            mapping = segments.pop(message[1], None)
            if mapping is not None:
                try:
                    mapping.close()
                except BufferError:  # a view of it is still alive somewhere; it goes with that
                    pass
        elif kind == "decode":
            job: DecodeJob = message[1]
            try:
                failures = run_job(job, segments[job.rows.segment], segments[job.staging])
                conn.send(("done", job.job, failures))
            except Exception as exc:  # a bug here must not kill the worker: the daemon reports it
                conn.send(("done", job.job, [Failure(-1, "internal", f"{type(exc).__name__}: {exc}", None)]))
        elif kind == "ping":
            conn.send(("pong", message[1], os.getpid()))


def _map(path: str, size: int, *, writable: bool) -> mmap.mmap:
    fd = os.open(path, os.O_RDWR if writable else os.O_RDONLY)
    try:
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        return mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=prot)
    finally:
        os.close(fd)


def run_job(job: DecodeJob, segment: mmap.mmap, staging: mmap.mmap) -> list[Failure]:
    """Decode every record of `job` into its row; returns the failures (stops at the first unless skipping)."""
    options = job.options
    rows = job.rows
    count = len(job.records)
    data: NDArray[Any] = np.ndarray(
        (count, *options.data_shape), dtype=options.dtype, buffer=segment, offset=rows.data_offset
    )
    label_shape: tuple[int, ...] = (count,) if rows.label_width == 1 else (count, rows.label_width)
    labels: NDArray[np.float32] = np.ndarray(label_shape, dtype=np.float32, buffer=segment, offset=rows.label_offset)
    index: NDArray[np.uint64] = np.ndarray((count,), dtype=np.uint64, buffer=segment, offset=rows.index_offset)
    failures: list[Failure] = []
    with memoryview(staging) as whole:
        for row, (start, size, offset) in enumerate(job.records):
            # one Generator per record, keyed by its place in the epoch: the same crops whatever the worker count
            rng = np.random.default_rng((job.seed, job.first_position + row)) if job.seed is not None else None
            try:
                header = _decode_record(whole[start : start + size], job, offset, data[row], rng)
                _put_label(labels, row, header, rows.label_width, url=job.url, offset=offset)
                index[row] = header.id
            except PrefetchdError as exc:
                failures.append(Failure(row, exc.code, exc.message, exc.offset))
                if not job.skip_bad:
                    break
    return failures


def _decode_record(
    record: memoryview, job: DecodeJob, offset: int, out: NDArray[Any], rng: np.random.Generator | None
) -> recordio.ImageHeader:
    """One record's bytes (its RecordIO framing included) → pixels in `out`; returns its image header.

    Every view of the staging memory is released on the way out, so the daemon can unmap it later.
    """
    with record:
        payload, end = recordio.read_record(record, 0, url=job.url, base_offset=offset)
        if end != len(record):
            raise CorruptRecord(
                f"the index gives this record {len(record)} bytes but it holds {end}: the index skips records "
                "or does not belong to this file",
                url=job.url,
                offset=offset,
            )
        header, encoded = recordio.unpack_image(payload, url=job.url, offset=offset)
        with encoded:
            decode_image(encoded, job.options, out, rng, url=job.url, offset=offset)
    return header


def _put_label(labels: Any, row: int, header: recordio.ImageHeader, width: int, *, url: str, offset: int) -> None:
    """The record's label(s), held to ImageRecordIter's rule: `label_width` must be the record's label count."""
    count = max(1, header.flag)
    if count != width:
        raise CorruptRecord(
            f"record provides a {count}-dimensional label but label_width is set to {width}", url=url, offset=offset
        )
    labels[row] = header.label[0] if width == 1 else header.label
