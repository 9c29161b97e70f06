"""One JSON-RPC exchange over Streamable HTTP, for both protocol eras.

A request is POSTed; the answer is either one JSON body or an SSE stream carrying the call's
notifications (and, in the legacy era, the server's requests) before the final response. A
legacy stream that ends early is resumed with `Last-Event-ID`. Where the server's other messages
go, and the one-way POSTs, is `http_messages`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

import aiohttp
import orjson

from ingress.sse_codec import SseError, iter_events
from ingress.upstreams.base import JsonObject
from ingress.upstreams.errors import UpstreamProtocolError, UpstreamUnavailable
from ingress.upstreams.http1_pool import Http1Response
from ingress.upstreams.http_base import describe
from ingress.upstreams.http_messages import Answer, Call, HttpMessages, SessionExpired, peek

log = logging.getLogger("mcpgw.upstream")

ACCEPT_BOTH = "application/json, text/event-stream"
_RESUME_ATTEMPTS = 2
_GATEWAY_ERRORS = frozenset({502, 503, 504})


class _Cursor:
    __slots__ = ("last_id", "retry_ms")

    def __init__(self) -> None:
        self.last_id: str | None = None
        self.retry_ms: int | None = None


def _since(sent_ns: int) -> int:
    return (time.perf_counter_ns() - sent_ns) // 1000


class HttpExchange(HttpMessages):
    lean_posts = True

    async def _exchange(
        self, out: JsonObject, wire: bytes, expect_id: Any, call: Call, headers: Mapping[str, str],
        generation: int,
    ) -> tuple[JsonObject, bytes, Answer]:
        """POST one request and return its final response (body, exact bytes, HTTP response)."""
        posts = self._posts
        if posts is None:
            return await self._exchange_aiohttp(out, wire, expect_id, call, headers, generation)
        await self._tap.sent(self.name, out, wire, call.ctx)
        sent_ns = time.perf_counter_ns()
        try:
            request = posts.encode(wire, headers)
            conn = posts.idle_connection()
            if conn is None:
                resp = await posts.send(request)
            else:
                try:
                    resp = await conn.send(request)
                except BaseException:
                    conn.abandon()
                    raise
            try:
                raw = resp.buffered_body
                if raw is not None and resp.status == 200 and resp.content_type == "application/json":
                    # The usual answer, read here rather than in _read_answer/_final (two coroutines less).
                    try:
                        body = orjson.loads(raw)
                    except orjson.JSONDecodeError:
                        body = None
                    if type(body) is dict and "method" not in body and ("result" in body or "error" in body):
                        await self._tap.received(self.name, body, raw, call.ctx, _since(sent_ns))
                    else:
                        body, raw = await self._final(raw, expect_id, call, sent_ns)
                else:
                    body, raw = await self._read_answer(resp, expect_id, call, sent_ns, headers, generation)
            finally:
                resp.close()  # a no-op once the answer is complete; else abandons it (modern: cancels)
        except aiohttp.ClientError as exc:
            if posts.closed:  # stop() closed the pool under this call
                raise UpstreamUnavailable(self.name, "the connector stopped", retryable=False) from exc
            raise self._transport_error(exc, generation) from exc
        except SseError as exc:
            raise UpstreamProtocolError(self.name, f"{call.method}: broken event stream: {exc}") from exc
        return body, raw, resp

    async def _exchange_aiohttp(
        self, out: JsonObject, wire: bytes, expect_id: Any, call: Call, headers: Mapping[str, str],
        generation: int,
    ) -> tuple[JsonObject, bytes, Answer]:
        http = self._http
        if http is None:
            raise UpstreamUnavailable(self.name, "the upstream connector is stopped")
        await self._tap.sent(self.name, out, wire, call.ctx)
        sent_ns = time.perf_counter_ns()
        try:
            async with http.post(self._url, data=wire, headers=headers, allow_redirects=False) as resp:
                try:
                    body, raw = await self._read_answer(resp, expect_id, call, sent_ns, headers, generation)
                except BaseException:
                    resp.close()  # abandon the stream (in the modern era this cancels the call)
                    raise
        except aiohttp.ClientError as exc:
            raise self._transport_error(exc, generation) from exc
        except SseError as exc:
            raise UpstreamProtocolError(self.name, f"{call.method}: broken event stream: {exc}") from exc
        except RuntimeError as exc:
            if http.closed:  # stop() closed the session under this call
                raise UpstreamUnavailable(self.name, "the connector stopped", retryable=False) from exc
            raise
        return body, raw, resp

    async def _read_answer(
        self, resp: Answer, expect_id: Any, call: Call, sent_ns: int,
        headers: Mapping[str, str], generation: int,
    ) -> tuple[JsonObject, bytes]:
        status = resp.status
        ctype = resp.content_type
        if status == 200 or (200 < status < 300 and status != 202):
            if ctype == "application/json":
                raw = resp.buffered_body if type(resp) is Http1Response else None
                return await self._final(raw if raw is not None else await resp.read(), expect_id, call, sent_ns)
            if ctype == "text/event-stream":
                return await self._read_stream(resp, expect_id, call, sent_ns, generation)
            raise UpstreamProtocolError(self.name, f"{call.method} was answered with Content-Type {ctype!r}")
        if status == 404 and "Mcp-Session-Id" in headers:
            raise SessionExpired(headers["Mcp-Session-Id"])
        raw = await resp.read() if ctype == "application/json" else b""
        if raw:
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError:
                body = None
            if isinstance(body, dict) and isinstance(body.get("error"), dict):
                # A rejection with a JSON-RPC error body is an answer (-32022, -32601, ...).
                await self._tap.received(self.name, body, raw, call.ctx, _since(sent_ns))
                return (body if body.get("id") == expect_id else {**body, "id": expect_id}), raw
        text = raw or (await peek(resp, 300) if ctype.startswith("text/") else b"")
        detail = f"{call.method} was answered with HTTP {status} {resp.reason or ''}".rstrip()
        if 300 <= status < 400:
            detail += f" to {resp.headers.get('Location', '?')} (redirects are not followed)"
        if text:
            detail += f": {text[:300].decode('utf-8', 'replace')}"
        if status in _GATEWAY_ERRORS:
            raise UpstreamUnavailable(self.name, detail, retryable=False)
        raise UpstreamProtocolError(self.name, detail)

    async def _final(self, raw: bytes, expect_id: Any, call: Call, sent_ns: int) -> tuple[JsonObject, bytes]:
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict) or "method" in body or ("result" not in body and "error" not in body):
            await self._tap.received(self.name, body if isinstance(body, dict) else {}, raw, call.ctx, None)
            raise UpstreamProtocolError(self.name, f"{call.method} was answered with something that is not a "
                                        f"JSON-RPC response ({len(raw)} bytes)")
        await self._tap.received(self.name, body, raw, call.ctx, _since(sent_ns))
        return body, raw

    async def _read_stream(
        self, resp: Answer, expect_id: Any, call: Call, sent_ns: int, generation: int
    ) -> tuple[JsonObject, bytes]:
        cursor = _Cursor()
        done = await self._drain(resp, expect_id, call, sent_ns, cursor)
        attempts = 0
        while done is None:
            # The stream ended before the response: a legacy server that gave event ids may be
            # "polled" (it closed on purpose, or we lost the connection) by resuming with GET.
            if self._modern or cursor.last_id is None or attempts >= _RESUME_ATTEMPTS or self._http is None:
                raise UpstreamUnavailable(self.name, f"the stream of {call.method} ended without a response",
                                          retryable=False)
            attempts += 1
            paused = getattr(call.ctx.handler, "upstream_paused", None)
            if paused is not None:
                await paused()  # let the agent's own stream mirror the server's polling close
            await asyncio.sleep(cursor.retry_ms / 1000 if cursor.retry_ms is not None else 0.2 * attempts)
            headers = {**self._get_headers, "Last-Event-ID": cursor.last_id}
            try:
                async with self._http.get(self._url, headers=headers, allow_redirects=False) as resumed:
                    if resumed.status != 200 or resumed.content_type != "text/event-stream":
                        raise UpstreamUnavailable(self.name, f"resuming the stream of {call.method} got HTTP "
                                                  f"{resumed.status}", retryable=False)
                    done = await self._drain(resumed, expect_id, call, sent_ns, cursor)
            except aiohttp.ClientError as exc:
                raise self._transport_error(exc, generation) from exc
        return done

    async def _drain(
        self, resp: Answer, expect_id: Any, call: Call, sent_ns: int, cursor: _Cursor
    ) -> tuple[JsonObject, bytes] | None:
        content = resp.content
        assert content is not None  # event streams are never buffered (see Http1Response)
        try:
            async for event in iter_events(content):
                if event.id is not None:
                    cursor.last_id = event.id
                if event.retry is not None:
                    cursor.retry_ms = event.retry
                if event.data and event.event == "message":
                    done = await self._call_event(event.data, expect_id, call, sent_ns)
                    if done is not None:
                        return done
        except aiohttp.ClientPayloadError as exc:
            if self._modern or cursor.last_id is None:
                raise UpstreamUnavailable(self.name, f"the stream of {call.method} broke: {describe(exc)}",
                                          retryable=False) from exc
        return None

    async def _call_event(
        self, data: bytes, expect_id: Any, call: Call, sent_ns: int
    ) -> tuple[JsonObject, bytes] | None:
        try:
            body = orjson.loads(data)
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            await self._tap.received(self.name, {}, data, call.ctx, None)
            raise UpstreamProtocolError(self.name, f"sent a non-object event during {call.method}")
        if "method" not in body:
            if body.get("id") == expect_id and ("result" in body or "error" in body):
                await self._tap.received(self.name, body, data, call.ctx, _since(sent_ns))
                return body, data
            await self._tap.received(self.name, body, data, self._system_ctx(), None)  # stray: record, drop
            return None
        if "id" in body:
            await self._tap.received(self.name, body, data, call.ctx, None)
            if self._modern:
                log.warning("upstream %s sent a %s request on a response stream (not allowed in %s): ignored",
                            self.name, body.get("method"), self._version)
                return None
            if call.children is None:
                call.children = set()
            task = self._spawn(self._answer(body, call.ctx))
            call.children.add(task)
            task.add_done_callback(call.children.discard)
            return None
        await self._deliver(call, body, data)
        return None

