"""IDX, the MNIST file format: a 4-byte magic `00 00 <type> <ndim>`, ndim big-endian u32 dims, then the data.

Pure functions over bytes. Every record (one index along the first dimension) has the same size, so
partitions and shuffles are index arithmetic. Reference: http://yann.lecun.com/exdb/mnist/ ("THE IDX FILE
FORMAT") and MXNet's src/io/iter_mnist.cc, which reads only type 0x08 and three (images) or one (labels)
dimensions.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from prefetchd_client.errors import FormatError

MAGIC_PREFIX = b"\x00\x00"
PREAMBLE_BYTES = 4
MAX_DIMS = 255  # the ndim byte

# IDX type code → numpy dtype (multi-byte types are big-endian in the file)
IDX_DTYPES: dict[int, np.dtype[Any]] = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


@dataclass(frozen=True, slots=True)
class IdxHeader:
    """What an IDX header says: element type, dimensions, and where the data starts."""

    dtype: np.dtype[Any]
    dims: tuple[int, ...]

    @property
    def header_bytes(self) -> int:
        return PREAMBLE_BYTES + 4 * len(self.dims)

    @property
    def count(self) -> int:
        """Number of records (the first dimension)."""
        return self.dims[0]

    @property
    def record_shape(self) -> tuple[int, ...]:
        return self.dims[1:]

    @property
    def record_bytes(self) -> int:
        return math.prod(self.record_shape) * self.dtype.itemsize

    @property
    def expected_size(self) -> int:
        return self.header_bytes + self.count * self.record_bytes

    def record_offset(self, record: int) -> int:
        return self.header_bytes + record * self.record_bytes


def header_bytes_needed(preamble: bytes) -> int:
    """How many bytes the whole header takes, from its first 4 bytes (to size the second read)."""
    if len(preamble) < PREAMBLE_BYTES:
        raise FormatError(f"an IDX header needs {PREAMBLE_BYTES} bytes, the object has {len(preamble)}", offset=0)
    return PREAMBLE_BYTES + 4 * preamble[3]


def parse_header(data: bytes, *, url: str | None = None) -> IdxHeader:
    """Parse the header at the start of `data`; a `FormatError` names the byte that is wrong."""
    if len(data) < PREAMBLE_BYTES:
        raise FormatError(_where(url, 0) + f"too short for an IDX header ({len(data)} bytes)", url=url, offset=0)
    if data[:2] != MAGIC_PREFIX:
        raise FormatError(
            _where(url, 0) + f"bad IDX magic {data[:4].hex(' ')}: IDX files start with 00 00 <type> <ndim>",
            url=url,
            offset=0,
        )
    type_code, ndim = data[2], data[3]
    if type_code not in IDX_DTYPES:
        known = ", ".join(f"0x{code:02x}" for code in IDX_DTYPES)
        raise FormatError(
            _where(url, 2) + f"unknown IDX type code 0x{type_code:02x} (known: {known})", url=url, offset=2
        )
    if ndim == 0:
        raise FormatError(_where(url, 3) + "IDX header declares 0 dimensions", url=url, offset=3)
    needed = PREAMBLE_BYTES + 4 * ndim
    if len(data) < needed:
        raise FormatError(
            _where(url, len(data)) + f"IDX header declares {ndim} dimensions ({needed} bytes) "
            f"but only {len(data)} bytes are there",
            url=url,
            offset=len(data),
        )
    dims = struct.unpack_from(f">{ndim}I", data, PREAMBLE_BYTES)
    return IdxHeader(IDX_DTYPES[type_code], tuple(dims))


def check_size(header: IdxHeader, size: int, *, url: str) -> None:
    """The object must hold exactly the records its header declares."""
    if size < header.expected_size:
        raise FormatError(
            _where(url, size) + f"truncated: the header declares {header.count} records of "
            f"{header.record_bytes} bytes ({header.expected_size} bytes in all) but the object has {size}",
            url=url,
            offset=size,
        )
    if size > header.expected_size:
        raise FormatError(
            _where(url, header.expected_size) + f"{size - header.expected_size} bytes follow the "
            f"{header.count} records the header declares",
            url=url,
            offset=header.expected_size,
        )


def check_pair(images: IdxHeader, labels: IdxHeader, *, image_url: str, label_url: str) -> None:
    """An image file and its label file must describe the same number of samples, one label each."""
    if len(labels.dims) != 1:
        raise FormatError(
            _where(label_url, 3) + f"a label file has 1 dimension, this one has {len(labels.dims)} {labels.dims}",
            url=label_url,
            offset=3,
        )
    if len(images.dims) < 2:
        raise FormatError(
            _where(image_url, 3) + f"an image file has at least 2 dimensions, this one has {images.dims}",
            url=image_url,
            offset=3,
        )
    if images.count != labels.count:
        raise FormatError(
            f"{image_url} holds {images.count} images but {label_url} holds {labels.count} labels; "
            "check that the two files belong together",
            url=image_url,
            offset=PREAMBLE_BYTES,
        )


def _where(url: str | None, offset: int) -> str:
    return f"{url} at byte {offset}: " if url else f"at byte {offset}: "
