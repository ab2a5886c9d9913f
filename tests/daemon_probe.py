"""What a daemon process holds, read from /proc: its descriptors by kind, its rings, its memory.

A ring is a memfd named `prefetchd-stream-<id>`; the daemon holds it as a descriptor and as a mapping, so
a ring that outlives its stream shows in `/proc/<pid>/fd` or `/proc/<pid>/maps` (or both).
"""

from __future__ import annotations

import os
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

_KIND = re.compile(r"^(socket|pipe|anon_inode):|^/memfd:([a-z-]+)")
RING_MEMFD = "/memfd:prefetchd-stream-"


def descriptors(pid: int) -> dict[int, str]:
    """fd number → what it points at (`socket:[123]`, `/memfd:prefetchd-stream-1 (deleted)`, a path...)."""
    found = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            found[int(name)] = os.readlink(f"/proc/{pid}/fd/{name}")
        except FileNotFoundError:  # closed while we looked
            continue
    return found


def _unix_socket_inodes(pid: int) -> set[str]:
    lines = Path(f"/proc/{pid}/net/unix").read_text().splitlines()[1:]
    return {line.split()[6] for line in lines if len(line.split()) > 6}


def descriptor_kinds(pid: int) -> Counter[str]:
    """How many descriptors of each kind: `unix socket`, `tcp socket`, `pipe`, `anon_inode:[pidfd]`,
    `memfd:prefetchd-stream`, `file`..."""
    kinds: Counter[str] = Counter()
    unix = _unix_socket_inodes(pid)
    for target in descriptors(pid).values():
        match = _KIND.match(target)
        if match is None:
            kinds["file"] += 1
        elif match.group(2):
            kinds[f"memfd:{match.group(2).rstrip('-')}"] += 1
        elif match.group(1) == "anon_inode":
            kinds[target] += 1
        elif match.group(1) == "socket":
            kinds["unix socket" if target[len("socket:[") : -1] in unix else "tcp socket"] += 1
        else:
            kinds[match.group(1)] += 1
    return kinds


def held_apart_from_connections(pid: int) -> Counter[str]:
    """`descriptor_kinds` less the TCP sockets: kept-alive connections to S3 belong to the fetch layer's pool."""
    kinds = descriptor_kinds(pid)
    del kinds["tcp socket"]
    return kinds


def rings(pid: int) -> int:
    """Rings the daemon still holds, as a descriptor or a mapping."""
    held = {target.split(" ")[0] for target in descriptors(pid).values() if target.startswith(RING_MEMFD)}
    maps = Path(f"/proc/{pid}/maps").read_text()
    held |= {line.split()[-2] for line in maps.splitlines() if RING_MEMFD in line}
    return len(held)


@dataclass(frozen=True)
class Memory:
    rss_bytes: int
    anon_bytes: int
    shmem_bytes: int  # ring and staging memory the daemon has touched

    def __str__(self) -> str:
        rss, anon, shmem = (size / (1 << 20) for size in (self.rss_bytes, self.anon_bytes, self.shmem_bytes))
        return f"RSS {rss:.1f} MiB (anon {anon:.1f}, shmem {shmem:.1f})"


def memory(pid: int) -> Memory:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "RssAnon", "RssShmem"):
            fields[name] = int(value.split()[0]) * 1024
    return Memory(fields["VmRSS"], fields["RssAnon"], fields["RssShmem"])


def within(timeout_s: float, condition: Callable[[], bool], interval_s: float = 0.01) -> bool:
    """Whether `condition()` holds at some point before `timeout_s` has passed (polled, never a bare sleep)."""
    deadline = time.monotonic() + timeout_s
    while True:
        if condition():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval_s)


def settled(read: Callable[[], T], timeout_s: float = 2.0, interval_s: float = 0.05) -> T:
    """`read()` once two readings `interval_s` apart agree: what a daemon holds once a closing client is gone."""
    deadline = time.monotonic() + timeout_s
    last = read()
    while time.monotonic() < deadline:
        time.sleep(interval_s)
        now = read()
        if now == last:
            return now
        last = now
    return last


def decode_workers(daemon_pid: int) -> list[int]:
    """The daemon's decode worker processes. They are spawned from a thread, and each thread lists its own
    children; the spawn context's resource tracker is not one of them."""
    workers = []
    for task in Path(f"/proc/{daemon_pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            command = Path(f"/proc/{child}/cmdline").read_bytes()
            if b"multiprocessing.spawn" in command and b"resource_tracker" not in command:
                workers.append(int(child))
    return sorted(workers)


def shm_names() -> set[str]:
    return set(os.listdir("/dev/shm"))
