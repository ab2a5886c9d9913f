"""The daemon's HTTP side: `/healthz`, `/metrics` (Prometheus) and `/streams` (JSON), 127.0.0.1 by default.

Read-only and small: it never touches a stream, so a scraper cannot disturb training. Each answer reads
one `DaemonSnapshot` on the loop (a few hundred numbers; well under a millisecond).
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from types import TracebackType

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry

from .address import parse_address
from .metrics import DaemonCollector, render
from .snapshot import DaemonSnapshot


class HttpServer:
    """`async with HttpServer(address, snapshot) as http:` serves until the block ends; `http.url` says where."""

    def __init__(self, address: str, snapshot: Callable[[], DaemonSnapshot]) -> None:
        self.host, self.port = parse_address(address)
        self._snapshot = snapshot
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(DaemonCollector(snapshot))
        self._runner: web.AppRunner | None = None
        self.url = ""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/streams", self._streams)
        return app

    async def __aenter__(self) -> HttpServer:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.create_server((self.host, self.port), family=family)  # OSError (EADDRINUSE) to the caller
        try:
            self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
            await self._runner.setup()
            await web.SockSite(self._runner, sock).start()
        except BaseException:
            sock.close()
            raise
        host, port = sock.getsockname()[:2]
        self.url = f"http://{f'[{host}]' if family == socket.AF_INET6 else host}:{port}"
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _healthz(self, request: web.Request) -> web.Response:
        snap = self._snapshot()
        return web.json_response({"status": "ok", "pid": snap.pid, "streams": len(snap.streams)})

    async def _metrics(self, request: web.Request) -> web.Response:
        response = web.Response(body=render(self._registry))
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    async def _streams(self, request: web.Request) -> web.Response:
        return web.json_response(self._snapshot().streams_json())
