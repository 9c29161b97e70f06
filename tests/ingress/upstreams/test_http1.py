"""The lean HTTP/1.1 POST pool (`ingress/upstreams/http1_*.py`) and the shared-timer `Deadline`,
against scripted raw TCP servers: framing, connection reuse rules, failures, cancellation."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest

from ingress.upstreams.http1_head import parse_head
from ingress.upstreams.http1_pool import BadResponse, ConnectFailed, Http1Pool
from ingress.upstreams.http_base import Deadlines

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


class Server:
    """Answers each request with `script(reader, writer, request_number)`; counts connections."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.requests: list[bytes] = []
        self.closed_by_client = asyncio.Event()
        self._server: asyncio.Server | None = None

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/mcp?x=1"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                self.requests.append(head + await reader.readexactly(length))
                await self.script(reader, writer, len(self.requests))
                if writer.is_closing():
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            self.closed_by_client.set()
        finally:
            writer.close()

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()


@contextlib.asynccontextmanager
async def serving(script: Script, **pool_args: float) -> AsyncIterator[tuple[Server, Http1Pool]]:
    server = Server(script)
    url = await server.start()
    pool = Http1Pool(url, {"Authorization": "Bearer k"}, pool_args.get("connect_timeout_s", 2.0),
                     pool_args.get("keepalive_s", 4.0))
    try:
        yield server, pool
    finally:
        pool.close()
        await server.stop()


def reply(body: bytes, *headers: str, status: str = "200 OK", version: str = "HTTP/1.1") -> Script:
    async def script(_r: asyncio.StreamReader, w: asyncio.StreamWriter, _n: int) -> None:
        head = "".join(f"{h}\r\n" for h in headers)
        w.write(f"{version} {status}\r\n{head}\r\n".encode() + body)
        await w.drain()
    return script


JSON = (b'{"jsonrpc":"2.0","id":1,"result":{}}', "Content-Type: application/json")


async def test_a_json_answer_is_buffered_and_the_connection_reused() -> None:
    body, ctype = JSON
    async with serving(reply(body, ctype, f"Content-Length: {len(body)}")) as (server, pool):
        for _ in range(3):
            resp = await pool.post(b'{"x":1}', {"Content-Type": "application/json", "Mcp-Method": "tools/call"})
            assert (resp.status, resp.content_type, await resp.read()) == (200, "application/json", body)
            assert resp.content is None  # buffered: no stream object
            resp.close()
        assert server.connections == 1
        request = server.requests[0]
        assert request.startswith(b"POST /mcp?x=1 HTTP/1.1\r\nHost: 127.0.0.1:")
        assert b"\r\nAuthorization: Bearer k\r\n" in request and b"\r\nMcp-Method: tools/call\r\n" in request
        assert b"\r\nContent-Length: 7\r\n\r\n{\"x\":1}" in request


async def test_request_headers_override_configured_ones() -> None:
    body, ctype = JSON
    async with serving(reply(body, ctype, f"Content-Length: {len(body)}")) as (server, pool):
        (await pool.post(b"{}", {"authorization": "Bearer other", "User-Agent": "me"})).close()
        request = server.requests[0].decode()
        assert "Bearer k" not in request and request.count("User-Agent") == 1 and "User-Agent: me" in request


@pytest.mark.parametrize("headers", [("Connection: close",), ()], ids=["connection-close", "http/1.0"])
async def test_a_connection_the_server_closes_is_not_reused(headers: tuple[str, ...]) -> None:
    body, ctype = JSON
    version = "HTTP/1.1" if headers else "HTTP/1.0"
    async with serving(reply(body, ctype, f"Content-Length: {len(body)}", *headers, version=version)) as (s, pool):
        for _ in range(2):
            resp = await pool.post(b"{}", {})
            assert await resp.read() == body
        assert s.connections == 2


async def test_a_chunked_event_stream_is_streamed_then_the_connection_reused() -> None:
    release = asyncio.Event()

    async def script(_r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        w.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"12;ext=1\r\nevent: message\ndat\r\n")
        await w.drain()
        if n == 1:
            await release.wait()
        w.write(b"5\r\na: 1\n\r\n1\r\n\n\r\n0\r\nX-Trailer: t\r\n\r\n")
        await w.drain()

    async with serving(script) as (server, pool):
        resp = await pool.post(b"{}", {})
        assert resp.content_type == "text/event-stream" and resp.content is not None
        first = await resp.content.readany()  # delivered before the rest exists
        assert first == b"event: message\ndat"
        release.set()
        assert first + await resp.content.read() == b"event: message\ndata: 1\n\n"
        resp.close()  # complete: a no-op
        resp = await pool.post(b"{}", {})
        assert await resp.read() == b"event: message\ndata: 1\n\n"
        assert server.connections == 1


async def test_a_large_stream_read_slowly_arrives_whole() -> None:
    """Flow control: the StreamReader pauses the transport past its limit and resumes it."""
    events = [b"data: " + bytes([65 + i % 26]) * 1000 + b"\n\n" for i in range(1000)]

    async def script(_r: asyncio.StreamReader, w: asyncio.StreamWriter, _n: int) -> None:
        w.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        for event in events:
            w.write(f"{len(event):x}\r\n".encode() + event + b"\r\n")
        w.write(b"0\r\n\r\n")
        await w.drain()

    async with serving(script) as (server, pool):
        resp = await pool.post(b"{}", {})
        assert resp.content is not None
        received = bytearray()
        async for chunk in resp.content.iter_any():
            received += chunk
            if len(received) < 300_000:
                await asyncio.sleep(0.001)
        assert bytes(received) == b"".join(events)
        assert await (await pool.post(b"{}", {})).read() == b"".join(events)
        assert server.connections == 1


async def test_a_close_delimited_body_is_read_to_the_end() -> None:
    async def script(_r: asyncio.StreamReader, w: asyncio.StreamWriter, _n: int) -> None:
        w.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{\"a\":")
        await w.drain()
        w.write(b"1}")
        w.close()

    async with serving(script) as (server, pool):
        resp = await pool.post(b"{}", {})
        assert await resp.read() == b'{"a":1}'
        await pool.post(b"{}", {})
        assert server.connections == 2


async def test_interim_responses_are_skipped_and_gzip_is_decoded() -> None:
    packed = gzip.compress(b'{"ok":true}')

    async def script(_r: asyncio.StreamReader, w: asyncio.StreamWriter, _n: int) -> None:
        w.write(b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n")
        w.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
                b"Content-Length: " + str(len(packed)).encode() + b"\r\n\r\n" + packed)
        await w.drain()

    async with serving(script) as (_server, pool):
        resp = await pool.post(b"{}", {})
        assert (resp.status, await resp.read()) == (200, b'{"ok":true}')


async def test_a_body_less_answer_ends_its_stream_at_once() -> None:
    async with serving(reply(b"", "Content-Type: text/event-stream", status="204 No Content")) as (server, pool):
        for _ in range(2):
            resp = await pool.post(b"{}", {})
            assert resp.status == 204 and resp.content is not None
            assert await resp.content.read() == b""
        assert server.connections == 1


async def test_status_reason_and_headers_are_exposed() -> None:
    async with serving(reply(b"", "Mcp-Session-Id: abc", "Content-Length: 0", status="404 Not Here")) as (_s, pool):
        resp = await pool.post(b"{}", {})
        assert (resp.status, resp.reason, resp.headers.get("mcp-session-id")) == (404, "Not Here", "abc")
        assert await resp.read() == b""


@pytest.mark.parametrize("raw", [
    b"HTTP/2 200 OK\r\n\r\n",
    b"HTTP/1.1 2000 OK\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nName : v\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: \xb2\r\n\r\n",  # a digit to str.isdigit, not to int
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x1\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
])
async def test_malformed_responses_fail_and_close_the_connection(raw: bytes) -> None:
    async def script(_r: asyncio.StreamReader, w: asyncio.StreamWriter, _n: int) -> None:
        w.write(raw)
        await w.drain()

    async with serving(script) as (server, pool):
        with pytest.raises((BadResponse, aiohttp.ClientPayloadError)):
            resp = await pool.post(b"{}", {})
            assert resp.content is not None
            await resp.content.read()
        await asyncio.wait_for(server.closed_by_client.wait(), 2)


@pytest.mark.parametrize("where", ["status line", "head", "blank line", "body"])
async def test_an_answer_arriving_in_pieces_is_put_together(where: str) -> None:
    body, ctype = JSON
    head = f"HTTP/1.1 200 OK\r\n{ctype}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    cut = {"status line": 5, "head": len(head) - 10, "blank line": len(head) - 2, "body": len(head) + 3}[where]
    raw = head + body

    async def script(_r: asyncio.StreamReader, w: asyncio.StreamWriter, _n: int) -> None:
        w.write(raw[:cut])
        await w.drain()
        await asyncio.sleep(0.02)  # a separate read on the client's side
        w.write(raw[cut:])
        await w.drain()

    async with serving(script) as (server, pool):
        for _ in range(2):
            resp = await pool.post(b"{}", {})
            assert (resp.status, resp.content_type, resp.buffered_body) == (200, "application/json", body)
            assert resp.headers["content-length"] == str(len(body))
        assert server.connections == 1


async def test_a_body_cut_short_fails() -> None:
    async def script(_r: asyncio.StreamReader, w: asyncio.StreamWriter, _n: int) -> None:
        w.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
        await w.drain()
        w.close()

    async with serving(script) as (_server, pool):
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await pool.post(b"{}", {})


async def test_a_stream_cut_short_fails_its_reader() -> None:
    async def script(_r: asyncio.StreamReader, w: asyncio.StreamWriter, _n: int) -> None:
        w.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"3\r\nab")
        await w.drain()
        w.close()

    async with serving(script) as (_server, pool):
        resp = await pool.post(b"{}", {})
        assert resp.content is not None
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.content.read()


async def test_connection_refused_is_a_connect_failure() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    pool = Http1Pool(f"http://127.0.0.1:{port}/mcp", {}, 2.0, 4.0)
    with pytest.raises(ConnectFailed) as caught:
        await pool.post(b"{}", {})
    assert isinstance(caught.value.os_error, OSError)
    assert isinstance(caught.value, aiohttp.ClientConnectionError)


async def test_a_cancelled_request_closes_its_connection() -> None:
    async def script(r: asyncio.StreamReader, _w: asyncio.StreamWriter, _n: int) -> None:
        await r.read()  # never answers; returns when the client goes away

    async with serving(script) as (server, pool):
        task = asyncio.ensure_future(pool.post(b"{}", {}))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(server.closed_by_client.wait(), 2)  # the modern era's cancellation


async def test_an_abandoned_stream_closes_its_connection() -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter, _n: int) -> None:
        w.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        await w.drain()
        await r.read()

    async with serving(script) as (server, pool):
        resp = await pool.post(b"{}", {})
        resp.close()
        await asyncio.wait_for(server.closed_by_client.wait(), 2)
        await asyncio.sleep(0)
        assert not pool._idle


async def test_idle_connections_closed_by_the_server_or_expired_are_not_used() -> None:
    body, ctype = JSON

    async def script(_r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        w.write(f"HTTP/1.1 200 OK\r\n{ctype}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        await w.drain()
        if n == 1:
            await asyncio.sleep(0.05)
            w.close()  # a server-side keep-alive timeout

    async with serving(script, keepalive_s=0.3) as (server, pool):
        assert await (await pool.post(b"{}", {})).read() == body
        await asyncio.sleep(0.15)
        assert await (await pool.post(b"{}", {})).read() == body  # not sent on the closed one
        assert server.connections == 2
        await asyncio.sleep(0.5)  # past keepalive_s: the sweeper closed it
        assert not pool._idle and not pool._open
        assert await (await pool.post(b"{}", {})).read() == body
        assert server.connections == 3


async def test_bytes_beyond_the_response_end_the_connection() -> None:
    body, ctype = JSON
    trailing = f"HTTP/1.1 200 OK\r\n{ctype}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body + b"junk"

    async def script(_r: asyncio.StreamReader, w: asyncio.StreamWriter, _n: int) -> None:
        w.write(trailing)
        await w.drain()

    async with serving(script) as (server, pool):
        for _ in range(2):
            assert await (await pool.post(b"{}", {})).read() == body
        assert server.connections == 2


async def test_a_line_break_in_a_header_is_refused() -> None:
    async with serving(reply(b"", "Content-Length: 0")) as (server, pool):
        with pytest.raises(ValueError):
            await pool.post(b"{}", {"Mcp-Name": "x\r\nInjected: 1"})
        assert not server.requests
    with pytest.raises(ValueError):
        Http1Pool("http://127.0.0.1:1/mcp", {"X": "a\nb"}, 1.0, 1.0)


async def test_requests_after_close_fail_and_close_fails_requests_in_flight() -> None:
    async def script(r: asyncio.StreamReader, _w: asyncio.StreamWriter, _n: int) -> None:
        await r.read()

    async with serving(script) as (_server, pool):
        task = asyncio.ensure_future(pool.post(b"{}", {}))
        await asyncio.sleep(0.05)
        pool.close()
        with pytest.raises(aiohttp.ClientConnectionError):
            await task
        with pytest.raises(aiohttp.ClientConnectionError):
            await pool.post(b"{}", {})


# -- Deadline ----------------------------------------------------------------------------------------


async def test_a_deadline_expires_as_a_timeout() -> None:
    deadlines = Deadlines(asyncio.get_running_loop())
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError), deadlines.within(0.05):
        await asyncio.sleep(1)
    assert 0.04 <= loop.time() - started < 0.5
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_deadlines_share_one_timer_and_expire_in_order() -> None:
    deadlines = Deadlines(asyncio.get_running_loop())
    ended: list[str] = []

    async def call(name: str, seconds: float, work: float) -> None:
        try:
            with deadlines.within(seconds):
                await asyncio.sleep(work)
            ended.append(f"{name} done")
        except TimeoutError:
            ended.append(f"{name} timeout")

    await asyncio.gather(call("long", 0.3, 0.05), call("short", 0.1, 1.0), call("later", 0.2, 1.0),
                         call("quick", 5.0, 0.01))
    assert ended == ["quick done", "long done", "short timeout", "later timeout"]
    assert not deadlines._calls


async def test_a_cancellation_from_elsewhere_passes_through_a_deadline() -> None:
    deadlines = Deadlines(asyncio.get_running_loop())

    async def call() -> None:
        with deadlines.within(5):
            await asyncio.sleep(1)

    task = asyncio.ensure_future(call())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not deadlines._calls


async def test_closing_the_pool_fails_a_close_delimited_stream() -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter, _n: int) -> None:
        w.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\ndata: 1\n\n")
        await w.drain()
        await r.read()

    async with serving(script) as (_server, pool):
        resp = await pool.post(b"{}", {})
        assert resp.content is not None
        assert await resp.content.readany() == b"data: 1\n\n"
        pool.close()
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.content.read()  # not a clean end: the stream was cut, not finished



def test_a_repeated_head_is_parsed_once_but_a_decoder_is_never_shared() -> None:
    plain = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2"
    assert parse_head(plain) is parse_head(bytes(plain))
    packed = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 20"
    first, second = parse_head(packed), parse_head(packed)
    assert first is not None and second is not None and first.decoder is not second.decoder
