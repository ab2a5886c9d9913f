"""A faulty S3 in front of a good one: an aiohttp proxy that breaks object GETs as `fault_plan` decides.

Object GETs (ranged or not, plain or presigned) may be answered 503 SlowDown or 500 InternalError without
asking upstream, or have their body cut (a TCP reset, or a clean close short of the Content-Length),
stalled (part of it, then nothing on an open connection) or paused (part of it, a wait, then the rest), and
may wait before their first byte. Everything
else (HEAD, PUT, listings) passes through untouched, as do upstream's own errors. Bodies are streamed
through, not held. Any request signed with a session token the test declared expired (`expire_token`) is
answered 400 ExpiredToken, as S3 answers it.

`GET /__faults__` answers what was injected so far, as JSON (`FaultProxy.counts()` reads it), so a test
can prove its faults happened; `POST /__faults__` changes the rates (`set_rates`) or expires a token. Run it as
`python -m prefetchd.testing.fault_proxy --upstream URL --seed N --slowdown 0.05 ...`; it prints its address.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import struct
import urllib.request
import uuid
from collections import Counter, deque
from dataclasses import asdict
from typing import Any

import aiohttp
from aiohttp import web

from .child_server import ChildServer, Upstream, kept_headers, serve_aiohttp
from .fault_plan import BODY_FAULTS, Decision, Fault, FaultCounts, FaultPlan, FaultRates, is_object_get, request_key

COUNTS_PATH = "/__faults__"
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "upgrade", "te", "trailer"}
_PIECE_BYTES = 64 * 1024
_FLUSH_TIMEOUT_S = 5.0
_RECENT_FAULTS = 1000  # the injected faults /__faults__ lists, newest last: enough to see what a failing run met
_STALL_POLL_S = 0.05
_STALL_MAX_S = 120.0  # a stalled answer ends by itself after this, if the client never gives up
_INVERT = bytes(255 - b for b in range(256))  # a paused answer's garbled rest: every byte inverted
_TOKEN = "x-amz-security-token"  # a header, or a presigned URL's query parameter (SigV2 spells it so)

# S3's own words for these errors (docs.aws.amazon.com/AmazonS3/latest/API/ErrorResponses.html)
_ERRORS = {
    Fault.SLOWDOWN: (503, "SlowDown", "Please reduce your request rate."),
    Fault.INTERNAL_ERROR: (500, "InternalError", "We encountered an internal error. Please try again."),
}
_EXPIRED_TOKEN = (400, "ExpiredToken", "The provided token has expired.")


def s3_error(fault: Fault, resource: str) -> web.Response:
    """The answer S3 gives for `fault` (SlowDown or InternalError): its status and XML error document."""
    return _error_document(*_ERRORS[fault], resource)


def _error_document(status: int, code: str, message: str, resource: str) -> web.Response:
    request_id = uuid.uuid4().hex[:16].upper()
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message><Resource>{resource}</Resource>"
        f"<RequestId>{request_id}</RequestId></Error>"
    )
    return web.Response(
        status=status, body=body.encode(), content_type="application/xml", headers={"x-amz-request-id": request_id}
    )


class FaultInjector:
    """The aiohttp handler: object GETs meet the plan's faults; everything else goes to `upstream` and back."""

    def __init__(self, upstream: str, plan: FaultPlan) -> None:
        # no timeout: a body goes through as upstream sends it, however long it takes
        self.upstream = Upstream(upstream, timeout=aiohttp.ClientTimeout(total=None))
        self.plan = plan
        self.counts: Counter[str] = Counter()
        self.recent: deque[str] = deque(maxlen=_RECENT_FAULTS)
        self.expired_tokens: set[str] = set()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.path == COUNTS_PATH:
            if request.method == "POST":
                await self._change(await request.json())
            counts = FaultCounts.from_mapping(self.counts)
            return web.json_response({"counts": asdict(counts), "recent": list(self.recent)})
        if _session_token(request) in self.expired_tokens:
            self.counts["expired_token"] += 1
            self.recent.append(f"expired_token: {request.method} {request.path}")
            return _error_document(*_EXPIRED_TOKEN, request.path)
        if not is_object_get(request.method, request.path, request.query):
            return await self._forward(request)
        key = request_key(request.method, request.path, request.headers.get("Range"))
        decision, occurrence = self.plan.next_decision(key)
        self.counts["object_gets"] += 1
        if decision.delay_s:
            self.counts["delayed"] += 1
            await asyncio.sleep(decision.delay_s)
        if decision.fault in _ERRORS:
            assert decision.fault is not None
            self._record(decision.fault, f"{key} #{occurrence}")
            return s3_error(decision.fault, request.path)
        return await self._forward(request, decision, f"{key} #{occurrence}")

    async def _change(self, change: dict[str, Any]) -> None:
        """New rates (the plan keeps counting arrivals, so a replay is the same), or a token to refuse."""
        if "rates" in change:
            self.plan.rates = FaultRates(**change["rates"])
        self.expired_tokens.update(change.get("expire_tokens", []))

    def _record(self, fault: Fault, what: str) -> None:
        self.counts[fault.value] += 1
        self.recent.append(f"{fault.value}: {what}")

    async def _forward(
        self, request: web.Request, decision: Decision | None = None, what: str = ""
    ) -> web.StreamResponse:
        """Upstream's answer, its body streamed through; cut as `decision` says if it carries a body fault."""
        async with self.upstream.forward(request, drop=_HOP_BY_HOP) as answer:
            response = web.StreamResponse(
                status=answer.status, reason=answer.reason, headers=kept_headers(answer.headers, _HOP_BY_HOP)
            )
            if answer.content_length is not None:
                response.content_length = answer.content_length  # HEAD: the object's size, with no body
            cut = _body_cut(decision, answer)
            try:
                await response.prepare(request)
                if cut is not None and cut[0] is Fault.PAUSE:
                    await self._pause(answer, response, cut[1], what)
                elif cut is not None:
                    fault, cut_bytes = cut
                    await _relay(answer, response, limit=cut_bytes)
                    self._record(fault, f"{what} after {cut_bytes} of {answer.content_length} bytes")
                    await _break(request, fault)
                else:
                    if request.method != "HEAD":
                        await _relay(answer, response, limit=None)
                    await response.write_eof()
            except ConnectionError:  # the client left first (a read-ahead cancelled): as on a real network
                self.counts["hung_up"] += 1
        return response

    async def _pause(
        self, answer: aiohttp.ClientResponse, response: web.StreamResponse, cut_bytes: int, what: str
    ) -> None:
        """The first `cut_bytes` of the body, a wait of `pause_ms`, then the rest (inverted if `pause_garbles`).
        Counted as `pause` when the wait begins, and as `pause_ended` when the answer ends, whether the client
        took it all or had left."""
        rates = self.plan.rates
        sent = 0
        paused = False
        try:
            async for piece in answer.content.iter_chunked(_PIECE_BYTES):
                if not paused and sent + len(piece) >= cut_bytes:
                    before = cut_bytes - sent
                    await response.write(piece[:before])
                    garbled = ", the rest garbled" if rates.pause_garbles else ""
                    self._record(Fault.PAUSE, f"{what} for {rates.pause_ms:g} ms after {cut_bytes} bytes{garbled}")
                    await asyncio.sleep(rates.pause_ms / 1000)
                    paused, piece = True, piece[before:]
                if paused and rates.pause_garbles:
                    piece = piece.translate(_INVERT)
                await response.write(piece)
                sent += len(piece)
            await response.write_eof()
        finally:
            self.counts["pause_ended"] += int(paused)

    async def close(self) -> None:
        await self.upstream.close()


def _body_cut(decision: Decision | None, answer: aiohttp.ClientResponse) -> tuple[Fault, int] | None:
    """The body fault to inject and how many bytes go before it; None when the decision has none, or the
    answer no body to cut (an error document from upstream goes through whole)."""
    if decision is None or decision.fault not in BODY_FAULTS:
        return None
    announced = answer.content_length
    if answer.status not in (200, 206) or announced is None or announced < 2:
        return None
    return decision.fault, decision.cut_bytes(announced)


def _session_token(request: web.Request) -> str | None:
    """The session token a request is signed with: its header, or its presigned URL's query parameter."""
    token = request.headers.get(_TOKEN)  # headers are matched whatever their case; query names are not
    return token or next((value for name, value in request.query.items() if name.lower() == _TOKEN), None)


async def _relay(answer: aiohttp.ClientResponse, response: web.StreamResponse, *, limit: int | None) -> None:
    """Upstream's body into `response`, up to `limit` bytes (all of it when None)."""
    sent = 0
    async for piece in answer.content.iter_chunked(_PIECE_BYTES):
        if limit is not None:
            piece = piece[: limit - sent]
        await response.write(piece)
        sent += len(piece)
        if limit is not None and sent >= limit:
            return


async def _break(request: web.Request, fault: Fault) -> None:
    """End the connection mid-body: with a TCP RST (`RESET`), a clean close (`TRUNCATE`), or once the client
    gives up on a body that stopped coming (`STALL`).

    The body bytes already written go out first in both cases: `abort()` would drop what is still in
    the transport's buffer, and an RST makes the kernel drop what it has not sent yet.
    """
    transport = request.transport
    if transport is None:
        return
    if fault is Fault.TRUNCATE:
        transport.close()  # FIN once the buffer is flushed
        return
    if fault is Fault.STALL:
        await _stall(request)
        return
    # pause the protocol while any byte waits in the buffer, so that drain() returns once it is empty
    transport.set_write_buffer_limits(high=0)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(request.writer.drain(), _FLUSH_TIMEOUT_S)
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close() sends RST
    transport.abort()


async def _stall(request: web.Request) -> None:
    """Send nothing more, with the connection open, until the client closes it (or `_STALL_MAX_S` passes)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _STALL_MAX_S
    while (transport := request.transport) is not None and not transport.is_closing():
        if loop.time() > deadline:
            transport.abort()
            return
        await asyncio.sleep(_STALL_POLL_S)


async def _serve(upstream: str, host: str, port: int, plan: FaultPlan) -> None:
    injector = FaultInjector(upstream, plan)
    await serve_aiohttp(injector.handle, host, port, injector.close)


_OPTION_HELP = {  # FaultRates' fields, as command-line options
    "slowdown": "share of object GETs answered 503 SlowDown",
    "internal_error": "share of object GETs answered 500 InternalError",
    "reset": "share of object GETs whose body a TCP reset cuts",
    "truncate": "share of object GETs whose body ends short of its Content-Length",
    "stall": "share of object GETs whose body stops partway, the connection left open",
    "latency": "share of object GETs whose first byte waits LATENCY_MS + U(0, JITTER_MS)",
    "latency_ms": "the wait, in ms",
    "jitter_ms": "the most the wait varies by, in ms",
    "pause": "share of object GETs whose body stops partway for PAUSE_MS, then goes on",
    "pause_ms": "the pause, in ms",
}


def _rates_arguments(rates: FaultRates) -> list[str]:
    return [part for name, value in asdict(rates).items() for part in (f"--{name.replace('_', '-')}", str(value))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--upstream", required=True, help="the S3 server to put faults in front of")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0, help="the same seed and rates replay the same faults")
    for name, meaning in _OPTION_HELP.items():
        parser.add_argument(
            f"--{name.replace('_', '-')}", type=float, default=getattr(FaultRates(), name), help=meaning
        )
    parser.add_argument(
        "--pause-garbles", type=lambda text: text == "True", default=False, help="True: invert the bytes after a pause"
    )
    args = parser.parse_args()
    rates = FaultRates(**{name: getattr(args, name) for name in asdict(FaultRates())})
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.upstream, args.host, args.port, FaultPlan(rates, args.seed)))


class FaultProxy(ChildServer):
    """`with FaultProxy(s3.endpoint_url, FaultRates(slowdown=0.05), seed=1) as proxy:` gives a faulty S3
    at `proxy.endpoint_url`; `proxy.counts()` says what it injected so far."""

    module = "prefetchd.testing.fault_proxy"
    what = "the fault proxy"

    def __init__(self, upstream: str, rates: FaultRates, *, seed: int = 0, start_timeout_s: float = 30.0) -> None:
        super().__init__(
            ["--upstream", upstream, "--seed", str(seed), *_rates_arguments(rates)], start_timeout_s=start_timeout_s
        )
        self.rates = rates
        self.seed = seed

    def __enter__(self) -> FaultProxy:
        super().__enter__()
        return self

    def _report(self) -> dict[str, Any]:
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through an HTTP_PROXY
        with direct.open(self.endpoint_url + COUNTS_PATH, timeout=10) as answer:
            report: dict[str, Any] = json.load(answer)
        return report

    def _post(self, change: dict[str, Any]) -> None:
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        request = urllib.request.Request(
            self.endpoint_url + COUNTS_PATH,
            data=json.dumps(change).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with direct.open(request, timeout=10) as answer:
            answer.read()

    def set_rates(self, rates: FaultRates) -> None:
        """Inject faults at these rates from now on (same seed; arrivals are still counted)."""
        self._post({"rates": asdict(rates)})
        self.rates = rates

    def expire_token(self, token: str) -> None:
        """Answer every request signed with session token `token` 400 ExpiredToken from now on."""
        self._post({"expire_tokens": [token]})

    def counts(self) -> FaultCounts:
        """What the proxy has injected since it started."""
        return FaultCounts.from_mapping(self._report()["counts"])

    def recent(self) -> list[str]:
        """The last faults injected, newest last, each with its request and arrival: what to replay."""
        return list(self._report()["recent"])

    def __repr__(self) -> str:
        return f"<FaultProxy {self.endpoint_url or 'not started'} seed={self.seed} {self.rates}>"


if __name__ == "__main__":
    main()
