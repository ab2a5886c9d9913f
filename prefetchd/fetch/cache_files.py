"""The disk tier's files: one cached range per file, named for what it holds, written atomically, checked on read.

A name is `<url hash>-<etag hash>-<start>-<size>-<crc32>.range` (hex): the start-up index is a directory listing,
an ETag that moved finds its object's old files by name, and the CRC32 of the bytes travels with them. A file is
written under a temporary name and renamed, so a crash leaves either the whole entry or a stray temporary file;
none is fsynced, because a read checks the size and the CRC32 and drops an entry that fails (a power cut can
leave a renamed file empty or torn), so a damaged entry is read again from S3, never served.

Everything here is synchronous file IO: `DiskCache` runs it on its own threads, never on the event loop.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import hashlib
import os
import re
import secrets
import stat
import zlib
from dataclasses import dataclass
from pathlib import Path

from prefetchd_client.errors import PrefetchdError

URL_HASH_BYTES = 12  # 96 bits: no two objects of one cache collide
ETAG_HASH_BYTES = 8
ENTRY_SUFFIX = ".range"
TEMP_SUFFIX = ".tmp"
_ENTRY = re.compile(r"^([0-9a-f]{24})-([0-9a-f]{16})-([0-9a-f]+)-([0-9a-f]+)-([0-9a-f]{8})\.range$")
_TEMP = re.compile(r"^[0-9a-f]{24}-[0-9a-f]{16}-[0-9a-f]+-[0-9a-f]+\.[0-9a-f]+\.tmp$")
LOCK_NAME = "lock"  # flock held by the daemon that owns the directory, as the control socket's lock is


class CacheDirError(PrefetchdError):
    """The cache directory cannot be used: not ours, open to other writers, or in use by another daemon."""

    code = "cache_dir"


@dataclass(frozen=True, slots=True)
class EntryKey:
    """A cached range as the disk knows it: the object's URL and ETag by hash, then the range itself."""

    url_hash: str
    etag_hash: str
    start: int
    size: int

    @classmethod
    def of(cls, url: str, version: str, start: int, size: int) -> EntryKey:
        url_hash = hashlib.blake2b(url.encode(), digest_size=URL_HASH_BYTES).hexdigest()
        etag_hash = hashlib.blake2b(version.encode(), digest_size=ETAG_HASH_BYTES).hexdigest()
        return cls(url_hash, etag_hash, start, size)

    @property
    def stem(self) -> str:
        return f"{self.url_hash}-{self.etag_hash}-{self.start:x}-{self.size:x}"

    def file_name(self, crc32: int) -> str:
        return f"{self.stem}-{crc32:08x}{ENTRY_SUFFIX}"


@dataclass(frozen=True, slots=True)
class Entry:
    """A file that holds a range: its name, and the CRC32 its bytes must have."""

    key: EntryKey
    crc32: int

    @property
    def file_name(self) -> str:
        return self.key.file_name(self.crc32)


def parse_entry_name(name: str) -> Entry | None:
    """The entry a file name describes, or None for a file that is not one of ours."""
    match = _ENTRY.match(name)
    if match is None:
        return None
    url_hash, etag_hash, start, size, crc = match.groups()
    return Entry(EntryKey(url_hash, etag_hash, int(start, 16), int(size, 16)), int(crc, 16))


def is_temp_name(name: str) -> bool:
    return _TEMP.match(name) is not None


class ReadResult(enum.Enum):
    OK = "ok"
    MISSING = "missing"  # evicted (or deleted by hand) since it was indexed
    CORRUPT = "corrupt"  # wrong size or CRC32: the file was removed


def read_entry(directory: Path, entry: Entry, out: memoryview) -> ReadResult:
    """Fill `out` with the entry's bytes, straight from the file; remove the file if they are not intact."""
    path = directory / entry.file_name
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return ReadResult.MISSING
    except OSError:
        intact = False  # unreadable (a disk error, a link where a file should be): read the range again
    else:
        try:
            intact = os.fstat(fd).st_size == len(out) and _read_exactly(fd, out) and zlib.crc32(out) == entry.crc32
            if intact:
                with contextlib.suppress(OSError):
                    os.utime(fd)  # the mtime orders the start-up index from least to most recently used
        except OSError:
            intact = False
        finally:
            os.close(fd)
    if intact:
        return ReadResult.OK
    with contextlib.suppress(OSError):
        path.unlink()
    return ReadResult.CORRUPT


def _read_exactly(fd: int, out: memoryview) -> bool:
    done = 0
    while done < len(out):
        n = os.preadv(fd, [out[done:]], done)
        if n == 0:
            return False  # shorter than it was a moment ago
        done += n
    return True


def write_entry(directory: Path, key: EntryKey, data: memoryview) -> Entry:
    """Write `data` as `key`'s entry: a 0600 temporary file renamed into place, so it appears whole or not at all."""
    entry = Entry(key, zlib.crc32(data))
    temp = directory / f"{key.stem}.{secrets.token_hex(4)}{TEMP_SUFFIX}"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        try:
            done = 0
            while done < len(data):
                done += os.write(fd, data[done:])
        finally:
            os.close(fd)
        os.rename(temp, directory / entry.file_name)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    return entry


def remove_entries(directory: Path, entries: list[Entry]) -> None:
    for entry in entries:
        with contextlib.suppress(FileNotFoundError):
            (directory / entry.file_name).unlink()


@dataclass(frozen=True, slots=True)
class ScanResult:
    entries: list[Entry]  # least recently used first
    removed_temp_files: int
    removed_entries: int  # torn, duplicated, or beyond the byte budget


def scan_directory(directory: Path, budget_bytes: int) -> ScanResult:
    """Index the entries a previous run left, least recently used first, within `budget_bytes`.

    Stray temporary files (a crash mid-write) and entries whose size does not match their name are removed;
    files that are not ours are left alone.
    """
    found: dict[EntryKey, tuple[int, Entry]] = {}
    temps = removed = 0
    with os.scandir(directory) as listing:
        for item in listing:
            if is_temp_name(item.name):
                temps += _unlink(directory / item.name)
                continue
            entry = parse_entry_name(item.name)
            st = item.stat(follow_symlinks=False)
            if entry is None or not stat.S_ISREG(st.st_mode):
                continue
            older = found.get(entry.key)
            if st.st_size != entry.key.size or (older and older[0] >= st.st_mtime_ns):
                removed += _unlink(directory / item.name)
                continue
            if older:
                removed += _unlink(directory / older[1].file_name)
            found[entry.key] = (st.st_mtime_ns, entry)
    kept: list[Entry] = []
    held = 0
    for _, entry in sorted(found.values(), key=lambda pair: pair[0], reverse=True):  # most recently used first
        held += entry.key.size
        if held <= budget_bytes:
            kept.append(entry)
        else:  # this one and every older one
            removed += _unlink(directory / entry.file_name)
    kept.reverse()
    return ScanResult(kept, temps, removed)


def _unlink(path: Path) -> int:
    try:
        path.unlink()
    except FileNotFoundError:
        return 0
    return 1


def open_directory(directory: Path) -> int:
    """Create `directory` 0700 (or check an existing one), and lock it for this daemon; returns the lock's fd.

    Others must not be able to write there: a planted file with a matching name and CRC32 would be served.
    """
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = directory.stat()
    except OSError as exc:
        raise CacheDirError(f"cannot use {directory} as the cache directory: {exc.strerror}") from exc
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid != os.getuid():
        raise CacheDirError(f"cache directory {directory} belongs to uid {st.st_uid}, not this daemon's {os.getuid()}")
    if mode & 0o022:
        raise CacheDirError(
            f"cache directory {directory} is writable by other users (mode {mode:o}); chmod 700 it or choose another"
        )
    try:
        fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise CacheDirError(f"cannot lock the cache directory {directory}: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise CacheDirError(
            f"cache directory {directory} is in use by another prefetchd daemon (pid {owner}); give each its own"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
