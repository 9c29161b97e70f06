"""How one agent call talks back: a JSON body, or an SSE stream once the upstream has more to say.

A call starts out expecting a single JSON answer. The first notification or server-to-client
request the upstream sends during the call turns the response into an SSE stream (if the agent
accepts one), carrying those messages and then the final response. Every message is recorded
before it is written. The legacy HTTP+SSE transport writes everything to the session stream.

While the session's caller is blocked, what the upstream sends towards the agent is withheld and
recorded instead (`ingress.block_cutoff`); a withheld server request is answered upstream with
the block's -32012 error.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import orjson
from aiohttp import hdrs, web
from mcp_types import METHOD_NOT_FOUND
from multidict import CIMultiDict

from ingress.dispatch import Reply
from ingress.gateway import level_allows
from ingress.jsonrpc import JsonObject, error_body, error_code_of
from ingress.mrtr import HeldCall
from ingress.recorder import Recorder
from ingress.sessions import AgentSession
from ingress.upstreams.base import CallContext

# The HTTP status a 2026-07-28 answer carries for its JSON-RPC error (errors not listed stay 200).
MODERN_ERROR_STATUS = {-32700: 400, -32600: 400, -32602: 400, -32020: 400, -32021: 400, -32022: 400, -32601: 404}
RETRY_MS = 1000  # how long a legacy client waits before resuming a dropped stream
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache, no-transform",
               "X-Accel-Buffering": "no"}
# What `content_type="application/json"` would set, built once (Response copies it).
_JSON_HEADERS: CIMultiDict[str] = CIMultiDict({hdrs.CONTENT_TYPE: "application/json"})
KEEPALIVE_S = 15.0  # a comment line on an idle stream, so proxies do not time it out
_CAPABILITY_OF = {"sampling/createMessage": "sampling", "elicitation/create": "elicitation",
                  "roots/list": "roots"}


def sse_event(data: bytes) -> bytes:
    return b"event: message\ndata: " + data + b"\n\n"


async def pump(stream: web.StreamResponse, outbox: asyncio.Queue[bytes | None]) -> None:
    """Write queued messages to an SSE stream until the queue says stop or the agent leaves."""
    while True:
        try:
            item = await asyncio.wait_for(outbox.get(), KEEPALIVE_S)
        except TimeoutError:
            try:
                await stream.write(b": keep-alive\n\n")
            except ConnectionError:
                return
            continue
        if item is None:
            return
        try:
            await stream.write(sse_event(item))
        except ConnectionError:
            return


class AgentChannel:
    """The `CallHandler` of one agent call; subclasses decide where the bytes go."""

    def __init__(self, recorder: Recorder, ctx: CallContext, session: AgentSession | None,
                 answer_timeout_s: float) -> None:
        self.recorder = recorder
        self.ctx = ctx
        self.session = session
        self.answer_timeout_s = answer_timeout_s
        self.held: HeldCall | None = None

    async def _emit(self, wire: bytes) -> None:
        raise NotImplementedError

    async def notification(self, server: str, body: JsonObject) -> None:
        if body.get("method") == "notifications/message":
            params = body.get("params") or {}
            threshold = self.session.log_level if self.session is not None else self.ctx.log_level
            if self.ctx.era == "modern" and self.ctx.log_level is None:
                return  # modern clients get logs only when they asked for them on the request
            if not level_allows(threshold, params.get("level")):
                return
        wire = orjson.dumps(body)
        session = self.session
        if session is not None and session.gate is not None:
            decision = session.gate.blocking(session.principal, session.tenant, session.id)
            if decision is not None:
                await session.gate.withhold(self.ctx, decision, body, wire)
                return
        await self.recorder.agent_sent(self.ctx, body, wire, final=False)
        await self._emit(wire)

    async def request(self, server: str, body: JsonObject) -> JsonObject:
        method = str(body.get("method", ""))
        capability = _CAPABILITY_OF.get(method)
        session = self.session
        if session is None:
            return await self._ask_modern_agent(method, capability, body)
        if capability is not None and not session.supports(capability):
            return error_body(body.get("id"), METHOD_NOT_FOUND,
                              f"the agent did not declare the {capability!r} capability")
        gate = session.gate
        if gate is not None:
            decision = gate.blocking(session.principal, session.tenant, session.id)
            if decision is not None:
                await gate.withhold(self.ctx, decision, body, orjson.dumps(body))
                return gate.answer(body.get("id"), decision)
        agent_id = session.next_request_id()
        out = {**body, "id": agent_id}
        wire = orjson.dumps(out)
        waiter: asyncio.Future[tuple[JsonObject, bytes]] = asyncio.get_running_loop().create_future()
        session.awaiting[agent_id] = waiter
        try:
            await self.recorder.agent_sent(self.ctx, out, wire, final=False)
            await self._emit(wire)
            answer, raw = await asyncio.wait_for(waiter, self.answer_timeout_s)
        finally:
            session.awaiting.pop(agent_id, None)
        self.recorder.agent_received(self.ctx, answer, raw)
        return dict(answer)

    async def _ask_modern_agent(self, method: str, capability: str | None, body: JsonObject) -> JsonObject:
        """A stateless agent is asked through MRTR: the held call returns `input_required`."""
        held = self.held
        declared = self.ctx.client_capabilities or {}
        if held is None or capability is None:
            return error_body(body.get("id"), METHOD_NOT_FOUND,
                              f"{method} cannot reach the agent: it uses protocol 2026-07-28 and "
                              f"{self.ctx.method or 'this request'} cannot return input_required")
        if capability not in declared:
            return error_body(body.get("id"), METHOD_NOT_FOUND,
                              f"the agent did not declare the {capability!r} client capability")
        params = body.get("params")
        request: JsonObject = {"method": method}
        if isinstance(params, dict) and params:
            request["params"] = params
        answer = await asyncio.wait_for(held.ask(request), self.answer_timeout_s)
        return {"jsonrpc": "2.0", "id": body.get("id"), "result": answer}

    async def finish(self, reply: Reply) -> web.StreamResponse:
        raise NotImplementedError


class PostChannel(AgentChannel):
    """Streamable HTTP: the answer to one POST.

    A `resumable` stream (a legacy 2025-11-25 session calling a tool, prompt or resource) opens
    with a priming event and numbers every event; if the agent's connection drops, the call goes on
    and a GET with `Last-Event-ID` picks up where it left off.
    """

    def __init__(self, request: web.Request, recorder: Recorder, ctx: CallContext, session: AgentSession | None,
                 answer_timeout_s: float, headers: dict[str, str] | None = None, resumable: bool = False) -> None:
        super().__init__(recorder, ctx, session, answer_timeout_s)
        self.http_request = request
        self.headers = headers or {}
        self.stream: web.StreamResponse | None = None
        accept = request.headers.get("Accept", "")
        self.can_stream = "text/event-stream" in accept or "*/*" in accept or not accept
        self._stream_lock: asyncio.Lock | None = None  # made on first use: most calls never stream
        self.log = session.new_stream_log() if resumable and session is not None and self.can_stream else None
        self._detached = False
        self._opener: asyncio.TimerHandle | None = None

    @property
    def _lock(self) -> asyncio.Lock:
        """Orders the writes of a streamed answer."""
        lock = self._stream_lock
        if lock is None:
            lock = self._stream_lock = asyncio.Lock()
        return lock

    async def _start_stream(self) -> web.StreamResponse:
        if self.stream is None:
            stream = web.StreamResponse(status=200, headers={**SSE_HEADERS, **self.headers})
            await stream.prepare(self.http_request)
            self.stream = stream
            if self.log is not None:
                await self._write(f"id: {self.log.event_id(0)}\nretry: {RETRY_MS}\ndata: \n\n".encode())
        return self.stream

    async def _write(self, data: bytes) -> None:
        if self._detached or self.stream is None:
            return
        try:
            await self.stream.write(data)
        except (ConnectionError, RuntimeError):
            if self.log is None:
                raise
            self._detached = True  # a dropped legacy stream is not a cancellation: the log keeps events

    async def _emit(self, wire: bytes) -> None:
        if not self.can_stream:
            return  # recorded, but this agent takes a single JSON answer only
        async with self._lock:
            await self._start_stream()
            if self.log is not None:
                event_id = self.log.append(wire)
                await self._write(b"id: " + event_id.encode() + b"\n" + sse_event(wire))
            else:
                await self._write(sse_event(wire))

    async def upstream_paused(self) -> None:
        """The upstream closed its stream mid-call to be polled (SEP-1699): close ours the same way.

        The call goes on; the agent resumes with GET and `Last-Event-ID` and gets the rest from the log.
        """
        if self.log is None or self._detached:
            return
        async with self._lock:
            stream = await self._start_stream()
            self._detached = True
            with contextlib.suppress(ConnectionError, RuntimeError):
                await stream.write_eof()

    def open_soon(self, delay_s: float) -> None:
        """Open a resumable stream (priming event first) if the call is still running after `delay_s`.

        Not at once: until the call's first events are durable, a refusal can still be a plain 503.
        """
        if self.log is None:
            return
        loop = asyncio.get_running_loop()
        self._opener = loop.call_later(delay_s, lambda: asyncio.ensure_future(self._open_early()))

    async def _open_early(self) -> None:
        async with self._lock:
            if self.stream is None and self.log is not None and not self.log.done:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await self._start_stream()

    async def finish(self, reply: Reply) -> web.StreamResponse:
        wire = orjson.dumps(reply.body)
        await self.recorder.agent_sent(self.ctx, reply.body, wire, outcome=reply.outcome, detail=reply.detail)
        if self._opener is not None:
            self._opener.cancel()
        if self.stream is not None or self.log is not None:
            await self._emit(wire)
            if self.log is not None:
                self.log.close()
            async with self._lock:
                stream = await self._start_stream()
                if not self._detached:
                    with contextlib.suppress(ConnectionError, RuntimeError):
                        await stream.write_eof()
            return stream
        status = reply.http_status
        if self.ctx.era == "modern" and status == 200:
            code = error_code_of(reply.body)
            if code is not None:
                status = MODERN_ERROR_STATUS.get(code, 200)
        if not self.headers:  # the usual answer: its headers copied from a ready-made map
            return web.Response(body=wire, status=status, headers=_JSON_HEADERS)
        return web.Response(body=wire, status=status, content_type="application/json", headers=self.headers)

    async def abort(self, body: JsonObject) -> web.StreamResponse:
        """End a started stream with an error that could not be recorded (the audit log is down)."""
        assert self.stream is not None
        async with self._lock:
            await self._write(sse_event(orjson.dumps(body)))
            if not self._detached:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await self.stream.write_eof()
        if self.log is not None:
            self.log.close()
        return self.stream

    async def cancelled(self) -> web.StreamResponse:
        """The agent cancelled the call: end the response without an answer, as the spec asks."""
        await self.recorder.flush(self.ctx)
        stream = await self._start_stream()
        if self.log is not None:
            self.log.close()
        await stream.write_eof()
        return stream


class SessionStreamChannel(AgentChannel):
    """Legacy HTTP+SSE: every message for the agent goes down the session's SSE connection."""

    def __init__(self, recorder: Recorder, ctx: CallContext, session: AgentSession, answer_timeout_s: float) -> None:
        super().__init__(recorder, ctx, session, answer_timeout_s)
        self._session = session

    async def _emit(self, wire: bytes) -> None:
        self._session.push(wire)

    async def finish(self, reply: Reply) -> Any:
        wire = orjson.dumps(reply.body)
        await self.recorder.agent_sent(self.ctx, reply.body, wire, outcome=reply.outcome, detail=reply.detail)
        self._session.push(wire)
