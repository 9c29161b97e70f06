"""Many agents' calls multiplexed over one duplex JSON-RPC stream to an upstream (stdio, SSE).

Ids and progress tokens are rewritten to gateway-unique values on the way up and restored on the
way down, so two agents that both use id 1 never collide on a shared upstream. Order within a
call is kept: a call's notifications reach its handler before its final response is returned.
Server-to-client requests are routed to the call that most plausibly caused them (the one in
flight, or the newest one when several are), answered by its handler, and sent back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from mcp_types import METHOD_NOT_FOUND

from ingress.jsonrpc import Invalid, classify, error_body
from ingress.upstreams.base import (
    GATEWAY_CLIENT_CAPABILITIES,
    GATEWAY_CLIENT_INFO,
    CallContext,
    JsonObject,
    UnsolicitedHandler,
    UpstreamInfo,
    UpstreamTap,
)
from ingress.upstreams.errors import (
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from schemas.events import Kind

log = logging.getLogger("mcpgw.upstream")

LEGACY_VERSION = "2025-11-25"
_CALL_METHODS = frozenset({"tools/call", "prompts/get", "resources/read", "completion/complete"})


@dataclass(slots=True)
class _Pending:
    method: str
    ctx: CallContext
    future: asyncio.Future[tuple[JsonObject, bytes]]
    sent_ns: int
    progress_token: Any = None
    tail: asyncio.Task[None] | None = None  # the last delivery task of this call's notifications
    children: set[asyncio.Task[None]] = field(default_factory=set)


class JsonRpcPeer:
    def __init__(
        self,
        server: str,
        send: Callable[[bytes], Awaitable[None]],
        tap: UpstreamTap,
        on_unsolicited: UnsolicitedHandler,
        system_ctx: Callable[[], CallContext],
    ) -> None:
        self.server = server
        self._send = send
        self._tap = tap
        self._on_unsolicited = on_unsolicited
        self._system_ctx = system_ctx
        self._next_id = 0
        self._pending: dict[int, _Pending] = {}
        self._by_token: dict[str, _Pending] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._unsolicited_tail: asyncio.Task[None] | None = None
        self.closed_reason: str | None = None

    # -- outgoing ---------------------------------------------------------------------------

    async def request(self, body: JsonObject, ctx: CallContext, timeout: float) -> JsonObject:
        if self.closed_reason is not None:
            raise UpstreamUnavailable(self.server, self.closed_reason)
        self._next_id += 1
        upstream_id = self._next_id
        original_id = body.get("id")
        out = dict(body)
        out["id"] = upstream_id
        method = str(body.get("method", ""))
        loop = asyncio.get_running_loop()
        pending = _Pending(method, ctx, loop.create_future(), 0)
        params = out.get("params")
        if isinstance(params, dict):
            meta = params.get("_meta")
            if isinstance(meta, dict) and "progressToken" in meta:
                pending.progress_token = meta["progressToken"]
                token = f"g{upstream_id}"
                out["params"] = {**params, "_meta": {**meta, "progressToken": token}}
                self._by_token[token] = pending
        wire = orjson.dumps(out)
        await self._tap.sent(self.server, out, wire, ctx)
        self._pending[upstream_id] = pending
        try:
            pending.sent_ns = time.perf_counter_ns()
            try:
                await self._send(wire)
            except UpstreamError:
                raise
            except (OSError, RuntimeError) as exc:
                raise UpstreamUnavailable(self.server, f"could not send: {exc}") from exc
            try:
                response, raw = await asyncio.wait_for(asyncio.shield(pending.future), timeout)
            except TimeoutError:
                await self._cancel_upstream(upstream_id, f"no answer within {timeout:g}s", ctx)
                raise UpstreamTimeout(self.server, f"{method} got no answer within {timeout:g}s") from None
            except asyncio.CancelledError:
                await asyncio.shield(self._cancel_upstream(upstream_id, "cancelled by the client", ctx))
                raise
            if pending.tail is not None:
                await pending.tail  # the call's notifications go out before its response
            latency = (time.perf_counter_ns() - pending.sent_ns) // 1000
            await self._tap.received(self.server, response, raw, ctx, latency)
        finally:
            self._pending.pop(upstream_id, None)
            if pending.progress_token is not None:
                self._by_token.pop(f"g{upstream_id}", None)
        response["id"] = original_id
        return response

    async def notify(self, body: JsonObject, ctx: CallContext) -> None:
        if self.closed_reason is not None:
            raise UpstreamUnavailable(self.server, self.closed_reason)
        wire = orjson.dumps(body)
        await self._tap.sent(self.server, body, wire, ctx)
        try:
            await self._send(wire)
        except (OSError, RuntimeError) as exc:
            raise UpstreamUnavailable(self.server, f"could not send: {exc}") from exc

    async def _cancel_upstream(self, upstream_id: int, reason: str, ctx: CallContext) -> None:
        if self.closed_reason is not None or upstream_id not in self._pending:
            return
        note = {"jsonrpc": "2.0", "method": "notifications/cancelled",
                "params": {"requestId": upstream_id, "reason": reason}}
        wire = orjson.dumps(note)
        with contextlib.suppress(Exception):
            await self._tap.sent(self.server, note, wire, ctx)
            await self._send(wire)

    async def initialize(self, timeout: float) -> UpstreamInfo:
        """The 2025-11-25 handshake, on behalf of the gateway (recorded as the gateway's own calls)."""
        ctx = self._system_ctx()
        body = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": LEGACY_VERSION,
            "capabilities": GATEWAY_CLIENT_CAPABILITIES,
            "clientInfo": GATEWAY_CLIENT_INFO,
        }}
        response = await self.request(body, ctx, timeout)
        result = response.get("result")
        if not isinstance(result, dict):
            error = response.get("error") or {}
            raise UpstreamProtocolError(self.server, f"initialize failed: {error.get('message', response)}")
        await self.notify({"jsonrpc": "2.0", "method": "notifications/initialized"}, ctx)
        return UpstreamInfo(
            era="legacy",
            protocol_version=str(result.get("protocolVersion", LEGACY_VERSION)),
            server_info=result.get("serverInfo") or {},
            capabilities=result.get("capabilities") or {},
            instructions=result.get("instructions"),
        )

    # -- incoming ---------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Take one message from the upstream (called by the transport, in arrival order)."""
        try:
            body = orjson.loads(data)
        except orjson.JSONDecodeError:
            log.warning("upstream %s sent a line that is not JSON (%d bytes): ignored", self.server, len(data))
            self._spawn(self._record_garbage(data))
            return
        message = classify(body)
        if isinstance(message, Invalid):
            log.warning("upstream %s sent an invalid JSON-RPC message: %s", self.server, message.message)
            self._spawn(self._record_garbage(data))
            return
        if message.kind is Kind.RESPONSE or message.kind is Kind.ERROR:
            pending = self._pending.get(message.id) if isinstance(message.id, int) else None
            if pending is None or pending.future.done():
                self._spawn(self._record_stray(body, data))
                return
            pending.future.set_result((body, data))
        elif message.kind is Kind.NOTIFICATION:
            owner = self._owner_of_notification(body)
            if owner is not None:
                owner.tail = self._spawn(self._deliver(owner, body, data, owner.tail))
            else:
                self._unsolicited_tail = self._spawn(self._unsolicited(body, data, self._unsolicited_tail))
        else:
            self._spawn(self._answer_server_request(body, data))

    def _owner_of_notification(self, body: JsonObject) -> _Pending | None:
        params = body.get("params")
        if not isinstance(params, dict):
            return None
        method = body.get("method")
        if method == "notifications/progress":
            token = params.get("progressToken")
            pending = self._by_token.get(token) if isinstance(token, str) else None
            if pending is not None:
                body["params"] = {**params, "progressToken": pending.progress_token}
            return pending
        if method == "notifications/message" and len(self._pending) == 1:
            return next(iter(self._pending.values()))
        return None

    async def _deliver(self, pending: _Pending, body: JsonObject, wire: bytes,
                       previous: asyncio.Task[None] | None) -> None:
        if previous is not None:
            with contextlib.suppress(Exception):
                await previous
        await self._tap.received(self.server, body, wire, pending.ctx, None)
        if pending.ctx.handler is not None:
            await pending.ctx.handler.notification(self.server, body)

    async def _unsolicited(self, body: JsonObject, wire: bytes, previous: asyncio.Task[None] | None) -> None:
        if previous is not None:
            with contextlib.suppress(Exception):
                await previous
        await self._tap.received(self.server, body, wire, self._system_ctx(), None)
        await self._on_unsolicited(self.server, body)

    def _caller_of_server_request(self) -> _Pending | None:
        calls = [p for p in self._pending.values() if p.method in _CALL_METHODS]
        candidates = calls or list(self._pending.values())
        return candidates[-1] if candidates else None

    async def _answer_server_request(self, body: JsonObject, wire: bytes) -> None:
        caller = self._caller_of_server_request()
        ctx = caller.ctx if caller is not None else self._system_ctx()
        await self._tap.received(self.server, body, wire, ctx, None)
        request_id = body.get("id")
        if body.get("method") == "ping":
            answer: JsonObject = {"jsonrpc": "2.0", "id": request_id, "result": {}}
        elif ctx.handler is None:
            answer = error_body(request_id, METHOD_NOT_FOUND,
                                f"{body.get('method')} cannot be answered: no agent call is in progress on "
                                f"{self.server!r}")
        else:
            try:
                answer = await ctx.handler.request(self.server, body)
            except Exception as exc:  # the agent went away or answered garbage: tell the server
                answer = error_body(request_id, -32603, f"the agent could not answer: {exc}")
            answer["id"] = request_id
        out = orjson.dumps(answer)
        await self._tap.sent(self.server, answer, out, ctx)
        with contextlib.suppress(OSError, RuntimeError, UpstreamError):
            await self._send(out)

    async def _record_stray(self, body: JsonObject, wire: bytes) -> None:
        await self._tap.received(self.server, body, wire, self._system_ctx(), None)

    async def _record_garbage(self, wire: bytes) -> None:
        await self._tap.received(self.server, {}, wire, self._system_ctx(), None)

    def _spawn(self, coro: Awaitable[None]) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("upstream %s: handling a message failed", self.server, exc_info=task.exception())

    def close(self, reason: str) -> None:
        """The stream is gone: fail every call in flight with a clear, retry-safe-or-not error."""
        self.closed_reason = reason
        for pending in list(self._pending.values()):
            if not pending.future.done():
                pending.future.set_exception(UpstreamUnavailable(self.server, reason, retryable=False))
        self._pending.clear()
        self._by_token.clear()

    def reopen(self) -> None:
        self.closed_reason = None

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
