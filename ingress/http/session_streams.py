"""GET and DELETE on the MCP endpoints: a 2025-11-25 session's standalone stream, its resumption, its end.

A blocked caller's GET (a new stream or a resumption) is refused with HTTP 403 and the JSON-RPC
error -32012 naming the decision, recorded as `message_refused` with outcome `blocked`, like its
other messages; a block applied while the stream is open ends it (`ingress.block_cutoff`).
DELETE passes: ending a session only stops work.
"""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import web
from mcp_types import INVALID_REQUEST

from ingress import errors
from ingress.blocklist import refusal
from ingress.gateway import Gateway
from ingress.http.admission import SESSION_HEADER, admit, base_context, refuse, target_of, unknown_server
from ingress.http.channel import RETRY_MS, SSE_HEADERS, pump, sse_event
from ingress.sessions import AgentSession
from ingress.upstreams.base import CallContext
from schemas.events import Outcome


class SessionStreams:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway


    async def _session_of(self, request: web.Request, ctx: CallContext) -> AgentSession | web.Response:
        gateway = self.gateway
        admitted = await admit(gateway, request, ctx)
        if isinstance(admitted, web.Response):
            return admitted
        target = target_of(gateway, request)
        if target is None:
            return await unknown_server(gateway, request, ctx)
        session_id = request.headers.get(SESSION_HEADER)
        if not session_id:
            return await refuse(gateway, ctx, 405, INVALID_REQUEST,
                                f"Method Not Allowed: {request.method} needs an {SESSION_HEADER} (2025-11-25 and "
                                "earlier); protocol 2026-07-28 uses POST subscriptions/listen instead",
                                Outcome.REFUSED, headers={"Allow": "POST"})
        session = gateway.sessions.get(session_id, ctx.principal, target)
        if session is None:
            return await refuse(gateway, ctx, 404, INVALID_REQUEST, "Session not found", Outcome.REFUSED)
        ctx.session_id = session.id
        ctx.era = "legacy"
        ctx.protocol_version = session.protocol_version
        return session

    async def get(self, request: web.Request) -> web.StreamResponse:
        ctx = base_context(request, "streamable_http")
        session = await self._session_of(request, ctx)
        if isinstance(session, web.Response):
            return session
        if "text/event-stream" not in request.headers.get("Accept", "text/event-stream"):
            return web.Response(status=406, text="Not Acceptable: GET streams are text/event-stream")
        decision = self.gateway.cutoff.blocking(ctx.principal, ctx.tenant, session.id)
        if decision is not None:
            message, data = refusal(decision)
            return await refuse(self.gateway, ctx, 403, errors.BLOCKED, message, Outcome.BLOCKED, data=data)
        last_event_id = request.headers.get("Last-Event-ID")
        if last_event_id:
            return await self._resume(request, session, last_event_id)
        if session.streams:
            return await refuse(self.gateway, ctx, 409, INVALID_REQUEST,
                                "Conflict: this session already has a GET stream open", Outcome.REFUSED)
        stream = web.StreamResponse(status=200, headers={**SSE_HEADERS, SESSION_HEADER: session.id})
        await stream.prepare(request)
        outbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        session.streams.append(outbox)
        try:
            await pump(stream, outbox)
        finally:
            with contextlib.suppress(ValueError):
                session.streams.remove(outbox)
        return stream

    async def _resume(self, request: web.Request, session: AgentSession, last_event_id: str) -> web.StreamResponse:
        """Replay a dropped POST stream after `Last-Event-ID`, then follow it to its end."""
        point = session.resume_point(last_event_id)
        if point is None:
            return web.Response(status=404, text=f"no stream to resume at event {last_event_id!r}")
        log, position = point
        stream = web.StreamResponse(status=200, headers={**SSE_HEADERS, SESSION_HEADER: session.id})
        await stream.prepare(request)
        await stream.write(f"id: {log.event_id(position)}\nretry: {RETRY_MS}\ndata: \n\n".encode())
        while True:
            log.changed.clear()
            while position < len(log.events):
                data = log.events[position]
                position += 1
                await stream.write(f"id: {log.event_id(position)}\n".encode() + sse_event(data))
            if log.done:
                break
            await log.changed.wait()
        await stream.write_eof()
        return stream

    async def delete(self, request: web.Request) -> web.StreamResponse:
        ctx = base_context(request, "streamable_http")
        session = await self._session_of(request, ctx)
        if isinstance(session, web.Response):
            return session
        await self.gateway.close_session(session, "closed by the agent (DELETE)")
        return web.Response(status=200)
