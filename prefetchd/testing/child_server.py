"""Test servers that run as child processes: started, awaited until they say where they listen, stopped.

The proxies (network, faults) run in a process of their own so that their CPU is not the reader's; each is
a module run as `python -m`, printing `Listening on URL` once it accepts connections (readiness is the
server saying so, not a sleep).
"""

from __future__ import annotations

import asyncio
import os
import re
import select
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from contextlib import asynccontextmanager

import aiohttp
from aiohttp import web

from .processes import stop_child

_LISTENING = re.compile(r"Listening on (https?://[\d.]+:\d+)")


class ChildServer:
    """`with Server(...) as server:` runs `python -m <module> <args>` until the block ends."""

    module = ""  # set by subclasses
    what = "the server"

    def __init__(self, args: list[str], *, start_timeout_s: float = 30.0) -> None:
        self.args = args
        self.start_timeout_s = start_timeout_s
        self.endpoint_url = ""
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ChildServer:
        self._process = subprocess.Popen(
            [sys.executable, "-m", self.module, *self.args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert self._process.stdout is not None
        ready, _, _ = select.select([self._process.stdout], [], [], self.start_timeout_s)
        line = self._process.stdout.readline().decode() if ready else ""
        match = _LISTENING.search(line)
        if match is None:
            self.__exit__()
            raise RuntimeError(f"{self.what} did not start: {line!r}")
        self.endpoint_url = match.group(1)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._process is not None:
            stop_child(self._process)
            self._process = None


async def serve_aiohttp(
    handle: Callable[[web.Request], Awaitable[web.StreamResponse]],
    host: str,
    port: int,
    close: Callable[[], Awaitable[None]],
) -> None:
    """Serve every path with `handle`, say where, and run until cancelled; then `close()`."""
    app = web.Application(client_max_size=1 << 30)
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    server = site._server
    assert server is not None
    address = server.sockets[0].getsockname()  # type: ignore[attr-defined]
    print(f"Listening on http://{address[0]}:{address[1]}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await close()
        await runner.cleanup()


class Upstream:
    """The server a proxy passes requests on to, over one session that leaves bodies as they are."""

    def __init__(self, url: str, *, timeout: aiohttp.ClientTimeout | None = None) -> None:
        self.url = url.rstrip("/")
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    @asynccontextmanager
    async def forward(self, request: web.Request, *, drop: Collection[str]) -> AsyncIterator[aiohttp.ClientResponse]:
        """`request` sent on as it came (method, path, query, body), less the headers named in `drop`."""
        if self._session is None:
            self._session = (
                aiohttp.ClientSession(auto_decompress=False)  # aiohttp's default timeout
                if self._timeout is None
                else aiohttp.ClientSession(auto_decompress=False, timeout=self._timeout)
            )
        body = await request.read()
        async with self._session.request(
            request.method, self.url + request.path_qs, headers=kept_headers(request.headers, drop), data=body or None
        ) as answer:
            yield answer

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def kept_headers(headers: Mapping[str, str], drop: Collection[str]) -> dict[str, str]:
    """`headers` less those named (lower case) in `drop`."""
    return {k: v for k, v in headers.items() if k.lower() not in drop}
