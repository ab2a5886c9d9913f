"""The epoch cache's disk tier: ranges that RAM let go of, kept in files under `--cache-dir` within their own budget.

`ChunkCache` spills here what it evicts (or never could hold) and looks here before S3. Least recently used
files go first when the budget is full; a new ETag drops the old version's files. The directory outlives the
daemon: a restart indexes what is there (off the loop) and serves it, since an entry is pinned to its ETag.
File IO runs on threads of this tier's own, so a slow disk never delays the event loop or the local-file
source's reads; `cache_files` is what those threads run.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray

from .cache_files import (
    CacheDirError,
    Entry,
    EntryKey,
    ReadResult,
    ScanResult,
    open_directory,
    read_entry,
    remove_entries,
    scan_directory,
    write_entry,
)

log = logging.getLogger("prefetchd.cache")

T = TypeVar("T")
MiB = 1 << 20
DISK_THREADS = 4  # reads overlap on an SSD; the CPU work (CRC32 at ~2 GB/s a core, the copy) releases the GIL
SPILL_BACKLOG_BYTES = 64 * MiB  # evicted ranges waiting for a writer; a spill beyond it waits, none is lost


@dataclass(frozen=True, slots=True)
class DiskCacheStatistics:
    entries: int
    held_bytes: int  # files, and spills being written
    budget_bytes: int
    hits: int
    misses: int
    hit_bytes: int
    spilled: int
    spilled_bytes: int
    reused_at_start: int  # entries a previous run left
    dropped_corrupt: int  # failed the size or CRC32 check on read: removed and fetched again
    write_failures: int  # disk full, or an IO error: the range is simply not cached


class DiskCache:
    """Files of cached ranges in `directory`, at most `budget_bytes` of them; use as `async with`."""

    def __init__(self, directory: Path, budget_bytes: int) -> None:
        self.directory = directory
        self.budget_bytes = budget_bytes
        self._entries: OrderedDict[EntryKey, Entry] = OrderedDict()  # least recently used first
        self._by_url: dict[str, set[EntryKey]] = {}  # URL hash → its entries, to drop an old version's at once
        self._spilling: dict[EntryKey, NDArray[np.uint8]] = {}  # being written
        self._finished: dict[EntryKey, asyncio.Future[Entry]] = {}  # written, waiting for earlier spills
        self._spilling_bytes = 0
        self._held = 0  # the entries' bytes; the budget also counts the spills'
        self._versions: dict[str, str | None] = {}  # URL hash → ETag hash; None: several (left by a crash)
        self._hashes: dict[tuple[str, str], tuple[str, str]] = {}
        self._jobs: set[asyncio.Future[Any]] = set()  # writes and removals on the executor, drained at exit
        self._room = asyncio.Event()
        self._executor: ThreadPoolExecutor | None = None
        self._lock_fd = -1
        self._hits = self._misses = self._hit_bytes = self._spilled = self._spilled_bytes = 0
        self._reused = self._corrupt = self._write_failures = 0
        self._failed_kinds: set[object] = set()

    async def __aenter__(self) -> DiskCache:
        self._executor = ThreadPoolExecutor(DISK_THREADS, thread_name_prefix="prefetchd-disk-cache")
        try:
            scan = await self._run(self._open)
        except BaseException:
            self._executor.shutdown()
            self._unlock()
            raise
        for entry in scan.entries:
            self._index(entry)
            known = self._versions.setdefault(entry.key.url_hash, entry.key.etag_hash)
            if known != entry.key.etag_hash:
                self._versions[entry.key.url_hash] = None
        self._reused = len(scan.entries)
        log.info(
            "disk cache %s: %d ranges (%d MiB) reused, %d stray temporary files removed",
            self.directory,
            self._reused,
            self._held // MiB,
            scan.removed_temp_files,
        )
        return self

    def _open(self) -> ScanResult:
        self._lock_fd = open_directory(self.directory)
        try:
            return scan_directory(self.directory, self.budget_bytes)
        except OSError as exc:
            raise CacheDirError(f"cannot index the cache directory {self.directory}: {exc}") from exc

    def _unlock(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    async def __aexit__(self, *exc: object) -> None:
        """Finish the writes under way (bounded by the spill backlog), then let the directory go."""
        try:
            await self.settle()
        finally:
            if self._executor is not None:
                await asyncio.to_thread(self._executor.shutdown)
            self._unlock()

    async def settle(self) -> None:
        """Returns once every write and removal under way is done (their callbacks report their errors)."""
        while self._jobs:
            await asyncio.gather(*self._jobs, return_exceptions=True)

    def _key(self, url: str, version: str, start: int, size: int) -> EntryKey:
        hashes = self._hashes.get((url, version))
        if hashes is None:
            key = EntryKey.of(url, version, start, size)
            self._hashes[(url, version)] = (key.url_hash, key.etag_hash)
            return key
        return EntryKey(*hashes, start, size)

    def forget_other_versions(self, url: str, version: str) -> None:
        """`version` is the object's current one: drop every file of another."""
        current = self._key(url, version, 0, 0)  # only its URL and ETag hashes matter here
        known = self._versions.get(current.url_hash, "")
        if known == current.etag_hash:
            return
        self._versions[current.url_hash] = current.etag_hash
        if known == "":
            return  # an object this cache holds nothing of
        stale = [
            self._unindex(k) for k in list(self._by_url.get(current.url_hash, ())) if k.etag_hash != current.etag_hash
        ]
        if stale:
            self._submit(partial(remove_entries, self.directory, stale))

    def spilling(self, url: str, version: str, start: int, size: int) -> NDArray[np.uint8] | None:
        """The buffer of a range being written right now, which a reader may share as it is."""
        return self._spilling.get(self._key(url, version, start, size))

    async def read_into(self, url: str, version: str, start: int, out: memoryview) -> bool:
        """Fill `out` with the range from its file; False if there is none or it failed its check (now removed)."""
        self.forget_other_versions(url, version)
        key = self._key(url, version, start, len(out))
        entry = self._entries.get(key)
        if entry is None:
            self._misses += 1
            return False
        self._entries.move_to_end(key)
        result = await self._run(partial(read_entry, self.directory, entry, out))
        if result is ReadResult.OK:
            self._hits += 1
            self._hit_bytes += len(out)
            return True
        if self._entries.get(key) is entry:
            self._unindex(key)
        if result is ReadResult.CORRUPT:
            self._corrupt += 1
            log.warning(
                "disk cache: %s failed its size or CRC32 check; removed, reading the range again", entry.file_name
            )
        self._misses += 1
        return False

    def has_room(self, size: int) -> bool:
        """Whether a range of `size` bytes would fit without evicting anything."""
        return self._held + self._spilling_bytes + size <= self.budget_bytes

    async def spill(self, url: str, version: str, start: int, buffer: NDArray[np.uint8]) -> None:
        """Write `buffer` (read-only from now on) as the range's file, unless it is there already or can never fit.

        Returns once the write is queued; it waits while the backlog of queued writes is full.
        """
        self.forget_other_versions(url, version)
        key = self._key(url, version, start, buffer.nbytes)
        while self._spilling_bytes and self._spilling_bytes + key.size > SPILL_BACKLOG_BYTES:
            self._room.clear()
            await self._room.wait()
        if key in self._entries or key in self._spilling or self._spilling_bytes + key.size > self.budget_bytes:
            return
        victims = []
        while self._held + self._spilling_bytes + key.size > self.budget_bytes:  # ends: see the check above
            victims.append(self._unindex(next(iter(self._entries))))
        self._spilling[key] = buffer
        self._spilling_bytes += key.size
        self._submit(partial(self._write_file, key, buffer, victims), partial(self._written, key))

    def _written(self, key: EntryKey, job: asyncio.Future[Entry]) -> None:
        """A spill's write is done; files are indexed in the order their spills came, not the threads' order,
        so that least recently used stays least recently used."""
        self._finished[key] = job
        while self._spilling and (first := next(iter(self._spilling))) in self._finished:
            self._index_spill(first, self._finished.pop(first))

    def _index_spill(self, key: EntryKey, job: asyncio.Future[Entry]) -> None:
        """Index a spill's file, or count why not."""
        del self._spilling[key]
        self._spilling_bytes -= key.size
        self._room.set()
        if job.cancelled():
            return
        error = job.exception()
        if error is not None:
            self._write_failed(error)
        elif self._versions.get(key.url_hash) != key.etag_hash:  # the object moved on while this was written
            self._submit(partial(remove_entries, self.directory, [job.result()]))
        else:
            self._index(job.result())
            self._spilled += 1
            self._spilled_bytes += key.size

    def _write_failed(self, error: BaseException) -> None:
        self._write_failures += 1
        kind = error.errno if isinstance(error, OSError) else type(error).__name__
        if kind not in self._failed_kinds:  # once per kind of failure: a full disk would flood the log
            self._failed_kinds.add(kind)
            log.warning(
                "disk cache: cannot write to %s (%s); ranges that fail so are not cached",
                self.directory,
                error,
                exc_info=None if isinstance(error, OSError) else error,
            )

    def _write_file(self, key: EntryKey, buffer: NDArray[np.uint8], victims: list[Entry]) -> Entry:
        remove_entries(self.directory, victims)
        return write_entry(self.directory, key, buffer.data)

    def _index(self, entry: Entry) -> None:
        self._entries[entry.key] = entry
        self._by_url.setdefault(entry.key.url_hash, set()).add(entry.key)
        self._held += entry.key.size

    def _unindex(self, key: EntryKey) -> Entry:
        entry = self._entries.pop(key)
        same_url = self._by_url[key.url_hash]
        same_url.discard(key)
        if not same_url:
            del self._by_url[key.url_hash]
        self._held -= key.size
        return entry

    async def _run(self, call: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    def _submit(
        self, call: Callable[[], T], on_done: Callable[[asyncio.Future[T]], None] | None = None
    ) -> asyncio.Future[T]:
        """Run `call` on the executor without waiting; `settle()` and `__aexit__` wait for it."""
        job = asyncio.get_running_loop().run_in_executor(self._executor, call)
        self._jobs.add(job)
        job.add_done_callback(self._jobs.discard)
        job.add_done_callback(on_done or self._report)
        return job

    def _report(self, job: asyncio.Future[Any]) -> None:
        if not job.cancelled() and job.exception() is not None:
            log.warning("disk cache: removing files in %s failed", self.directory, exc_info=job.exception())

    def statistics(self) -> DiskCacheStatistics:
        return DiskCacheStatistics(
            len(self._entries),
            self._held + self._spilling_bytes,
            self.budget_bytes,
            self._hits,
            self._misses,
            self._hit_bytes,
            self._spilled,
            self._spilled_bytes,
            self._reused,
            self._corrupt,
            self._write_failures,
        )

    def __repr__(self) -> str:
        s = self.statistics()
        return (
            f"<DiskCache {self.directory}: {s.entries} ranges, {s.held_bytes}/{s.budget_bytes} B, "
            f"{s.hits} hits, {s.misses} misses, {s.spilled} spilled, {s.dropped_corrupt} corrupt>"
        )
