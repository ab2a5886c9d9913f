"""What `prefetchd sync DIR s3://bucket/prefix/` uploads: a pure plan from local digests and the prefix's listing.

A file is skipped when an object of the same size already holds the same bytes, judged by two checksums:

- **The ETag, as S3 computes it**: the MD5 of the bytes for a single PUT, and for a multipart upload the MD5 of
  the parts' MD5s followed by `-<parts>`. We upload files of `part_bytes` or more in parts of `part_bytes` (8 MiB,
  doubled until 10,000 parts suffice), exactly aws-cli's defaults, so a file we or `aws s3 sync` uploaded has an
  ETag we can compute locally and compare with the listing: no request per file.
- **A SHA-256 in the object's metadata** (`x-amz-meta-sha256`), which every upload of ours stores. An ETag is
  not an MD5 for objects encrypted with SSE-KMS or SSE-C, nor for other part sizes; when the ETag differs but
  the size matches, one HEAD reads the metadata and a matching SHA-256 still skips the file.

So a second sync uploads nothing on any bucket, and a file uploaded by another tool is uploaded again at most once.
Objects under the prefix with no local file are left alone: sync never deletes.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from prefetchd_client.errors import InvalidRequest

MiB = 1 << 20
DEFAULT_PART_BYTES = 8 * MiB  # aws-cli's multipart_threshold and multipart_chunksize, so our ETags match its
MIN_PART_BYTES = 5 * MiB  # S3's smallest part (all but the last)
MAX_PART_BYTES = 5 * 1024 * MiB  # S3's largest part
MAX_PARTS = 10_000  # S3's most parts per upload
MAX_KEY_BYTES = 1024  # S3's longest key, in UTF-8
SHA256_METADATA = "sha256"  # stored as x-amz-meta-sha256


@dataclass(frozen=True, slots=True)
class Destination:
    """Where a directory goes: its files' paths relative to it are appended to `prefix`."""

    bucket: str
    prefix: str  # "" or ending in "/"

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def key_for(self, relative: PurePosixPath) -> str:
        key = self.prefix + relative.as_posix()
        try:
            encoded = key.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidRequest(f"{relative}: the file name is not UTF-8, which S3 keys must be") from exc
        if len(encoded) > MAX_KEY_BYTES:
            raise InvalidRequest(f"s3://{self.bucket}/{key}: longer than S3's {MAX_KEY_BYTES}-byte key limit")
        return key


def parse_destination(url: str) -> Destination:
    """`s3://bucket`, `s3://bucket/prefix` or `s3://bucket/prefix/`: the prefix is a folder, as in `aws s3 sync`."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise InvalidRequest(f"{url!r} is not an s3://bucket/prefix/ URL")
    if parts.query or parts.fragment:
        raise InvalidRequest(f"{url!r} is not an s3://bucket/prefix/ URL: keys with '?' or '#' are not synced")
    prefix = parts.path.strip("/")
    return Destination(parts.netloc, f"{prefix}/" if prefix else "")


def part_bytes_for(size: int, part_bytes: int) -> int:
    """The part size for a file: `part_bytes`, doubled until the file fits in S3's 10,000 parts (as aws-cli does)."""
    while -(-size // part_bytes) > MAX_PARTS:
        part_bytes *= 2
    return part_bytes


def part_ranges(size: int, part_bytes: int) -> list[tuple[int, int]]:
    """(start, length) of each part of a multipart upload of `size` bytes."""
    step = part_bytes_for(size, part_bytes)
    return [(start, min(step, size - start)) for start in range(0, size, step)]


def uses_multipart(size: int, part_bytes: int) -> bool:
    """aws-cli's rule: files of `multipart_threshold` bytes or more go in parts (a file of exactly one part too)."""
    return size >= part_bytes


def s3_etag(part_md5s: Sequence[bytes], *, multipart: bool) -> str:
    """The ETag S3 gives an upload whose parts have these MD5 digests (one part for a single PUT)."""
    if not multipart:
        return part_md5s[0].hex() if part_md5s else hashlib.md5(b"").hexdigest()
    return f"{hashlib.md5(b''.join(part_md5s)).hexdigest()}-{len(part_md5s)}"


def normal_etag(etag: str) -> str:
    """An ETag as listings and HEADs give it (quoted, sometimes weak) reduced to its value."""
    return etag.removeprefix("W/").strip('"').lower()


@dataclass(frozen=True, slots=True)
class LocalFile:
    """A file under the directory and what it holds: the MD5 of each upload part, and its SHA-256."""

    key: str
    path: Path
    size: int
    part_bytes: int  # the multipart threshold and part size its digests were taken with
    part_md5s: tuple[bytes, ...]  # of each `part_ranges` part; one (the whole file's) below the threshold
    sha256: str

    @property
    def multipart(self) -> bool:
        return uses_multipart(self.size, self.part_bytes)

    @property
    def etag(self) -> str:
        return s3_etag(self.part_md5s, multipart=self.multipart)


@dataclass(frozen=True, slots=True)
class RemoteObject:
    """An object the prefix's listing returned; `sha256` is read from its metadata only when the ETag cannot decide."""

    key: str
    size: int
    etag: str
    sha256: str | None = None
    metadata_read: bool = False  # whether `sha256` is known (None then means the object has none)


class Reason(enum.Enum):
    NEW = "new"
    SIZE = "size differs"
    CONTENT = "checksum differs"


@dataclass(frozen=True, slots=True)
class Upload:
    file: LocalFile
    reason: Reason


@dataclass(frozen=True, slots=True)
class SyncPlan:
    uploads: tuple[Upload, ...]
    skipped: tuple[LocalFile, ...]
    unsure: tuple[LocalFile, ...]  # same size, another ETag: the object's metadata decides

    @property
    def upload_bytes(self) -> int:
        return sum(upload.file.size for upload in self.uploads)

    @property
    def skipped_bytes(self) -> int:
        return sum(file.size for file in self.skipped)


def plan_sync(files: Iterable[LocalFile], remote: Mapping[str, RemoteObject]) -> SyncPlan:
    """Which files to upload, which already match their object, and which need their object's metadata first."""
    uploads: list[Upload] = []
    skipped: list[LocalFile] = []
    unsure: list[LocalFile] = []
    for file in sorted(files, key=lambda f: f.key):
        existing = remote.get(file.key)
        if existing is None:
            uploads.append(Upload(file, Reason.NEW))
        elif existing.size != file.size:
            uploads.append(Upload(file, Reason.SIZE))
        elif normal_etag(existing.etag) == file.etag or existing.sha256 == file.sha256:
            skipped.append(file)
        elif not existing.metadata_read:
            unsure.append(file)
        else:
            uploads.append(Upload(file, Reason.CONTENT))
    return SyncPlan(tuple(uploads), tuple(skipped), tuple(unsure))
