"""A lean keep-alive HTTP/1.1 client for the POSTs a Streamable HTTP connector sends.

Why not `aiohttp.ClientSession.post`: its generality (a `ClientRequest`, header merging into
multidicts, cookie filtering, connector bookkeeping, trace hooks, timers, a `ClientResponse` and a
`StreamReader` per call) cost more gateway CPU per proxied call than the rest of the upstream hop.
These POSTs are all alike: one origin, a body already in memory, a handful of headers, and most
answers are one JSON body with a Content-Length. So:

- the request line, `Host`, `User-Agent` and the configured headers are encoded once;
- a response framed by Content-Length that is not an event stream is buffered in the protocol and
  handed over whole (one wake-up of the caller, no stream object);
- anything else (an SSE answer, a chunked or close-delimited body) is fed, as it arrives, into an
  `aiohttp.StreamReader`, so the connector reads it exactly as it reads an aiohttp response;
- 1xx interim responses are skipped; `Content-Encoding` gzip/deflate is decoded (none is asked for).

A connection goes back to the pool only after a complete response, on HTTP/1.1, without
`Connection: close` and with nothing extra on the wire; an abandoned response (timeout,
cancellation, `close()`) closes its connection. Idle connections are dropped after `keepalive_s`,
before common server keep-alive timeouts, like the aiohttp connector this sits beside.

Failures are raised as aiohttp exceptions, so callers handle both clients alike: `ConnectFailed`
(a `ClientConnectorError` look-alike: nothing was sent), `aiohttp.ConnectionTimeoutError`,
`aiohttp.ServerDisconnectedError`, `aiohttp.ClientOSError`, `BadResponse` (unparseable framing)
and, mid-stream, `aiohttp.ClientPayloadError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import socket
import ssl
import zlib
from collections.abc import Mapping

import aiohttp
from aiohttp.http import SERVER_SOFTWARE
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

__all__ = ["BadResponse", "ConnectFailed", "Http1Pool", "Http1Response"]

_MAX_HEAD = 64 * 1024  # bytes of status line + headers
_STREAM_LIMIT = 2**16  # StreamReader flow-control limit (aiohttp's default read_bufsize)
_INLINE_BODY = 16 * 1024  # request bodies up to this size are sent in one buffer with the head
_EVENT_STREAM = "text/event-stream"
_HEAD_CACHE_MAX = 256  # encoded request heads kept (per-call Mcp-Param-* values make more sets)

# Response framing (RFC 9112 §6.3)
_NONE, _LENGTH, _CHUNKED, _EOF = 0, 1, 2, 3
# Chunked decoder states
_SIZE, _DATA, _DATA_END, _TRAILER = 0, 1, 2, 3
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")
_FRAMING_HEADERS = frozenset({"transfer-encoding", "content-length", "connection", "content-encoding", "content-type"})


class ConnectFailed(aiohttp.ClientConnectionError):
    """The connection could not be opened: nothing was sent."""

    def __init__(self, host: str, port: int, os_error: OSError) -> None:
        super().__init__(f"Cannot connect to host {host}:{port} [{os_error.strerror or os_error}]")
        self.os_error = os_error


class BadResponse(aiohttp.ClientError):
    """The upstream's bytes are not a valid HTTP/1.1 response."""


class Http1Response:
    """What the connector needs of an answer: the aiohttp `ClientResponse` attributes it reads."""

    __slots__ = ("_body", "_conn", "_headers", "_pairs", "content", "content_type", "reason", "status")

    def __init__(self, status: int, reason: str, pairs: list[tuple[str, str]], content_type: str,
                 conn: _Connection) -> None:
        self.status = status
        self.reason = reason
        self._pairs = pairs
        self._headers: CIMultiDictProxy[str] | None = None
        self.content_type = content_type
        self._conn: _Connection | None = conn
        self._body: bytes | None = None
        self.content: aiohttp.StreamReader | None = None  # set when the body is streamed

    @property
    def headers(self) -> CIMultiDictProxy[str]:
        # Built on first use: most answers are read for their body only.
        if self._headers is None:
            self._headers = CIMultiDictProxy(CIMultiDict(self._pairs))
        return self._headers

    @property
    def buffered_body(self) -> bytes | None:
        """The body when it came whole with the head (most answers): no read to await."""
        return self._body

    async def read(self) -> bytes:
        if self._body is None:
            assert self.content is not None
            self._body = await self.content.read()
        return self._body

    def close(self) -> None:
        """Abandon the response; the connection is closed unless the response was complete."""
        conn, self._conn = self._conn, None
        if conn is not None and conn.response is self:
            conn.abort()


class _Connection(asyncio.Protocol):
    def __init__(self, pool: Http1Pool) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        # Read by aiohttp.StreamReader for flow control.
        self.connected = False
        self._reading_paused = False
        self.buf = bytearray()
        self.waiter: asyncio.Future[Http1Response] | None = None
        self.response: Http1Response | None = None  # the response being received
        self.framing = _NONE
        self.remaining = 0  # body bytes still expected (_LENGTH), or in the current chunk
        self.chunk_state = _SIZE
        self.keep_alive = False
        self.decoder: zlib._Decompress | None = None
        self.buffered = False
        self.idle_since = 0.0

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.connected = True
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # As aiohttp does: a request is one write, and its answer must not wait for Nagle.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.connected = False
        self.pool.forget(self)
        if self.framing == _EOF and self.response is not None and exc is None:
            self._body_done()  # the close delimits the body
            return
        if self.waiter is not None or self.response is not None:
            error: Exception = (aiohttp.ClientOSError(exc.errno, exc.strerror) if isinstance(exc, OSError)
                                else aiohttp.ServerDisconnectedError())
            self._fail(error)

    def pause_reading(self) -> None:
        if self.transport is not None and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self, resume_parser: bool = True) -> None:  # StreamReader.feed_eof passes the flag
        if self.transport is not None and self._reading_paused:
            self._reading_paused = False
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.waiter is None and self.response is None:
            self.abort()  # bytes nobody asked for (e.g. a 408 before the server closes): drop it
            return
        try:
            if self.response is None or (self.buffered and self.waiter is not None):
                self.buf += data
                self._parse_head_and_buffered()
            else:
                self._feed_stream(data)
        except BadResponse as exc:
            self._fail(exc)
            self.abort()

    # -- requests ----------------------------------------------------------------------------

    def send(self, data: bytes | list[bytes]) -> asyncio.Future[Http1Response]:
        waiter = self.waiter = self.loop.create_future()
        assert self.transport is not None
        if isinstance(data, list):
            self.transport.writelines(data)
        else:
            self.transport.write(data)
        return waiter

    def abort(self) -> None:
        """Close the connection now; a response in progress is abandoned."""
        self.keep_alive = False
        self.response = None
        self.waiter = None
        if self.transport is not None:
            self.transport.abort()  # no graceful close: unread answer bytes are of no use
        self.connected = False
        self.pool.forget(self)

    # -- parsing -----------------------------------------------------------------------------

    def _parse_head_and_buffered(self) -> None:
        buf = self.buf
        while self.response is None:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > _MAX_HEAD:
                    raise BadResponse(f"response head over {_MAX_HEAD} bytes")
                return
            head = bytes(buf[:end])
            del buf[: end + 4]
            self._start_response(head)
        if self.buffered:
            if len(buf) < self.remaining:
                return
            body = bytes(buf[: self.remaining])
            extra = len(buf) - self.remaining
            buf.clear()
            if extra:
                self.keep_alive = False  # more than the response: the connection is out of step
            response = self.response
            if self.decoder is not None:
                body = self._decode(body) + self.decoder.flush()
            response._body = body
            waiter, self.waiter = self.waiter, None
            self._finish()
            if waiter is not None and not waiter.done():
                waiter.set_result(response)
            return
        # A streamed body: whatever followed the head is its first bytes.
        waiter, self.waiter = self.waiter, None
        response = self.response
        if waiter is not None and not waiter.done():
            waiter.set_result(response)
        if self.framing == _NONE:
            if buf:
                self.keep_alive = False  # bytes after a body-less response
                buf.clear()
            self._body_done()
        elif buf:
            rest = bytes(buf)
            buf.clear()
            self._feed_stream(rest)

    def _start_response(self, head: bytes) -> None:
        try:
            text = head.decode("latin-1")
        except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes any byte
            raise BadResponse("undecodable response head") from None
        lines = text.split("\r\n")
        version, _, rest = lines[0].partition(" ")
        code, _, reason = rest.partition(" ")
        if not version.startswith("HTTP/1.") or len(code) != 3 or not code.isdigit():
            raise BadResponse(f"invalid status line {lines[0][:100]!r}")
        status = int(code)
        if 100 <= status < 200 and status != 101:
            return  # interim response (100 Continue, 103 Early Hints): the real one follows
        pairs: list[tuple[str, str]] = []
        # The first value of each header framing needs (what CIMultiDict.get would return), picked
        # out while splitting: the multidict itself is built only if a caller asks for headers.
        framing_headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name[-1] in " \t" or name[0] in " \t":
                raise BadResponse(f"invalid header line {line[:100]!r}")
            value = value.strip(" \t")
            pairs.append((name, value))
            low = name.lower()
            if low in _FRAMING_HEADERS and low not in framing_headers:
                framing_headers[low] = value
        framing = _EOF
        length = 0
        te = framing_headers.get("transfer-encoding")
        if status in (101, 204, 304):
            framing = _NONE if status != 101 else _EOF
        elif te is not None:
            codings = [c.strip().lower() for c in te.split(",")]
            if codings[-1] == "chunked":
                if len(codings) > 1:
                    raise BadResponse(f"unsupported Transfer-Encoding {te!r}")
                framing = _CHUNKED
        else:
            cl = framing_headers.get("content-length")
            if cl is not None:
                values = {v.strip() for v in cl.split(",")} if "," in cl else {cl}
                if len(values) != 1 or not (value := values.pop()).isdigit():
                    raise BadResponse(f"invalid Content-Length {cl!r}")
                length = int(value)
                framing = _LENGTH if length else _NONE
        connection = framing_headers.get("connection", "")
        self.keep_alive = (version == "HTTP/1.1" and framing != _EOF
                           and "close" not in connection.lower())
        encoding = framing_headers.get("content-encoding", "").strip().lower()
        if encoding in ("", "identity"):
            self.decoder = None
        elif encoding in ("gzip", "x-gzip", "deflate"):
            self.decoder = zlib.decompressobj(wbits=47)  # gzip or zlib, by the header
        else:
            raise BadResponse(f"unsupported Content-Encoding {encoding!r}")
        content_type = framing_headers.get("content-type", "").partition(";")[0].strip().lower()
        self.framing = framing
        self.remaining = length
        self.chunk_state = _SIZE
        response = Http1Response(status, reason, pairs, content_type, self)
        self.response = response
        self.buffered = framing in (_NONE, _LENGTH) and content_type != _EVENT_STREAM
        if not self.buffered:
            response.content = aiohttp.StreamReader(self, _STREAM_LIMIT, loop=self.loop)  # type: ignore[arg-type]

    def _decode(self, data: bytes) -> bytes:
        assert self.decoder is not None
        try:
            return self.decoder.decompress(data)
        except zlib.error as exc:
            raise BadResponse(f"cannot decode the body: {exc}") from None

    def _feed_stream(self, data: bytes) -> None:
        framing = self.framing
        if framing == _LENGTH:
            if len(data) > self.remaining:
                self.keep_alive = False
                data = data[: self.remaining]
            self.remaining -= len(data)
            self._deliver(data)
            if not self.remaining:
                self._body_done()
        elif framing == _CHUNKED:
            self._feed_chunked(data)
        elif framing == _EOF:
            self._deliver(data)

    def _deliver(self, data: bytes) -> None:
        response = self.response
        if not data or response is None or response.content is None:
            return
        if self.decoder is not None:
            data = self._decode(data)
            if not data:
                return
        response.content.feed_data(data)

    def _feed_chunked(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while buf:
            state = self.chunk_state
            if state == _DATA:
                take = min(self.remaining, len(buf))
                self._deliver(bytes(buf[:take]))
                del buf[:take]
                self.remaining -= take
                if not self.remaining:
                    self.chunk_state = _DATA_END
                continue
            end = buf.find(b"\r\n")
            if end < 0:
                if len(buf) > _MAX_HEAD:
                    raise BadResponse("chunk header or trailer line too long")
                return
            line = bytes(buf[:end])
            del buf[: end + 2]
            if state == _SIZE:
                size = line.partition(b";")[0].strip(b" \t")  # chunk extensions are ignored
                if _HEX.fullmatch(size) is None:
                    raise BadResponse(f"invalid chunk size {size[:20]!r}")
                self.remaining = int(size, 16)
                self.chunk_state = _DATA if self.remaining else _TRAILER
            elif state == _DATA_END:
                if line:
                    raise BadResponse("chunk data not followed by CRLF")
                self.chunk_state = _SIZE
            elif not line:  # _TRAILER: the empty line ends the message
                if buf:
                    self.keep_alive = False
                    buf.clear()
                self._body_done()
                return

    def _body_done(self) -> None:
        response = self.response
        if response is None:
            return
        if response.content is not None:
            if self.decoder is not None:
                try:
                    rest = self.decoder.flush()
                except zlib.error:
                    rest = b""
                if rest:
                    response.content.feed_data(rest)
            response.content.feed_eof()
        self._finish()

    def _finish(self) -> None:
        """The response is complete: the connection may serve another request."""
        self.response = None
        self.decoder = None
        self.framing = _NONE
        if self.keep_alive and self.connected and not self.buf:
            self.pool.release(self)
        else:
            self.abort()

    def _fail(self, exc: Exception) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        response, self.response = self.response, None
        if response is not None and response.content is not None:
            stream_error = (exc if isinstance(exc, aiohttp.ClientPayloadError)
                            else aiohttp.ClientPayloadError(f"Response payload is not completed: {exc!r}"))
            response.content.set_exception(stream_error)


class Http1Pool:
    """Keep-alive connections to one URL, for POSTs; see the module docstring."""

    def __init__(self, url: str, headers: Mapping[str, str], connect_timeout_s: float,
                 keepalive_s: float) -> None:
        parsed = URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.raw_host:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.loop = asyncio.get_running_loop()
        self.host = parsed.raw_host
        self.port = parsed.port or (443 if parsed.scheme == "https" else 80)
        self.ssl = _tls_context() if parsed.scheme == "https" else None
        host = f"[{self.host}]" if ":" in self.host else self.host
        if parsed.explicit_port is not None and not parsed.is_default_port():
            host = f"{host}:{self.port}"
        self._prefix = f"POST {parsed.raw_path_qs or '/'} HTTP/1.1\r\nHost: {host}\r\n"
        # Sent on every request unless the request names the header itself (as aiohttp merges
        # session headers): the configured headers (the upstream's credentials) and User-Agent.
        defaults = {"user-agent": ("User-Agent", SERVER_SOFTWARE)}
        for name, value in headers.items():
            defaults[name.lower()] = (name, value)
        self._defaults = [(low, _header_line(name, value)) for low, (name, value) in defaults.items()]
        self.connect_timeout_s = connect_timeout_s
        self.keepalive_s = keepalive_s
        self._heads: dict[tuple[tuple[str, str], ...], bytes] = {}
        self._idle: list[_Connection] = []
        self._open: set[_Connection] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        self.closed = False

    def _head(self, headers: Mapping[str, str], length: int) -> bytes:
        # The request line and headers, encoded once per distinct header set: a connector sends
        # the same few sets over and over (keyed by content, so a caller mutating a dict is safe).
        key = tuple(headers.items())
        head = self._heads.get(key)
        if head is None:
            own = "".join([f"{name}: {value}\r\n" for name, value in key])
            if own.count("\n") != len(key) or own.count("\r") != len(key):
                raise ValueError("a header name or value contains a line break")  # would split the request
            names = {name.lower() for name, _ in key}
            defaults = "".join([line for low, line in self._defaults if low not in names])
            head = f"{self._prefix}{defaults}{own}Content-Length: ".encode()  # UTF-8, as aiohttp does
            if len(self._heads) >= _HEAD_CACHE_MAX:
                self._heads.clear()
            self._heads[key] = head
        return head + b"%d\r\n\r\n" % length

    async def post(self, body: bytes, headers: Mapping[str, str]) -> Http1Response:
        """POST `body`; return once the head arrives (a buffered body is already complete)."""
        if self.closed:
            raise aiohttp.ClientConnectionError("the connection pool is closed")
        head = self._head(headers, len(body))
        conn = self._acquire()
        if conn is None:
            conn = await self._connect()
        try:
            return await conn.send(head + body if len(body) <= _INLINE_BODY else [head, body])
        except BaseException:
            if conn.waiter is not None or conn.response is not None:
                conn.abort()  # no complete answer: this connection cannot carry another request
            raise

    def _acquire(self) -> _Connection | None:
        idle = self._idle
        now = self.loop.time()
        while idle:
            conn = idle.pop()  # the most recently used: keeps the pool as small as the load
            if conn.connected and now - conn.idle_since < self.keepalive_s:
                return conn
            conn.abort()
        return None

    async def _connect(self) -> _Connection:
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, conn = await self.loop.create_connection(
                    lambda: _Connection(self), self.host, self.port, ssl=self.ssl,
                    server_hostname=self.host if self.ssl is not None else None,
                )
        except TimeoutError:
            raise aiohttp.ConnectionTimeoutError(
                f"Connection timeout to host {self.host}:{self.port}") from None
        except OSError as exc:
            raise ConnectFailed(self.host, self.port, exc) from exc
        if self.closed:
            conn.abort()
            raise aiohttp.ClientConnectionError("the connection pool is closed")
        self._open.add(conn)
        return conn

    def release(self, conn: _Connection) -> None:
        if self.closed:
            conn.abort()
            return
        conn.idle_since = self.loop.time()
        self._idle.append(conn)
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(self.keepalive_s, self._sweep)

    def forget(self, conn: _Connection) -> None:
        self._open.discard(conn)

    def _sweep(self) -> None:
        """Close connections idle for `keepalive_s` (one timer for the pool, not one per call)."""
        self._sweeper = None
        deadline = self.loop.time() - self.keepalive_s
        keep = []
        for conn in self._idle:
            if conn.connected and conn.idle_since > deadline:
                keep.append(conn)
            else:
                conn.abort()
        self._idle = keep
        if keep:
            self._sweeper = self.loop.call_at(keep[0].idle_since + self.keepalive_s, self._sweep)

    def close(self) -> None:
        """Close every connection; requests and streams in flight fail with ClientConnectionError."""
        self.closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        self._idle.clear()
        for conn in list(self._open):
            # Failed explicitly: a close-delimited body must not look complete when it is cut here.
            conn._fail(aiohttp.ClientConnectionError("the connection pool is closed"))
            conn.abort()


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """Verified TLS, as aiohttp's default (built once: loading the CA store reads the disk)."""
    context = ssl.create_default_context()
    context.set_alpn_protocols(("http/1.1",))
    return context


def _header_line(name: str, value: str) -> str:
    line = f"{name}: {value}\r\n"
    if line.count("\n") != 1 or line.count("\r") != 1:
        raise ValueError(f"header {name!r} contains a line break")  # would split the request
    return line
