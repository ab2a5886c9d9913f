"""Progress bars for the commands, on stderr so that stdout stays the report; the shells only call `advance(n)`."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

Advance = Callable[[int], None]  # n more bytes done
ProgressBar = Callable[[str, int], AbstractContextManager[Advance]]  # (what, total bytes) → a bar while it runs


@contextmanager
def bytes_bar(description: str, total_bytes: int) -> Iterator[Advance]:
    """A tqdm bar counting bytes (KiB, MiB, ... per second)."""
    from tqdm import tqdm  # type: ignore[import-untyped]

    with tqdm(
        total=total_bytes,
        desc=description,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        file=sys.stderr,
        dynamic_ncols=True,
    ) as bar:
        yield bar.update


@contextmanager
def no_bar(description: str, total_bytes: int) -> Iterator[Advance]:
    """For `--no-progress`, and for callers with no terminal to draw on."""
    yield lambda n: None
