"""Where the daemon's HTTP side listens: `HOST:PORT` with an IP address, checked before anything starts."""

from __future__ import annotations

import ipaddress

DEFAULT_PORT = 9464  # when the daemon is given no address; `--http HOST:PORT` or `--http off` changes it


def parse_address(text: str) -> tuple[str, int]:
    """`127.0.0.1:9464`, `[::1]:9464`, `0.0.0.0:0` (any free port) → (host, port); ValueError otherwise."""
    host, sep, port_text = text.strip().rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:{DEFAULT_PORT})")
    host = host.removeprefix("[").removesuffix("]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{text!r}: {host!r} is not an IP address (write 127.0.0.1, 0.0.0.0 or ::1)") from None
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"{text!r}: port {port} is out of range")
    return host, port
