"""Where the daemon listens, decided the same way by the daemon and every client (pure: env passed in)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

SOCKET_ENV = "PREFETCHD_SOCKET"
AUTOSTART_ENV = "PREFETCHD_AUTOSTART"
SOCKET_NAME = "control.sock"


def default_socket_path(env: Mapping[str, str], uid: int) -> Path:
    """`$PREFETCHD_SOCKET`, else a per-user directory: `$XDG_RUNTIME_DIR/prefetchd`, else `/tmp/prefetchd-<uid>`."""
    explicit = env.get(SOCKET_ENV)
    if explicit:
        return Path(explicit)
    runtime = env.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return Path(runtime) / "prefetchd" / SOCKET_NAME
    return Path(f"/tmp/prefetchd-{uid}") / SOCKET_NAME


def autostart_enabled(env: Mapping[str, str]) -> bool:
    """`PREFETCHD_AUTOSTART=0` (or false/no/off) stops clients from starting a daemon themselves."""
    return env.get(AUTOSTART_ENV, "1").strip().lower() not in ("0", "false", "no", "off")
