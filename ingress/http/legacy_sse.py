"""The deprecated HTTP+SSE transport (2024-11-05) for old agents: GET /sse, POST /messages.

The SSE connection is the session: it opens with an `endpoint` event naming where to POST, every
answer travels back on it, and closing it ends the session. A block applied while it is open ends
it, and with it the session (`ingress.block_cutoff`). A blocked caller may still connect: this
stream is where the -32012 refusals of its requests, naming the decision, reach it (an HTTP error
on connect would hide them); nothing else is pushed to it while the block lasts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import orjson
from aiohttp import web
from mcp_types import INVALID_REQUEST

from ingress.errors import AUDIT_UNAVAILABLE, SESSION_LIMIT
from ingress.gateway import Gateway
from ingress.http.admission import admit, base_context, read_body, refuse
from ingress.http.channel import SSE_HEADERS, SessionStreamChannel, pump
from ingress.jsonrpc import Invalid, error_body, parse_message
from ingress.sessions import AgentSession, SessionLimitReached
from ingress.sink import SinkUnavailable
from schemas.events import EventType, Outcome

log = logging.getLogger("mcpgw.http.sse")


class LegacySseEndpoint:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._tasks: set[asyncio.Task[None]] = set()

    def _target(self, request: web.Request) -> str | None:
        target = request.match_info.get("server", "")
        return target if not target or target in self.gateway.upstreams else None

    async def connect(self, request: web.Request) -> web.StreamResponse:
        gateway = self.gateway
        ctx = base_context(request, "sse")
        admitted = await admit(gateway, request, ctx)
        if isinstance(admitted, web.Response):
            return admitted
        target = self._target(request)
        if target is None:
            return await refuse(gateway, ctx, 404, INVALID_REQUEST,
                                f"no server named {request.match_info.get('server')!r}", Outcome.REFUSED)
        try:
            session = gateway.sessions.open(ctx.principal, ctx.tenant, target, "sse")
        except SessionLimitReached as exc:
            return await refuse(gateway, ctx, 503, SESSION_LIMIT, f"{exc}; retry later", Outcome.REFUSED)
        ctx.session_id = session.id
        ctx.era = "legacy"
        prefix = f"/servers/{target}" if target else ""
        stream = web.StreamResponse(status=200, headers=SSE_HEADERS)
        await stream.prepare(request)
        outbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        session.streams.append(outbox)
        await gateway.recorder.lifecycle(EventType.SESSION_OPENED, ctx, detail="HTTP+SSE connection", server=target)
        try:
            await stream.write(f"event: endpoint\ndata: {prefix}/messages?sessionId={session.id}\n\n".encode())
            await pump(stream, outbox)
        except ConnectionError:
            pass
        finally:
            with contextlib.suppress(ValueError):
                session.streams.remove(outbox)
            await gateway.close_session(session, "SSE connection closed")
        return stream

    async def message(self, request: web.Request) -> web.StreamResponse:
        gateway = self.gateway
        ctx = base_context(request, "sse")
        admitted = await admit(gateway, request, ctx)
        if isinstance(admitted, web.Response):
            return admitted
        target = self._target(request)
        if target is None:
            return await refuse(gateway, ctx, 404, INVALID_REQUEST,
                                f"no server named {request.match_info.get('server')!r}", Outcome.REFUSED)
        session = gateway.sessions.get(request.query.get("sessionId", ""), ctx.principal, target)
        if session is None:
            return await refuse(gateway, ctx, 404, INVALID_REQUEST,
                                "Session not found: open GET /sse first and POST to the endpoint it names",
                                Outcome.REFUSED)
        ctx.session_id = session.id
        ctx.era = "legacy"
        ctx.protocol_version = session.protocol_version
        data = await read_body(gateway, request, ctx)
        if isinstance(data, web.Response):
            return data
        msg = parse_message(data)
        if isinstance(msg, Invalid):
            return await refuse(gateway, ctx, 400, msg.code, msg.message, Outcome.REFUSED, data, msg_id=msg.id)
        ctx.method = msg.method
        if msg.is_response:
            waiter = session.awaiting.get(str(msg.id))
            if waiter is None or waiter.done():
                return await refuse(gateway, ctx, 400, INVALID_REQUEST, "no server-to-client request awaits this "
                                    "answer", Outcome.REFUSED, data, msg.body)
            waiter.set_result((msg.body, data))
            return web.Response(status=202)
        gateway.recorder.agent_received(ctx, msg.body, data)
        try:
            if msg.is_notification:
                await gateway.dispatcher.notification(msg, ctx, target, session)
                await gateway.recorder.flush(ctx)
                return web.Response(status=202)
        except SinkUnavailable as exc:
            return web.Response(status=503, text=f"the audit log cannot record this message: {exc}")
        channel = SessionStreamChannel(gateway.recorder, ctx, session, gateway.config.limits.request_timeout_s)
        ctx.handler = channel

        async def run() -> None:
            try:
                reply = await gateway.dispatcher.request(msg, ctx, target, session)
                await channel.finish(reply)
            except asyncio.CancelledError:
                await gateway.recorder.flush(ctx)
            except SinkUnavailable as exc:
                log.error("audit sink unavailable, refusing %s: %s", msg.method, exc)
                session.push(orjson.dumps(error_body(msg.id, AUDIT_UNAVAILABLE,
                                                     f"the audit log cannot record this call, so it was not made: "
                                                     f"{exc}; retry later")))
            finally:
                session.inflight.pop(msg.id, None)

        task = asyncio.ensure_future(run())
        session.inflight[msg.id] = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return web.Response(status=202)

    def sessions_of(self, session: AgentSession) -> int:
        return len(session.inflight)
