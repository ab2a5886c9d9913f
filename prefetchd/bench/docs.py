"""The generated sections of docs/benchmarks.md: each benchmark rewrites its own block between two markers."""

from __future__ import annotations

import re
from pathlib import Path

DOCS = Path(__file__).resolve().parents[2] / "docs"


def rewrite_section(section: str, begin: str, end: str, body: str, docs: Path = DOCS) -> None:
    """Put `body` between `begin` and `end` in docs/benchmarks.md; the first time, append it under `section`."""
    page = docs / "benchmarks.md"
    block = f"{begin}\n{body}\n{end}"
    current = page.read_text()
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.DOTALL)
    if pattern.search(current):
        updated = pattern.sub(lambda _: block, current)
    else:
        updated = current.rstrip("\n") + f"\n\n{section}\n\n{block}\n"
    page.write_text(updated)
