"""The daemon's decode worker processes, driven from the event loop without blocking it.

Each worker is a spawned process with a duplex pipe. The loop learns of replies through `add_reader` on
the pipe, so no thread waits on a worker. A ring is mapped into the workers before it is sealed (after the
seal nobody can map it writable), so each stream keeps the list of workers that hold its mapping.

A worker that dies is replaced for later streams, and its jobs are redone: on another worker that holds the
ring, or, when none is left, in the daemon's own decode threads, which write through the daemon's mapping.
A process started after the seal cannot map the ring writable, so it cannot take over an open stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import mmap
import multiprocessing
import os
from concurrent.futures import Executor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from prefetchd_client.errors import DaemonError

from ..ring.segment import Segment
from . import worker
from .worker import DecodeJob, Failure

log = logging.getLogger("prefetchd.decode")

_START_TIMEOUT_S = 60.0


class WorkerDied(DaemonError):
    """A decode worker process exited while it held jobs (killed, out of memory, a crash in a decoder)."""


@dataclass(eq=False)
class Worker:
    number: int
    process: BaseProcess
    conn: Connection
    pending: dict[int, asyncio.Future[Any]] = field(default_factory=dict)
    alive: bool = True
    leases: int = 0  # rings it serves

    def send(self, message: tuple[Any, ...]) -> None:
        if not self.alive:
            raise WorkerDied(f"decode worker {self.number} (pid {self.process.pid}) is gone")
        try:
            self.conn.send(message)  # a few hundred bytes: the pipe's buffer takes it without blocking
        except OSError as exc:  # it died and the loop has not read its EOF yet
            raise WorkerDied(f"decode worker {self.number} (pid {self.process.pid}) is gone ({exc})") from exc


class DecodePool:
    """`processes` decode workers, started on first use."""

    def __init__(self, processes: int, *, fallback: Executor | None = None) -> None:
        if processes < 1:
            raise ValueError("a decode pool needs at least one process")
        self.processes = processes
        self.fallback = fallback  # threads for jobs whose ring no live worker holds; None: the loop's default
        self._workers: list[Worker] = []
        self._numbers = itertools.count()
        self._requests = itertools.count()
        self._mapping_ids = itertools.count()
        self._starting: asyncio.Lock | None = None
        self._closed = False

    async def workers(self) -> list[Worker]:
        """The live workers, starting or replacing processes as needed."""
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            for member in self._workers:
                if member.alive and not member.process.is_alive():  # died; its EOF not read yet
                    self.lost(member)
            self._workers = [w for w in self._workers if w.alive]
            missing = self.processes - len(self._workers)
            if missing > 0:
                started = await asyncio.gather(*(self._start() for _ in range(missing)))
                self._workers.extend(started)
            return list(self._workers)

    async def _start(self) -> Worker:
        loop = asyncio.get_running_loop()
        context = multiprocessing.get_context("spawn")  # never fork a process that runs an event loop
        ours, theirs = context.Pipe(duplex=True)
        process = context.Process(target=worker.serve, args=(theirs,), name="prefetchd-decode", daemon=True)
        await loop.run_in_executor(None, process.start)  # fork+exec: keep it off the loop
        theirs.close()
        member = Worker(next(self._numbers), process, ours)
        loop.add_reader(ours.fileno(), self._on_readable, member)
        await asyncio.wait_for(self._ping(member), _START_TIMEOUT_S)
        log.info("decode worker %d started (pid %s)", member.number, process.pid)
        return member

    async def _ping(self, member: Worker) -> Any:
        """Returns once the worker has started and answers (it replies with its pid)."""
        request = next(self._requests)
        future = asyncio.get_running_loop().create_future()
        member.pending[request] = future
        try:
            member.send(("ping", request))
            return await future
        finally:
            member.pending.pop(request, None)

    def _on_readable(self, member: Worker) -> None:
        try:
            reply = member.conn.recv()
        except (EOFError, OSError):
            self.lost(member)
            return
        kind, key, payload = reply[0], reply[1], reply[2]
        if kind == "mapped":
            key = _map_key(key)
        future = member.pending.get(key)
        if future is not None and not future.done():
            future.set_result(payload)
        elif kind not in ("done", "mapped", "pong"):
            log.warning("decode worker %d sent an unexpected %r", member.number, kind)

    def lost(self, member: Worker) -> None:
        """Mark `member` dead: its pipe closed, its pending jobs failed with WorkerDied (they are redone)."""
        if not member.alive:
            return
        member.alive = False
        with contextlib.suppress(ValueError, OSError):
            asyncio.get_running_loop().remove_reader(member.conn.fileno())
        member.conn.close()
        member.process.join(timeout=0)
        code = member.process.exitcode
        how = f"signal {-code}" if code is not None and code < 0 else f"exit status {code}"
        error = WorkerDied(f"decode worker {member.number} (pid {member.process.pid}) died ({how})")
        if not self._closed:
            log.error("%s", error.message)
        for future in member.pending.values():
            if not future.done():
                future.set_exception(error)
        member.pending.clear()

    async def lease_ring(self, segment: Segment, *, workers: int) -> RingLease:
        """Map `segment` writable in up to `workers` of the least used workers; call before it is sealed."""
        members = sorted(await self.workers(), key=lambda m: m.leases)[: max(1, workers)]
        mapping = next(self._mapping_ids)
        mapped = await self.map_in(members, mapping, segment.fd, segment.size, writable=True)
        if not mapped:
            raise WorkerDied("no decode worker could map the stream's ring")
        for member in mapped:
            member.leases += 1
        return RingLease(self, mapping, mapped, segment.map)

    def new_mapping_id(self) -> int:
        return next(self._mapping_ids)

    async def map_in(self, members: list[Worker], mapping: int, fd: int, size: int, *, writable: bool) -> list[Worker]:
        """Have `members` map memfd `fd` (by its /proc path) as `mapping`; returns those that did."""
        path = f"/proc/{os.getpid()}/fd/{fd}"
        futures = []
        for member in members:
            future = asyncio.get_running_loop().create_future()
            member.pending[_map_key(mapping)] = future
            try:
                member.send(("map", mapping, path, size, writable))
            except WorkerDied as exc:
                future.set_result(exc.message)  # reported below as a worker that could not map it
            futures.append(future)
        results = await asyncio.gather(*futures, return_exceptions=True)
        mapped = []
        for member, result in zip(members, results, strict=True):
            member.pending.pop(_map_key(mapping), None)
            if result is None:
                mapped.append(member)
            else:
                log.error("decode worker %d could not map shared memory: %s", member.number, result)
        return mapped

    async def close(self) -> None:
        """Close the pipes (workers exit on EOF) and wait for the processes."""
        self._closed = True
        loop = asyncio.get_running_loop()
        for member in self._workers:
            if member.alive:
                member.alive = False
                with contextlib.suppress(ValueError, OSError):
                    loop.remove_reader(member.conn.fileno())
                member.conn.close()
        for member in self._workers:
            await loop.run_in_executor(None, _stop, member.process)
        self._workers = []


async def _finished(future: asyncio.Future[list[Failure]]) -> list[Failure]:
    """The job's result; if cancelled meanwhile, waits for the job to end first (it is writing a ring slot)."""
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await future
        raise


def _map_key(mapping: int) -> int:
    return -1 - mapping  # "mapped" replies are keyed by mapping id; negative keys never meet request numbers


def _stop(process: BaseProcess) -> None:
    process.join(timeout=5)
    if process.is_alive():
        process.kill()
        process.join(timeout=5)


class RingLease:
    """The workers that hold one ring's mapping; jobs for that ring, and its staging memory, go to them only."""

    def __init__(self, pool: DecodePool, segment_id: int, members: list[Worker], ring: mmap.mmap) -> None:
        self.pool = pool
        self.segment_id = segment_id
        self.members = members
        self._local: dict[int, mmap.mmap] = {segment_id: ring}  # the daemon's own mappings, for jobs redone here

    @property
    def live(self) -> list[Worker]:
        return [m for m in self.members if m.alive]

    def new_job_number(self) -> int:
        return next(self.pool._requests)  # unique per worker across every ring it serves

    async def map_staging(self, fd: int, size: int, local: mmap.mmap) -> int:
        """Map a staging memfd read-only in this ring's workers (`local` is the daemon's mapping of it);
        returns its mapping id for jobs."""
        mapping = self.pool.new_mapping_id()
        self._local[mapping] = local
        await self.pool.map_in(self.live, mapping, fd, size, writable=False)
        return mapping

    def unmap(self, mapping: int) -> None:
        self._local.pop(mapping, None)
        for member in self.live:
            with contextlib.suppress(OSError, WorkerDied):
                member.send(("unmap", mapping))

    async def run(self, job: DecodeJob) -> list[Failure]:
        """Run `job` on the least busy live worker; if that worker dies, redo it on another, or here."""
        while live := self.live:
            member = min(live, key=lambda m: len(m.pending))
            try:
                return await self._run_on(member, job)
            except WorkerDied as exc:
                self.pool.lost(member)  # a send that failed has not seen the EOF yet: never pick it again
                log.warning("ring %d: %s; its batch is decoded again", self.segment_id, exc.message)
        return await self._run_here(job)

    async def _run_on(self, member: Worker, job: DecodeJob) -> list[Failure]:
        future: asyncio.Future[list[Failure]] = asyncio.get_running_loop().create_future()
        member.pending[job.job] = future
        try:
            member.send(("decode", job))
            return await _finished(future)  # the worker is writing the slot: it must finish before reuse
        finally:
            member.pending.pop(job.job, None)

    async def _run_here(self, job: DecodeJob) -> list[Failure]:
        """No worker holding this ring is left: decode in the daemon's threads, through its own mappings."""
        ring, staging = self._local[job.rows.segment], self._local[job.staging]
        loop = asyncio.get_running_loop()
        return await _finished(loop.run_in_executor(self.pool.fallback, worker.run_job, job, ring, staging))

    def close(self) -> None:
        self.unmap(self.segment_id)
        for member in self.members:
            member.leases -= 1
