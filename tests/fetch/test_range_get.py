"""The lean ranged-GET path over real sockets, against a server scripted to misbehave in each way S3 can."""

from __future__ import annotations

import asyncio
import gc
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager

import pytest
import uvloop

from prefetchd.fetch.http11 import ResponseHead, expected_content_range
from prefetchd.fetch.range_get import BodyBroken, RangeGetter, Refused

OBJECT = bytes(range(256)) * 1000
ETAG = '"v1"'
Reply = Callable[[asyncio.StreamWriter, int, int], Awaitable[bool]]  # returns whether to keep the connection


def _head(first: int, last: int, *extra: str, status: str = "206 Partial Content") -> bytes:
    lines = [
        f"HTTP/1.1 {status}",
        f"Content-Length: {last - first + 1}",
        f"Content-Range: {expected_content_range(first, last, len(OBJECT))}",
        f"ETag: {ETAG}",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def good(writer: asyncio.StreamWriter, first: int, last: int) -> bool:
    writer.write(_head(first, last) + OBJECT[first : last + 1])
    return True


class ScriptedServer:
    """An HTTP/1.1 server on loopback that answers each ranged GET with the next reply of a script."""

    def __init__(self, *replies: Reply) -> None:
        self.replies = list(replies)
        self.connections = 0
        self.requests: list[str] = []
        self.writers: list[asyncio.StreamWriter] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            while True:
                request = (await reader.readuntil(b"\r\n\r\n")).decode()
                self.requests.append(request)
                first, last = map(int, re.search(r"Range: bytes=(\d+)-(\d+)", request).groups())  # type: ignore[union-attr]
                reply = self.replies.pop(0) if self.replies else good
                if not await reply(writer, first, last):
                    break
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@asynccontextmanager
async def serving(server: ScriptedServer) -> AsyncIterator[str]:
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    async with listener:
        yield f"http://127.0.0.1:{port}/bucket-name/key?X-Amz-Signature=s"


def _accept(first: int, last: int) -> Callable[[ResponseHead], bool]:
    wanted = expected_content_range(first, last, len(OBJECT))
    return lambda head: head.status == 206 and head.content_range == wanted and head.etag == ETAG


async def _get(getter: RangeGetter, url: str, first: int, size: int, out: bytearray | None = None) -> bytearray:
    out = bytearray(size) if out is None else out
    await getter.get_into(url, first, memoryview(out), if_match=ETAG, accept=_accept(first, first + size - 1))
    return out


_LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,  # the daemon's loop; its BufferedProtocol support is its own code
}
_loop_factory: list[Callable[[], asyncio.AbstractEventLoop]] = []


@pytest.fixture(autouse=True, params=sorted(_LOOPS))
def event_loop_kind(request: pytest.FixtureRequest) -> Iterator[None]:
    _loop_factory.append(_LOOPS[request.param])
    yield
    _loop_factory.pop()


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(scenario(), 30)

    with asyncio.Runner(loop_factory=_loop_factory[-1]) as runner:
        runner.run(bounded())


def test_ranges_arrive_byte_exact_over_one_kept_alive_connection() -> None:
    async def scenario() -> None:
        server = ScriptedServer()
        async with serving(server) as url:
            getter = RangeGetter()
            for first, size in [(0, 1), (0, len(OBJECT)), (12345, 70000), (len(OBJECT) - 3, 3)]:
                assert await _get(getter, url, first, size) == OBJECT[first : first + size]
            assert server.connections == 1
            assert getter.statistics().connections_opened == 1
            assert all('If-Match: "v1"' in r for r in server.requests)
            getter.close()

    run(scenario)


def test_a_head_and_body_dribbled_a_byte_at_a_time_still_arrive() -> None:
    async def dribble(writer: asyncio.StreamWriter, first: int, last: int) -> bool:
        for byte in _head(first, last) + OBJECT[first : last + 1]:
            writer.write(bytes([byte]))
            await writer.drain()
        return True

    async def scenario() -> None:
        async with serving(ScriptedServer(dribble)) as url:
            getter = RangeGetter()
            assert await _get(getter, url, 100, 300) == OBJECT[100:400]
            getter.close()

    run(scenario)


@pytest.mark.parametrize(
    "answer",
    [
        lambda first, last: (
            _head(0, len(OBJECT) - 1, status="200 OK").replace(b"Content-Range: bytes 0-255999/256000\r\n", b"")
            + OBJECT
        ),
        lambda first, last: _head(first + 1, last + 1) + OBJECT[first + 1 : last + 2],
        lambda first, last: _head(first, last).replace(b'"v1"', b'"v2"') + OBJECT[first : last + 1],
        lambda first, last: b"HTTP/1.1 412 Precondition Failed\r\nContent-Length: 5\r\n\r\nerror",
        lambda first, last: b"HTTP/1.1 503 Slow Down\r\nContent-Length: 0\r\n\r\n",
        lambda first, last: b"HTTP/1.1 307 Redirect\r\nLocation: http://elsewhere/\r\nContent-Length: 0\r\n\r\n",
        lambda first, last: b"HTTP/1.1 206 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        lambda first, last: b"HTTP/1.1 206 OK\r\n" + b"X-Long: " + b"a" * 70000,
        lambda first, last: b"SSH-2.0-OpenSSH\r\n\r\n",
    ],
    ids=["whole-object", "other-range", "other-etag", "412", "503", "redirect", "chunked", "huge-head", "not-http"],
)
def test_any_answer_but_the_range_asked_for_is_refused_and_never_taken_as_data(
    answer: Callable[[int, int], bytes],
) -> None:
    async def reply(writer: asyncio.StreamWriter, first: int, last: int) -> bool:
        writer.write(answer(first, last))
        return True

    async def scenario() -> None:
        server = ScriptedServer(reply)
        async with serving(server) as url:
            getter = RangeGetter()
            out = bytearray(b"\xee" * 1000)
            with pytest.raises(Refused):
                await _get(getter, url, 5000, 1000, out)
            assert out == b"\xee" * 1000
            assert await _get(getter, url, 5000, 1000) == OBJECT[5000:6000]  # a new connection works
            assert getter.statistics().refused == 1
            assert server.connections == 2
            getter.close()

    run(scenario)


def test_a_body_cut_short_reports_how_much_arrived() -> None:
    async def cut(writer: asyncio.StreamWriter, first: int, last: int) -> bool:
        writer.write(_head(first, last) + OBJECT[first : first + 600])
        return False  # close the connection mid-body

    async def scenario() -> None:
        async with serving(ScriptedServer(cut)) as url:
            getter = RangeGetter()
            out = bytearray(1000)
            with pytest.raises(BodyBroken) as broken:
                await _get(getter, url, 2000, 1000, out)
            assert broken.value.received == 600
            assert out[:600] == OBJECT[2000:2600]
            assert getter.statistics().broken == 1
            getter.close()

    run(scenario)


def test_bytes_past_the_body_are_refused() -> None:
    async def extra(writer: asyncio.StreamWriter, first: int, last: int) -> bool:
        writer.write(_head(first, last) + OBJECT[first : last + 1] + b"surprise")
        return True

    async def scenario() -> None:
        async with serving(ScriptedServer(extra)) as url:
            getter = RangeGetter()
            with pytest.raises(Refused, match="past the body"):
                await _get(getter, url, 0, 100)
            getter.close()

    run(scenario)


def test_a_stalled_body_times_out_with_what_arrived() -> None:
    async def stall(writer: asyncio.StreamWriter, first: int, last: int) -> bool:
        writer.write(_head(first, last) + OBJECT[first : first + 10])
        await asyncio.sleep(5)
        return False

    async def scenario() -> None:
        async with serving(ScriptedServer(stall)) as url:
            getter = RangeGetter(idle_timeout_s=0.3)
            with pytest.raises(BodyBroken, match=r"no byte for 0\.3 s") as broken:
                await _get(getter, url, 0, 100)
            assert broken.value.received == 10
            getter.close()

    run(scenario)


def test_a_slow_body_that_keeps_moving_is_not_timed_out() -> None:
    async def slow(writer: asyncio.StreamWriter, first: int, last: int) -> bool:
        writer.write(_head(first, last))
        for start in range(first, last + 1, 20):
            await asyncio.sleep(0.05)
            writer.write(OBJECT[start : min(last + 1, start + 20)])
        return True

    async def scenario() -> None:
        async with serving(ScriptedServer(slow)) as url:
            getter = RangeGetter(idle_timeout_s=0.3)
            assert await _get(getter, url, 0, 200) == OBJECT[:200]  # 0.5 s in all, never 0.3 s idle
            getter.close()

    run(scenario)


def test_a_connection_the_server_closed_while_idle_is_replaced_silently() -> None:
    async def scenario() -> None:
        server = ScriptedServer()
        async with serving(server) as url:
            getter = RangeGetter()
            assert await _get(getter, url, 0, 10) == OBJECT[:10]
            for writer in server.writers:  # the server's keep-alive timeout fires
                writer.close()
            await asyncio.sleep(0.1)
            assert await _get(getter, url, 10, 10) == OBJECT[10:20]
            assert server.connections == 2
            getter.close()

    run(scenario)


def test_a_connection_the_server_will_close_is_not_reused() -> None:
    async def closing(writer: asyncio.StreamWriter, first: int, last: int) -> bool:
        writer.write(_head(first, last, "Connection: close") + OBJECT[first : last + 1])
        return False

    async def scenario() -> None:
        server = ScriptedServer(closing, closing)
        async with serving(server) as url:
            getter = RangeGetter()
            assert await _get(getter, url, 0, 10) == OBJECT[:10]
            assert await _get(getter, url, 10, 10) == OBJECT[10:20]
            stats = getter.statistics()
            assert (stats.connections_opened, stats.stale_reconnects, server.connections) == (2, 0, 2)
            getter.close()

    run(scenario)


def test_a_cancelled_read_writes_nothing_more_into_the_buffer() -> None:
    async def slow(writer: asyncio.StreamWriter, first: int, last: int) -> bool:
        writer.write(_head(first, last) + OBJECT[first : first + 100])
        await writer.drain()
        await asyncio.sleep(0.3)
        writer.write(OBJECT[first + 100 : last + 1])
        await asyncio.sleep(0.3)
        return False

    async def scenario() -> None:
        async with serving(ScriptedServer(slow)) as url:
            getter = RangeGetter()
            out = bytearray(1000)
            task = asyncio.create_task(_get(getter, url, 0, 1000, out))
            await asyncio.sleep(0.15)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            out[:] = b"\x00" * 1000  # the buffer is ours again
            await asyncio.sleep(0.5)  # the server sent the rest meanwhile
            assert out == b"\x00" * 1000
            getter.close()

    run(scenario)


def test_many_ranges_at_once_share_a_bounded_set_of_connections() -> None:
    async def scenario() -> None:
        server = ScriptedServer()
        async with serving(server) as url:
            getter = RangeGetter()
            pieces = [(first, 1000) for first in range(0, 200_000, 1000)]
            gate = asyncio.Semaphore(8)

            async def one(first: int, size: int) -> bytearray:
                async with gate:
                    return await _get(getter, url, first, size)

            results = await asyncio.gather(*(one(first, size) for first, size in pieces))
            assert b"".join(results) == OBJECT[:200_000]
            assert server.connections <= 8
            getter.close()

    run(scenario)


def test_requests_beyond_max_connections_wait_for_one() -> None:
    async def scenario() -> None:
        server = ScriptedServer()
        async with serving(server) as url:
            getter = RangeGetter(max_connections=3)
            pieces = [(first, 1000) for first in range(0, 100_000, 1000)]
            results = await asyncio.gather(*(_get(getter, url, first, size) for first, size in pieces))
            assert b"".join(results) == OBJECT[:100_000]
            assert server.connections <= 3
            getter.close()

    run(scenario)


def test_no_server_is_an_os_error() -> None:
    async def scenario() -> None:
        listener = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        listener.close()
        await listener.wait_closed()
        getter = RangeGetter()
        with pytest.raises(ConnectionRefusedError):
            await _get(getter, f"http://127.0.0.1:{port}/b/k", 0, 10)

    run(scenario)


def test_an_abandoned_read_leaves_no_unretrieved_error_behind() -> None:
    """A stream that closes cancels its read-ahead: nothing may log "exception was never retrieved"."""

    async def stall(writer: asyncio.StreamWriter, first: int, last: int) -> bool:
        writer.write(_head(first, last) + OBJECT[first : first + 100])
        await asyncio.sleep(1)
        return False

    async def scenario() -> None:
        unhandled: list[dict[str, object]] = []
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: unhandled.append(context))
        async with serving(ScriptedServer(stall)) as url:
            getter = RangeGetter()
            task = asyncio.create_task(_get(getter, url, 0, 1000))
            await asyncio.sleep(0.15)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.sleep(0.05)
            gc.collect()
            await asyncio.sleep(0)
        assert unhandled == []

    run(scenario)
