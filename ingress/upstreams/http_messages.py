"""What a Streamable HTTP connector exchanges with its server besides a call's own answer.

The server's messages routed to the right place (a call's notifications, its requests answered
through the agent, the legacy GET stream's traffic, unsolicited messages), one-way POSTs
(notifications, answers, cancellations), and the connection state they need (era, session
headers, calls in flight). One request's POST and answer are `http_exchange`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

import aiohttp
import orjson
from mcp_types import INTERNAL_ERROR, METHOD_NOT_FOUND

from ingress.jsonrpc import error_body
from ingress.upstreams.base import CallContext, JsonObject
from ingress.upstreams.errors import UpstreamProtocolError, UpstreamUnavailable
from ingress.upstreams.http1_pool import Http1Response
from ingress.upstreams.http_base import HttpUpstreamBase

log = logging.getLogger("mcpgw.upstream")

_CALL_METHODS = frozenset({"tools/call", "prompts/get", "resources/read", "completion/complete"})


class Call:
    """One request in flight: whose it is, and what to restore on the way back."""

    __slots__ = ("children", "ctx", "method", "original_id", "token")

    def __init__(self, ctx: CallContext, method: str, original_id: Any) -> None:
        self.ctx = ctx
        self.method = method
        self.original_id = original_id
        self.token: Any = None  # the agent's progress token, when it was rewritten
        self.children: set[asyncio.Task[Any]] | None = None


class SessionExpired(Exception):
    def __init__(self, session_id: str | None) -> None:
        super().__init__(session_id)
        self.session_id = session_id


# An upstream's HTTP answer, from the lean POST pool or from aiohttp (GET streams, listen, fallback).
Answer = Http1Response | aiohttp.ClientResponse


async def peek(resp: Answer, size: int) -> bytes:
    """Up to `size` bytes of the body, without reading a long one whole."""
    if resp.content is None:  # a buffered Http1Response: the body is already here
        return (await resp.read())[:size]
    return await resp.content.read(size)


class HttpMessages(HttpUpstreamBase):
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
            text = await peek(resp, 300)
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
