"""The bytes benchmark's figures: a table on stdout, a generated section of docs/benchmarks.md, a PNG plot.

Ratios per object and latency: against the best peer (the fastest hand-written concurrent reader), against
the sequential 8 MiB reader, and against the reader's own limit, min(connections × the per-connection pace,
the unshaped relay's best round).
"""

from __future__ import annotations

import datetime
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .bytes import PEER, PREFETCHD, SEQUENTIAL, UNSHAPED, Result
from .docs import DOCS, rewrite_section

SECTION = "## Raw bytes from nginx through the modelled network (generated)"
BEGIN = "<!-- begin: written by `prefetchd bench --only bytes`, rewritten on every run -->"
END = "<!-- end: written by `prefetchd bench --only bytes` -->"
PLOT_NAME = "benchmarks-bytes.png"


@dataclass(frozen=True)
class Row:
    reader: str
    kind: str
    connections: int
    mb_per_s: float
    vs_best_peer: float
    vs_sequential: float
    limit_mb_per_s: float

    @property
    def vs_limit(self) -> float:
        return self.mb_per_s / self.limit_mb_per_s


@dataclass(frozen=True)
class Table:
    latency_ms: float
    megabytes_per_s: float
    obj: str
    rounds: int
    unshaped_mb_per_s: float  # the best round of the best unshaped reader: a ceiling
    best_peer: str
    rows: list[Row]


def tables(results: list[Result]) -> list[Table]:
    out = []
    for latency_ms, obj in dict.fromkeys((r.latency_ms, r.obj) for r in results):
        group = [r for r in results if (r.latency_ms, r.obj) == (latency_ms, obj)]
        timed = [r for r in group if r.kind != UNSHAPED]
        unshaped = max(r.best_mb_per_s for r in group if r.kind == UNSHAPED)
        best = max((r for r in timed if r.kind == PEER), key=lambda r: r.mb_per_s)
        sequential = next(r for r in timed if r.kind == SEQUENTIAL)
        rows = [
            Row(
                r.reader,
                r.kind,
                r.connections,
                r.mb_per_s,
                r.mb_per_s / best.mb_per_s,
                r.mb_per_s / sequential.mb_per_s,
                min(r.connections * r.megabytes_per_s, unshaped),
            )
            for r in timed
        ]
        pace = timed[0].megabytes_per_s
        out.append(Table(latency_ms, pace, obj, len(timed[0].seconds), unshaped, best.reader, rows))
    return out


def _title(table: Table) -> str:
    return f"{table.obj} at {table.latency_ms:g} ms first byte, {table.megabytes_per_s:g} MB/s per connection"


def text(table: Table) -> list[str]:
    lines = [
        f"\n{_title(table)}, median of {table.rounds} rounds",
        f"unshaped through the same relay: {table.unshaped_mb_per_s:,.0f} MB/s (best round); "
        f"best peer: {table.best_peer}",
        f"{'reader':44} {'conns':>5} {'MB/s':>7} {'vs best peer':>12} {'vs sequential':>13} "
        f"{'limit MB/s':>10} {'vs limit':>8}",
    ]
    for row in table.rows:
        lines.append(
            f"{row.reader:44} {row.connections:5} {row.mb_per_s:7,.0f} {row.vs_best_peer:11.2f}x "
            f"{row.vs_sequential:12.1f}x {row.limit_mb_per_s:10,.0f} {row.vs_limit:7.2f}x"
        )
    return lines


def markdown(tables: list[Table], command: str) -> str:
    when = datetime.date.today().isoformat()
    cores = len(os.sched_getaffinity(0))
    lines = [
        f"Measured {when} on {cores} cores (Python {platform.python_version()}), median of "
        f"{tables[0].rounds} interleaved rounds:",
        "",
        f"    {command}",
        "",
        "nginx serves the objects; `prefetchd.testing.shaped_relay` delays each request by the first-byte",
        "latency and paces each connection. The limit of a reader with n connections is min(n × the pace, the",
        "same relay unshaped, best round); nginx and the relay share the machine's cores with the readers.",
        "The hand-written concurrent readers reuse one preallocated buffer and a warm client; prefetchd, its",
        "epoch cache off, is measured twice: a new stream per read (an open, a HEAD's worth of latency and a",
        "fresh ring, whose pages fault in as they fill), and one stream per object kept open, timed on the",
        "epochs after an untimed one (a trainer's steady state: the ring warm, epochs back to back).",
        "",
        f"![MB/s per reader and object]({PLOT_NAME})",
    ]
    for table in tables:
        lines += [
            "",
            f"### {_title(table)}",
            "",
            f"Unshaped through the same relay: {table.unshaped_mb_per_s:,.0f} MB/s. Best peer: {table.best_peer}.",
            "",
            "| reader | in flight | MB/s | vs best peer | vs sequential | limit MB/s | vs limit |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for row in table.rows:
            cells = [
                row.reader,
                str(row.connections),
                f"{row.mb_per_s:,.0f}",
                f"{row.vs_best_peer:.2f}×",
                f"{row.vs_sequential:.1f}×",
                f"{row.limit_mb_per_s:,.0f}",
                f"{row.vs_limit:.2f}×",
            ]
            if row.kind == PREFETCHD:
                cells = [f"**{cell}**" for cell in cells]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_docs(tables: list[Table], command: str, docs: Path = DOCS) -> None:
    """Rewrite the generated section of `docs/benchmarks.md` (appended the first time) and the plot."""
    rewrite_section(SECTION, BEGIN, END, markdown(tables, command), docs)
    plot(tables, docs / PLOT_NAME)


def plot(tables: list[Table], path: Path) -> None:
    """Bars of MB/s per reader: a row of panels per latency, a column per object; dashed: the relay unshaped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {PREFETCHD: "tab:red", PEER: "tab:blue", SEQUENTIAL: "tab:gray"}
    latencies = list(dict.fromkeys(table.latency_ms for table in tables))
    objects = list(dict.fromkeys(table.obj for table in tables))
    readers = len(tables[0].rows)
    figure, axes = plt.subplots(
        len(latencies),
        len(objects),
        figsize=(6.5 * len(objects), (0.3 * readers + 1.2) * len(latencies) + 0.6),
        sharey=True,
        squeeze=False,
    )
    for table in tables:
        axis = axes[latencies.index(table.latency_ms), objects.index(table.obj)]
        names = [row.reader for row in table.rows][::-1]
        values = [row.mb_per_s for row in table.rows][::-1]
        axis.barh(names, values, color=[colours.get(row.kind, "tab:olive") for row in table.rows][::-1])
        axis.axvline(table.unshaped_mb_per_s, color="black", linestyle="--", linewidth=1)
        for y, value in enumerate(values):
            axis.text(value, y, f" {value:,.0f}", va="center", fontsize=7)
        axis.set_title(_title(table), fontsize=9)
        axis.tick_params(labelsize=7)
        axis.set_xlabel("MB/s, median of rounds", fontsize=7)
    figure.suptitle(
        "red: prefetchd through its client; blue: hand-written concurrent readers; grey: sequential 8 MiB; "
        "olive: whole object; dashed: the relay unshaped",
        fontsize=8,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def report(results: list[Result], say: Callable[[str], None], command: str | None = None) -> list[Table]:
    """Say the tables; with `command` (how they were made), also rewrite the docs' section and plot."""
    made = tables(results)
    for table in made:
        for line in text(table):
            say(line)
    if command is not None:
        write_docs(made, command)
        say(f"\nwrote {DOCS / 'benchmarks.md'} (its generated section) and {DOCS / PLOT_NAME}")
    return made
