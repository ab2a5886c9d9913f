"""The daemon's memory while it decodes an object ten times larger than its byte budget.

One epoch of the ~1 GB JPEG .rec decoded through the client from S3 (nginx behind the modelled network),
with `--budget 100MiB` (fetched-but-unconsumed bytes per stream) and the epoch cache off. The peak resident
set (`VmHWM` in /proc/<pid>/status) of the daemon and of each decode worker is read once the epoch is
drained, before anything exits; the daemon's is held to ring + budget + 150 MB. Pages of the ring and of the
staging memory that two processes share count in both, so the sum over processes is an upper bound.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .images import SHAPE, dataset
from .network import bench_s3, daemon

BUDGET = "100MiB"
BUDGET_BYTES = 100 << 20
ALLOWANCE_BYTES = 150_000_000  # the allowance over ring + budget: interpreter, libraries, buffers


@dataclass(frozen=True)
class MemoryResult:
    object_bytes: int
    ring_bytes: int
    idle_rss_bytes: int  # the daemon before the stream opened
    peaks: dict[str, int]  # VmHWM per process: "daemon", then "decode worker <pid>"...
    shared: dict[str, int]  # RssShmem per process at the end: the ring and staging memory it has touched

    @property
    def bound_bytes(self) -> int:
        return self.ring_bytes + BUDGET_BYTES + ALLOWANCE_BYTES


def _status_bytes(pid: int, field: str) -> int:
    """A `kB` line of /proc/<pid>/status, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise KeyError(f"/proc/{pid}/status has no {field}")


def _descendants(pid: int) -> list[int]:
    children = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children += [int(child) for child in (task / "children").read_text().split()]
    return [grandchild for child in children for grandchild in (child, *_descendants(child))]


def _role(pid: int) -> str:
    command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    if "spawn_main" in command:
        return "decode worker"
    return "multiprocessing's helper" if "multiprocessing" in command else f"child ({command[:40]})"


def run(
    megabytes: int = 1000,
    latency_ms: float = 30.0,
    megabytes_per_s: float = 90.0,
    batch_size: int = 100,
    say: Callable[[str], None] = print,
) -> MemoryResult:
    from prefetchd_client import recordio_iter

    files = dataset(megabytes)
    with (
        bench_s3([files.rec, files.idx]) as s3,
        s3.network(latency_ms, megabytes_per_s) as network,
        daemon(network.endpoint_url, "--cache-size", "0", "--budget", BUDGET) as serve,
    ):
        idle = _status_bytes(serve.pid, "VmRSS")
        stream = recordio_iter(
            s3.urls[files.rec],
            s3.urls[files.idx],
            batch_size=batch_size,
            data_shape=SHAPE,
            socket_path=serve.socket_path,
        )
        with stream:
            images = sum(batch.data.shape[0] - batch.pad for batch in stream)
            processes = {"daemon": serve.pid} | {f"{_role(pid)} {pid}": pid for pid in _descendants(serve.pid)}
            peaks = {name: _status_bytes(pid, "VmHWM") for name, pid in processes.items()}
            shared = {name: _status_bytes(pid, "RssShmem") for name, pid in processes.items()}
            ring = stream.opened.segment_bytes
    if images != files.count:
        raise RuntimeError(f"decoded {images} images of {files.count}")
    result = MemoryResult(files.rec.stat().st_size, ring, idle, peaks, shared)
    report(result, say)
    return result


def report(result: MemoryResult, say: Callable[[str], None]) -> None:
    mb = 1e6
    say(
        f"\nDaemon memory decoding the {result.object_bytes / mb:,.0f} MB .rec from S3 with --budget {BUDGET} "
        f"(the object is {result.object_bytes / BUDGET_BYTES:.0f}x the budget), the epoch cache off"
    )
    say(f"  daemon before the stream: {result.idle_rss_bytes / mb:,.0f} MB resident")
    for name, peak in result.peaks.items():
        shared = result.shared[name] / mb
        say(f"  peak resident, {name}: {peak / mb:,.0f} MB (shared memory at the end: {shared:,.0f} MB)")
    say(f"  sum of the peaks (shared pages counted in each process): {sum(result.peaks.values()) / mb:,.0f} MB")
    daemon_peak = result.peaks["daemon"]
    verdict = "within" if daemon_peak <= result.bound_bytes else "OVER"
    say(
        f"  daemon peak {daemon_peak / mb:,.0f} MB vs ring {result.ring_bytes / mb:,.0f} MB + budget "
        f"{BUDGET_BYTES / mb:,.0f} MB + 150 MB = {result.bound_bytes / mb:,.0f} MB: {verdict}"
    )
