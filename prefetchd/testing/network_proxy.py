"""A network between the daemon and an S3 server: first-byte latency and per-connection bandwidth.

The kernel here has no netem, so the network is emulated in the application layer, in one of two ways:
- in front of a slow S3 server (moto), an aiohttp server: object GETs are answered from a copy of the object
  fetched once from upstream (moto's own ~50 MB/s would otherwise be the bottleneck, not the network being
  emulated); each response waits `latency_s` before its first byte and is paced to `bytes_per_s`.
  Everything else (HEAD, PUT, listings, errors such as 404 and 403) is passed to upstream and back, after
  the same latency. `If-Match` and `Range` are honoured as S3 honours them.
- in front of a fast one (nginx, `relay=True`): `shaped_relay`, a TCP relay that delays each request and
  paces each connection, so every byte and every answer is the server's own (TLS too, end to end); it can
  also hold a share of the requests back longer (`pause`, `pause_ms`): S3's slow tail.

Run it as `python -m prefetchd.testing.network_proxy --upstream URL [--relay]`; it prints its address.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import socket
import tempfile
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from .child_server import ChildServer, Upstream, kept_headers, serve_aiohttp
from .shaped_relay import NO_PAUSES, Pauses, serve_relay

_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "content-encoding"}
_PIECE_BYTES = 256 * 1024
_SIGV2_QUERY = {"AWSAccessKeyId", "Signature", "Expires"}


@dataclass(frozen=True, slots=True)
class _Object:
    body: bytes
    headers: dict[str, str]  # what a GET of the whole object answered: ETag, Last-Modified, Content-Type...


def _only_signature(query: Mapping[str, str]) -> bool:
    """Whether a query string only signs the request (a presigned URL), rather than ask for something else."""
    return all(name.startswith("X-Amz-") or name in _SIGV2_QUERY for name in query)


class Network:
    """The aiohttp application: latency and pacing in front of `upstream`."""

    def __init__(self, upstream: str, *, latency_s: float, bytes_per_s: float) -> None:
        self.upstream = Upstream(upstream)
        self.latency_s = latency_s
        self.bytes_per_s = bytes_per_s
        self._objects: dict[str, _Object] = {}
        self._loading: dict[str, asyncio.Lock] = {}

    async def handle(self, request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(self.latency_s)
        is_object_get = request.method == "GET" and _only_signature(request.query) and request.path.count("/") >= 2
        if is_object_get:
            stored = await self._object(request)
            if isinstance(stored, _Object):
                return await self._serve(request, stored)
            return stored
        return await self._forward(request)

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        async with self.upstream.forward(request, drop=_HOP_BY_HOP) as answer:
            payload = await answer.read()
            out = kept_headers(answer.headers, _HOP_BY_HOP)
            if request.method != "HEAD":
                return web.Response(status=answer.status, headers=out, body=payload)
            head = web.StreamResponse(status=answer.status, headers=out)
            head.content_length = int(answer.headers.get("Content-Length", "0"))  # the object's, with no body
            await head.prepare(request)
            await head.write_eof()
            return head

    async def _object(self, request: web.Request) -> _Object | web.Response:
        """The whole object from upstream, fetched once; or upstream's error response."""
        key = request.path
        if key in self._objects:
            return self._objects[key]
        lock = self._loading.setdefault(key, asyncio.Lock())
        async with lock:
            if key in self._objects:
                return self._objects[key]

            # the whole object, whatever range was asked; the query is kept (a presigned URL's signature)
            async with self.upstream.forward(request, drop=_HOP_BY_HOP | {"range", "if-match"}) as answer:
                body = await answer.read()
                kept = kept_headers(answer.headers, _HOP_BY_HOP)
                if answer.status != 200:
                    return web.Response(status=answer.status, headers=kept, body=body)
            stored = _Object(body, kept)
            self._objects[key] = stored
            return stored

    async def _serve(self, request: web.Request, stored: _Object) -> web.StreamResponse:
        etag = next((v for k, v in stored.headers.items() if k.lower() == "etag"), "")
        wanted = request.headers.get("If-Match")
        if wanted is not None and wanted.strip() != etag:
            return web.Response(status=412, text="<Error><Code>PreconditionFailed</Code></Error>")
        size = len(stored.body)
        start, stop, status = 0, size, 200
        headers = dict(stored.headers)
        asked = request.headers.get("Range")
        if asked:
            match = _RANGE.match(asked.strip())
            if match is None or int(match.group(1)) >= size:
                return web.Response(status=416, text="<Error><Code>InvalidRange</Code></Error>")
            start = int(match.group(1))
            stop = min(size, int(match.group(2)) + 1) if match.group(2) else size
            status = 206
            headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
            # S3 sends no whole-object checksum with a range: clients would check it against the part
            headers = {k: v for k, v in headers.items() if not k.lower().startswith("x-amz-checksum")}
        response = web.StreamResponse(status=status, headers=headers)
        response.content_length = stop - start
        view = memoryview(stored.body)
        began = time.monotonic()
        sent = 0
        try:
            await response.prepare(request)
            for piece in range(start, stop, _PIECE_BYTES):
                chunk = view[piece : min(stop, piece + _PIECE_BYTES)]
                await response.write(chunk)
                sent += len(chunk)
                ahead = sent / self.bytes_per_s - (time.monotonic() - began)
                if ahead > 0:
                    await asyncio.sleep(ahead)
            await response.write_eof()
        except ConnectionResetError:
            pass  # the client hung up mid-body (a stream closed while reading ahead): as on a real network
        return response

    async def close(self) -> None:
        await self.upstream.close()


async def _serve(upstream: str, host: str, port: int, latency_s: float, bytes_per_s: float) -> None:
    network = Network(upstream, latency_s=latency_s, bytes_per_s=bytes_per_s)
    await serve_aiohttp(network.handle, host, port, network.close)


async def _serve_relay(
    upstream: str, host: str, port: int, latency_s: float, bytes_per_s: float, pauses: Pauses = NO_PAUSES
) -> None:

    target = urllib.parse.urlsplit(upstream)
    if target.hostname is None or target.port is None:
        raise SystemExit(f"--upstream {upstream}: write scheme://host:port")
    with socket.create_server((host, port), backlog=1024) as listener:
        address = listener.getsockname()
        print(f"Listening on {target.scheme}://{address[0]}:{address[1]}", flush=True)
        await serve_relay(listener, (target.hostname, target.port), latency_s, bytes_per_s, pauses)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency-ms", type=float, default=30.0)
    parser.add_argument("--megabytes-per-s", type=float, default=90.0, help="per connection; 0: no limit")
    parser.add_argument("--relay", action="store_true", help="relay TCP (for a fast upstream such as nginx)")
    parser.add_argument("--pause", type=float, default=0.0, help="share of requests held back PAUSE_MS more (relay)")
    parser.add_argument("--pause-ms", type=float, default=2000.0)
    parser.add_argument("--pause-seed", type=int, default=0)
    parser.add_argument("--pause-count-file", type=Path, help="where the relay writes how many it held back")
    args = parser.parse_args()
    import uvloop

    bytes_per_s = args.megabytes_per_s * 1e6 or float("inf")
    latency_s = args.latency_ms / 1000
    if args.relay:
        pauses = Pauses(args.pause, args.pause_ms / 1000, args.pause_seed, args.pause_count_file)
        serving = _serve_relay(args.upstream, args.host, args.port, latency_s, bytes_per_s, pauses)
    else:
        serving = _serve(args.upstream, args.host, args.port, latency_s, bytes_per_s)
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(serving)


class NetworkProxy(ChildServer):
    """`with NetworkProxy(s3.endpoint_url) as proxy:` gives an emulated network at `proxy.endpoint_url`.

    `relay=True` for a fast upstream (nginx, http or https): a TCP relay instead of object copies; with it,
    `pause` of the requests wait `pause_ms` more (`paused()` counts them). `megabytes_per_s=0` sets no pace.
    """

    module = "prefetchd.testing.network_proxy"
    what = "the network proxy"

    def __init__(
        self,
        upstream: str,
        *,
        latency_ms: float = 30.0,
        megabytes_per_s: float = 90.0,
        relay: bool = False,
        pause: float = 0.0,
        pause_ms: float = 2000.0,
        pause_seed: int = 0,
    ) -> None:
        if pause and not relay:
            raise ValueError("pauses are the relay's: pass relay=True")
        self._scratch = tempfile.TemporaryDirectory(prefix="pfd-relay-")
        self._count_path = Path(self._scratch.name) / "paused"
        args = [
            "--upstream",
            upstream,
            "--latency-ms",
            str(latency_ms),
            "--megabytes-per-s",
            str(megabytes_per_s),
            *(["--relay"] if relay else []),
        ]
        if pause:
            pausing = ["--pause", str(pause), "--pause-ms", str(pause_ms), "--pause-seed", str(pause_seed)]
            args += [*pausing, "--pause-count-file", str(self._count_path)]
        super().__init__(args)

    def __enter__(self) -> NetworkProxy:
        super().__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            super().__exit__(*exc)
        finally:
            self._scratch.cleanup()

    def paused(self) -> int:
        """How many requests the relay has held back so far."""
        try:
            return int(self._count_path.read_text() or 0)
        except FileNotFoundError:
            return 0


if __name__ == "__main__":
    main()
