"""One JSON-RPC exchange over Streamable HTTP, for both protocol eras.

A request is POSTed; the answer is either one JSON body or an SSE stream carrying the call's
notifications (and, in the legacy era, the server's requests) before the final response. A
legacy stream that ends early is resumed with `Last-Event-ID`. Messages that belong to no call
(the legacy GET stream, the modern listen stream) are routed here too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from typing import Any

import aiohttp
import orjson
from mcp_types import INTERNAL_ERROR, METHOD_NOT_FOUND

from ingress.jsonrpc import error_body
from ingress.sse_codec import SseError, iter_events
from ingress.upstreams.base import CallContext, JsonObject
from ingress.upstreams.errors import UpstreamProtocolError, UpstreamUnavailable
from ingress.upstreams.http1 import Http1Response
from ingress.upstreams.http_base import HttpUpstreamBase, describe

log = logging.getLogger("mcpgw.upstream")

ACCEPT_BOTH = "application/json, text/event-stream"
_CALL_METHODS = frozenset({"tools/call", "prompts/get", "resources/read", "completion/complete"})
_RESUME_ATTEMPTS = 2
_GATEWAY_ERRORS = frozenset({502, 503, 504})


class Call:
    """One request in flight: whose it is, and what to restore on the way back."""

    __slots__ = ("children", "ctx", "method", "original_id", "token")

    def __init__(self, ctx: CallContext, method: str, original_id: Any) -> None:
        self.ctx = ctx
        self.method = method
        self.original_id = original_id
        self.token: Any = None  # the agent's progress token, when it was rewritten
        self.children: set[asyncio.Task[Any]] | None = None


class Rejected(UpstreamProtocolError):
    """A handshake answered with a JSON-RPC error (kept for the era negotiation to inspect)."""

    def __init__(self, server: str, method: str, response: JsonObject) -> None:
        error = response.get("error")
        self.error: JsonObject = error if isinstance(error, dict) else {}
        code = self.error.get("code")
        self.code = code if isinstance(code, int) else None
        super().__init__(server, f"{method} failed: {self.error.get('message', response)} (code {self.code})")


class SessionExpired(Exception):
    def __init__(self, session_id: str | None) -> None:
        super().__init__(session_id)
        self.session_id = session_id


class _Cursor:
    __slots__ = ("last_id", "retry_ms")

    def __init__(self) -> None:
        self.last_id: str | None = None
        self.retry_ms: int | None = None


# An upstream's HTTP answer, from the lean POST pool or from aiohttp (GET streams, listen, fallback).
Answer = Http1Response | aiohttp.ClientResponse


async def _peek(resp: Answer, size: int) -> bytes:
    """Up to `size` bytes of the body, without reading a long one whole."""
    if resp.content is None:  # a buffered Http1Response: the body is already here
        return (await resp.read())[:size]
    return await resp.content.read(size)


def _since(sent_ns: int) -> int:
    return (time.perf_counter_ns() - sent_ns) // 1000


class HttpExchange(HttpUpstreamBase):
    lean_posts = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._modern = False
        self._version = ""
        self._session_id: str | None = None
        self._headers: dict[str, str] = {}  # legacy POSTs: rebuilt only when the session changes
        self._get_headers: dict[str, str] = {}
        self._next_id = 0
        self._calls: dict[int, Call] = {}  # legacy calls in flight, oldest first
        self._by_token: dict[str, Call] = {}

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
            resp = await posts.post(wire, headers)
            try:
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
        text = raw or (await _peek(resp, 300) if ctype.startswith("text/") else b"")
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

    async def _deliver(self, call: Call, body: JsonObject, data: bytes) -> None:
        await self._tap.received(self.name, body, data, call.ctx, None)
        handler = call.ctx.handler
        if handler is None:
            return
        if call.token is not None and body.get("method") == "notifications/progress":
            params = body.get("params")
            if isinstance(params, dict):
                body = {**body, "params": {**params, "progressToken": call.token}}
        try:
            await handler.notification(self.name, body)
        except Exception:
            log.exception("upstream %s: the call's handler failed on %s", self.name, body.get("method"))

    async def _answer(self, body: JsonObject, ctx: CallContext) -> None:
        """Answer a legacy server-to-client request (already recorded) and POST the answer back."""
        request_id = body.get("id")
        handler = ctx.handler
        if body.get("method") == "ping":
            answer: JsonObject = {"jsonrpc": "2.0", "id": request_id, "result": {}}
        elif handler is None:
            answer = error_body(request_id, METHOD_NOT_FOUND,
                                f"{body.get('method')} cannot be answered: no agent call is in progress on "
                                f"{self.name!r}")
        else:
            try:
                answer = {**(await handler.request(self.name, body)), "id": request_id}
            except Exception as exc:  # the agent went away or answered garbage: tell the server
                answer = error_body(request_id, INTERNAL_ERROR, f"the agent could not answer: {exc}")
        try:
            await self._post_message(answer, ctx, self._headers, -1)
        except (UpstreamProtocolError, UpstreamUnavailable) as exc:
            log.warning("upstream %s: could not answer %s: %s", self.name, body.get("method"), exc)

    async def _post_message(self, body: JsonObject, ctx: CallContext, headers: Mapping[str, str],
                            generation: int) -> None:
        """POST a notification or a response; the server acknowledges with 202."""
        posts, http = self._posts, self._http
        if posts is None and http is None:
            raise UpstreamUnavailable(self.name, "the upstream connector is stopped")
        wire = orjson.dumps(body)
        await self._tap.sent(self.name, body, wire, ctx)
        try:
            if posts is not None:
                resp = await posts.post(wire, headers)
                try:
                    await self._check_accepted(resp, body)
                finally:
                    resp.close()
            else:
                assert http is not None
                async with http.post(self._url, data=wire, headers=headers, allow_redirects=False) as aresp:
                    await self._check_accepted(aresp, body)
        except aiohttp.ClientError as exc:
            if posts is not None and posts.closed:
                raise UpstreamUnavailable(self.name, "the connector stopped", retryable=False) from exc
            raise self._transport_error(exc, generation) from exc
        except RuntimeError as exc:
            if http is not None and http.closed:
                raise UpstreamUnavailable(self.name, "the connector stopped", retryable=False) from exc
            raise

    async def _check_accepted(self, resp: Answer, body: JsonObject) -> None:
        if resp.status >= 300:
            text = await _peek(resp, 300)
            what = body.get("method", "a response")
            raise UpstreamProtocolError(self.name, f"{what} was refused with HTTP {resp.status}: "
                                        f"{text.decode('utf-8', 'replace')}")

    def _cancel_later(self, uid: int, reason: str, ctx: CallContext) -> None:
        # In the background: neither the timeout nor the cancellation should wait for the POST.
        if not self._stopping:
            self._spawn(self._cancel_upstream(uid, reason, ctx))

    async def _cancel_upstream(self, uid: int, reason: str, ctx: CallContext) -> None:
        note = {"jsonrpc": "2.0", "method": "notifications/cancelled",
                "params": {"requestId": uid, "reason": reason}}
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self.config.connect_timeout_s):
                await self._post_message(note, ctx, self._headers, -1)

    def _newest_call(self) -> Call | None:
        newest: Call | None = None
        for call in self._calls.values():
            if call.method in _CALL_METHODS or newest is None or newest.method not in _CALL_METHODS:
                newest = call
        return newest

    async def _stream_message(self, data: bytes) -> None:
        """A message from the legacy GET stream: belongs to a call only through its progress token."""
        try:
            body = orjson.loads(data)
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict) or "method" not in body:
            # Not JSON, or a response nobody waits for on this stream: record it and move on.
            recorded = body if isinstance(body, dict) else {}
            await self._tap.received(self.name, recorded, data, self._system_ctx(), None)
            return
        if "id" in body:
            caller = self._newest_call()
            ctx = caller.ctx if caller is not None else self._system_ctx()
            await self._tap.received(self.name, body, data, ctx, None)
            self._spawn(self._answer(body, ctx))
            return
        if body["method"] == "notifications/progress":
            params = body.get("params")
            token = params.get("progressToken") if isinstance(params, dict) else None
            owner = self._by_token.get(token) if isinstance(token, str) else None
            if owner is not None:
                await self._deliver(owner, body, data)
                return
        await self._tap.received(self.name, body, data, self._system_ctx(), None)
        await self._deliver_unsolicited(body)

    async def _deliver_unsolicited(self, body: JsonObject) -> None:
        try:
            await self._on_unsolicited(self.name, body)
        except Exception:
            log.exception("upstream %s: the unsolicited-message handler failed", self.name)

    async def _record_body(self, resp: Answer, ctx: CallContext) -> None:
        """Record a JSON-RPC error body a background request was refused with."""
        if resp.content_type != "application/json":
            return
        raw = await resp.read()
        with contextlib.suppress(orjson.JSONDecodeError):
            body = orjson.loads(raw)
            if isinstance(body, dict):
                await self._tap.received(self.name, body, raw, ctx, None)
