"""One keep-alive HTTP/1.1 connection of the lean POST pool (see `http1_pool`), as an asyncio protocol.

It writes a request and reads its answer: a body framed by Content-Length that is not an event
stream is buffered and handed over whole with the head; anything else (an SSE answer, a chunked
or close-delimited body) is fed, as it arrives, into an `aiohttp.StreamReader`. After a complete
answer the connection goes back to its pool, or is closed if it cannot carry another request.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import zlib
from typing import TYPE_CHECKING

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy

from ingress.upstreams.http1_head import (
    CHUNKED,
    EOF,
    EVENT_STREAM,
    LENGTH,
    NONE,
    BadResponse,
    ResponseHead,
    parse_head,
)

if TYPE_CHECKING:
    from ingress.upstreams.http1_pool import Http1Pool

__all__ = ["Http1Connection", "Http1Response"]

_MAX_HEAD = 64 * 1024  # bytes of status line + headers
_STREAM_LIMIT = 2**16  # StreamReader flow-control limit (aiohttp's default read_bufsize)

# Chunked decoder states
_SIZE, _DATA, _DATA_END, _TRAILER = 0, 1, 2, 3
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")


class Http1Response:
    """What the connector needs of an answer: the aiohttp `ClientResponse` attributes it reads."""

    __slots__ = ("_body", "_conn", "_head", "_headers", "content", "content_type", "reason", "status")

    def __init__(self, head: ResponseHead, conn: Http1Connection) -> None:
        self.status = head.status
        self.reason = head.reason
        self._head = head
        self._headers: CIMultiDictProxy[str] | None = None
        self.content_type = head.content_type
        self._conn: Http1Connection | None = conn
        self._body: bytes | None = None
        self.content: aiohttp.StreamReader | None = None  # set when the body is streamed

    @property
    def headers(self) -> CIMultiDictProxy[str]:
        # Built on first use: most answers are read for their body only.
        if self._headers is None:
            self._headers = CIMultiDictProxy(CIMultiDict(self._head.pairs))
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


class Http1Connection(asyncio.Protocol):
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
        self.framing = NONE
        self.remaining = 0  # body bytes still expected (LENGTH), or in the current chunk
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
        if self.framing == EOF and self.response is not None and exc is None:
            self._body_done()  # the close delimits the body
            return
        if self.waiter is not None or self.response is not None:
            error: Exception = (aiohttp.ClientOSError(exc.errno, exc.strerror) if isinstance(exc, OSError)
                                else aiohttp.ServerDisconnectedError())
            self.fail(error)

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
            if self.response is None and not self.buf:
                self._answer_starts(data)
            elif self.response is None or (self.buffered and self.waiter is not None):
                self.buf += data
                self._parse_head_and_buffered()
            else:
                self._feed_stream(data)
        except BadResponse as exc:
            self.fail(exc)
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

    def abandon(self) -> None:
        """The request's caller gave up (cancelled, failed): without a complete answer this
        connection cannot carry another request."""
        if self.waiter is not None or self.response is not None:
            self.abort()

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

    def _answer_starts(self, data: bytes) -> None:
        """The first bytes of an answer; most often all of it, taken without buffering."""
        end = data.find(b"\r\n\r\n")
        if end < 0:
            self.buf += data
            self._parse_head_and_buffered()
            return
        head = parse_head(data[:end])
        if head is not None:
            self._start_response(head)
            if self.buffered and len(data) == end + 4 + self.remaining:
                self._complete(data[end + 4:])
                return
        self.buf += memoryview(data)[end + 4:]
        self._parse_head_and_buffered()

    def _parse_head_and_buffered(self) -> None:
        buf = self.buf
        while self.response is None:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > _MAX_HEAD:
                    raise BadResponse(f"response head over {_MAX_HEAD} bytes")
                return
            head = parse_head(bytes(buf[:end]))
            del buf[: end + 4]
            if head is not None:  # else an interim response
                self._start_response(head)
        if self.buffered:
            if len(buf) < self.remaining:
                return
            body = bytes(buf[: self.remaining])
            extra = len(buf) - self.remaining
            buf.clear()
            if extra:
                self.keep_alive = False  # more than the response: the connection is out of step
            self._complete(body)
            return
        # A streamed body: whatever followed the head is its first bytes.
        waiter, self.waiter = self.waiter, None
        response = self.response
        if waiter is not None and not waiter.done():
            waiter.set_result(response)
        if self.framing == NONE:
            if buf:
                self.keep_alive = False  # bytes after a body-less response
                buf.clear()
            self._body_done()
        elif buf:
            rest = bytes(buf)
            buf.clear()
            self._feed_stream(rest)

    def _complete(self, body: bytes) -> None:
        """A buffered answer's whole body is here: hand the response over."""
        response = self.response
        assert response is not None
        if self.decoder is not None:
            body = self._decode(body) + self.decoder.flush()
        response._body = body
        waiter, self.waiter = self.waiter, None
        self._finish()
        if waiter is not None and not waiter.done():
            waiter.set_result(response)

    def _start_response(self, head: ResponseHead) -> None:
        self.keep_alive = head.keep_alive
        self.decoder = head.decoder
        framing = self.framing = head.framing
        self.remaining = head.length
        self.chunk_state = _SIZE
        response = Http1Response(head, self)
        self.response = response
        self.buffered = framing in (NONE, LENGTH) and head.content_type != EVENT_STREAM
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
        if framing == LENGTH:
            if len(data) > self.remaining:
                self.keep_alive = False
                data = data[: self.remaining]
            self.remaining -= len(data)
            self._deliver(data)
            if not self.remaining:
                self._body_done()
        elif framing == CHUNKED:
            self._feed_chunked(data)
        elif framing == EOF:
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
        self.framing = NONE
        if self.keep_alive and self.connected and not self.buf:
            self.pool.release(self)
        else:
            self.abort()

    def fail(self, exc: Exception) -> None:
        """Fail the request or the body stream in progress with `exc`."""
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        response, self.response = self.response, None
        if response is not None and response.content is not None:
            stream_error = (exc if isinstance(exc, aiohttp.ClientPayloadError)
                            else aiohttp.ClientPayloadError(f"Response payload is not completed: {exc!r}"))
            response.content.set_exception(stream_error)
