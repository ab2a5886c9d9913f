"""`prefetchd status`'s pure core: two readings of the daemon's `/streams` → the table a person reads.

Rates are differences of the counters in two readings over the time between them, so the daemon keeps no
rate state and a reading costs it one snapshot. Nothing here does I/O; `status_run.py` fetches the readings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..observe.address import parse_address

Reading = Mapping[str, Any]  # one `/streams` answer, as JSON
MB = 1_000_000
SOURCES_WIDTH = 72  # characters of a stream's sources the table shows: the bucket and the file names say the most
NO_RATE = "-"
RING_COLUMN = "RING free/filling/ready"
COLUMNS = ("STREAM", "PID", "FORMAT", "SOURCES", "EPOCH", "BATCHES", "BATCH/S", "MB/S", RING_COLUMN, "STALL")


def status_url(text: str) -> str:
    """`http://127.0.0.1:9464`, `127.0.0.1:9464` or the daemon's own `0.0.0.0:9464` → the base URL to ask.

    A daemon listening on every address (0.0.0.0, ::) is asked on loopback. ValueError for anything else.
    """
    text = text.strip().rstrip("/")
    if text.startswith("https://"):
        raise ValueError(f"{text!r}: the daemon's HTTP side speaks http://, not https://")
    host, port = parse_address(text.removeprefix("http://"))
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def shorten(text: str, width: int = SOURCES_WIDTH) -> str:
    """`text` in at most `width` characters, its middle replaced by `…`: bucket and file name stay readable."""
    if len(text) <= width:
        return text
    head = (width - 1) // 2
    return f"{text[:head]}…{text[len(text) - (width - 1 - head) :]}"


def short_sources(urls: Sequence[str], width: int = SOURCES_WIDTH) -> str:
    """A stream's sources in one short cell: `s3://bucket/…/{images,labels}`, their folder's middle left out."""
    if not urls:
        return ""
    folders = {url.rpartition("/")[0] for url in urls}
    if len(folders) > 1:
        return shorten(", ".join(urls), width)
    folder = folders.pop()
    scheme, sep, rest = folder.partition("://")
    bucket, _, path = rest.partition("/")
    if sep and path:
        folder = f"{scheme}://{bucket}/…"
    names = [url.rpartition("/")[2] for url in urls]
    return shorten(f"{folder}/{names[0] if len(names) == 1 else '{' + ','.join(names) + '}'}", width)


def render_status(after: Reading, before: Reading | None = None, elapsed_s: float = 0.0) -> str:
    """The table: one row per live stream, then the daemon's S3 and cache lines; rates need `before`."""
    rated = before is not None and elapsed_s > 0
    streams: Sequence[Mapping[str, Any]] = after.get("streams", [])
    count = len(streams)
    lines = [
        f"prefetchd {after.get('version', '?')} pid {after.get('pid', '?')}: {after.get('connections', 0)} "
        f"connection(s), {count} stream{'s' * (count != 1)}"
        + (f"; rates over the last {elapsed_s:.1f} s" if rated else "; rates need two readings (--interval)")
    ]
    if streams:
        earlier = {s["stream"]: s for s in (before or {}).get("streams", [])}
        rows = [_stream_row(s, earlier.get(s["stream"]) if rated else None, elapsed_s) for s in streams]
        lines += _table([list(COLUMNS), *rows])
    else:
        lines.append("no streams open")
    lines.append(_s3_line(after.get("s3"), before.get("s3") if before and rated else None, elapsed_s))
    lines.append(_cache_line(after.get("cache"), before.get("cache") if before and rated else None))
    return "\n".join(lines)


def _rate(now: float, then: float | None, elapsed_s: float, scale: float = 1.0, digits: int = 1) -> str:
    if then is None or elapsed_s <= 0:
        return NO_RATE
    return f"{(now - then) / scale / elapsed_s:.{digits}f}"


def _was(earlier: Mapping[str, Any] | None, counter: str) -> float | None:
    """A counter's value in the earlier reading; None when there was none (no rate then)."""
    return None if earlier is None else float(earlier.get(counter, 0))


def _stream_row(stream: Mapping[str, Any], earlier: Mapping[str, Any] | None, elapsed_s: float) -> list[str]:
    sources = short_sources([str(url) for url in stream.get("sources", {}).values()])
    wait_s = float(stream.get("trainer_wait_s", 0.0))
    stall = f"{wait_s:.1f}s"
    if earlier is not None and elapsed_s > 0:
        share = (wait_s - float(earlier.get("trainer_wait_s", 0.0))) / elapsed_s
        stall += f" ({min(max(share, 0.0), 1.0):.0%})"  # of the interval the trainer spent waiting
    ring = f"{stream['ring_free']}/{stream['ring_filling']}/{stream['ring_ready']} of {stream['ring_slots']}"
    return [
        str(stream["stream"]),
        str(stream["pid"]),
        str(stream["format"]),
        sources,
        str(stream["epoch"]),
        str(stream["batches_sent"]),
        _rate(stream["batches_sent"], _was(earlier, "batches_sent"), elapsed_s),
        _rate(stream.get("bytes_sent", 0), _was(earlier, "bytes_sent"), elapsed_s, MB),
        ring,
        stall,
    ]


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]


def _s3_line(s3: Mapping[str, Any] | None, earlier: Mapping[str, Any] | None, elapsed_s: float) -> str:
    if s3 is None:
        return "S3: not used yet"
    received = _rate(s3["bytes_received"], _was(earlier, "bytes_received"), elapsed_s, MB)
    requests = _rate(s3["requests"], _was(earlier, "requests"), elapsed_s)
    limits = ", ".join(
        f"{bucket['name']} {bucket['limit']['limit']}/{bucket['limit']['ceiling']} ({bucket['in_flight']} in flight)"
        for bucket in s3.get("buckets", [])
    )
    hedges = s3.get("hedges") or {}
    raced = f"; hedges {hedges['started']} ({hedges['won']} won)" if hedges.get("started") else ""
    return (
        f"S3: {received} MB/s, {requests} requests/s; retries {s3['retries']}, throttled {s3['throttled']}, "
        f"transient {s3['transient']}, broken {s3['broken']}{raced}; AIMD limit {limits or 'none yet'}"
    )


def _cache_line(cache: Mapping[str, Any] | None, earlier: Mapping[str, Any] | None) -> str:
    if cache is None:
        return "cache: off"
    hits, misses = cache["hits"], cache["misses"]
    window = "all time"
    if earlier is not None and (cache["hits"] + cache["misses"]) > (earlier["hits"] + earlier["misses"]):
        hits, misses, window = hits - earlier["hits"], misses - earlier["misses"], "interval"
    rate = f"{hits / (hits + misses):.0%}" if hits + misses else NO_RATE
    return (
        f"cache: hit rate {rate} ({window}: {hits} hits, {misses} misses), "
        f"holds {cache['held_bytes'] / MB:.1f} of {cache['budget_bytes'] / MB:.1f} MB"
    )
