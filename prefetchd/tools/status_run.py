"""`prefetchd status`'s I/O: read the daemon's `/streams` over HTTP, twice an interval apart, and print the table.

Plain blocking urllib: the command is a short-lived process with nothing else to do while it waits.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from prefetchd_client.errors import DaemonUnavailable

from .status import Reading, render_status

CLEAR_SCREEN = "\x1b[H\x1b[2J"  # cursor home, erase the screen: each refresh replaces the last table


def read_streams(url: str, timeout_s: float = 5.0) -> dict[str, Any]:
    """One `/streams` reading; DaemonUnavailable when nothing answers there, or something that is not prefetchd."""
    try:
        with urllib.request.urlopen(f"{url}/streams", timeout=timeout_s) as answer:
            reading: dict[str, Any] = json.loads(answer.read())
    except (OSError, ValueError) as exc:  # URLError, refused, timed out, HTTP errors; not JSON
        reason = getattr(exc, "reason", exc)
        raise DaemonUnavailable(
            f"no prefetchd daemon answers at {url}/streams ({reason}); is `prefetchd serve` running, and is its "
            "HTTP side on (--http)? Point this command at it with --http URL or the daemon's --config"
        ) from exc
    if not isinstance(reading, dict) or "streams" not in reading:
        raise DaemonUnavailable(f"{url}/streams answered, but not as a prefetchd daemon does")
    return reading


def watch(
    url: str,
    interval_s: float,
    *,
    once: bool,
    say: Callable[[str], None],
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Print the table every `interval_s` until interrupted; `once`: one table, its rates over one interval."""
    before: Reading = read_streams(url)
    taken = clock()
    while True:
        sleep(interval_s)
        after = read_streams(url)
        now = clock()
        table = render_status(after, before, now - taken)
        say(table if once else CLEAR_SCREEN + table)
        if once:
            return
        before, taken = after, now
