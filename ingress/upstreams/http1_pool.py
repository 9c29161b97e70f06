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

This module holds the pool (request heads, connection reuse, connecting); one connection's
protocol is `http1_connection`, and reading a response head is `http1_head`.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from collections.abc import Mapping

import aiohttp
from aiohttp.http import SERVER_SOFTWARE
from yarl import URL

from ingress.upstreams.http1_connection import Http1Connection, Http1Response
from ingress.upstreams.http1_head import BadResponse

__all__ = ["BadResponse", "ConnectFailed", "Http1Pool", "Http1Response"]

_INLINE_BODY = 16 * 1024  # request bodies up to this size are sent in one buffer with the head
_HEAD_CACHE_MAX = 256  # encoded request heads kept (per-call Mcp-Param-* values make more sets)


class ConnectFailed(aiohttp.ClientConnectionError):
    """The connection could not be opened: nothing was sent."""

    def __init__(self, host: str, port: int, os_error: OSError) -> None:
        super().__init__(f"Cannot connect to host {host}:{port} [{os_error.strerror or os_error}]")
        self.os_error = os_error


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
        self._idle: list[Http1Connection] = []
        self._open: set[Http1Connection] = set()
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
            # UTF-8, as aiohttp does; an agent's header bytes that were not UTF-8 (relayed Mcp-Param-*
            # headers, which aiohttp decoded with surrogateescape) go out as they came in.
            head = f"{self._prefix}{defaults}{own}Content-Length: ".encode("utf-8", "surrogateescape")
            if len(self._heads) >= _HEAD_CACHE_MAX:
                self._heads.clear()
            self._heads[key] = head
        return head + b"%d\r\n\r\n" % length

    def encode(self, body: bytes, headers: Mapping[str, str]) -> bytes | list[bytes]:
        """The request to write for a POST of `body` with `headers` (see `send`)."""
        head = self._head(headers, len(body))
        return head + body if len(body) <= _INLINE_BODY else [head, body]

    async def post(self, body: bytes, headers: Mapping[str, str]) -> Http1Response:
        """POST `body`; return once the head arrives (a buffered body is already complete)."""
        return await self.send(self.encode(body, headers))

    async def send(self, request: bytes | list[bytes]) -> Http1Response:
        """Write an encoded request on a pooled or a new connection; return once the head arrives."""
        if self.closed:
            raise aiohttp.ClientConnectionError("the connection pool is closed")
        conn = self.idle_connection()
        if conn is None:
            conn = await self._connect()
        try:
            return await conn.send(request)
        except BaseException:
            conn.abandon()
            raise

    def idle_connection(self) -> Http1Connection | None:
        """A pooled connection ready for a request, if there is one (none once the pool is closed).

        For callers that await `conn.send(...)` themselves (one coroutine less than `send`): they
        must call `conn.abandon()` when that await raises, as `send` does."""
        idle = self._idle
        now = self.loop.time()
        while idle:
            conn = idle.pop()  # the most recently used: keeps the pool as small as the load
            if conn.connected and now - conn.idle_since < self.keepalive_s:
                return conn
            conn.abort()
        return None

    async def _connect(self) -> Http1Connection:
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, conn = await self.loop.create_connection(
                    lambda: Http1Connection(self), self.host, self.port, ssl=self.ssl,
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

    def release(self, conn: Http1Connection) -> None:
        if self.closed:
            conn.abort()
            return
        conn.idle_since = self.loop.time()
        self._idle.append(conn)
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(self.keepalive_s, self._sweep)

    def forget(self, conn: Http1Connection) -> None:
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
            conn.fail(aiohttp.ClientConnectionError("the connection pool is closed"))
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
