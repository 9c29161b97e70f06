"""Streamable HTTP for agents: POST on `/mcp` and `/servers/{name}/mcp` (GET and DELETE: session_streams).

One endpoint serves both eras. A legacy agent initializes, receives an `Mcp-Session-Id`, and may
hold a GET stream for unsolicited messages; a modern agent sends self-describing requests and
opens `subscriptions/listen` streams for change notifications.
"""

from __future__ import annotations

import asyncio
import logging

import orjson
from aiohttp import web
from mcp_types import INVALID_REQUEST

from ingress import eras
from ingress.auth import Identity
from ingress.dispatch import Reply
from ingress.errors import AUDIT_UNAVAILABLE, SESSION_LIMIT
from ingress.gateway import Gateway
from ingress.http.admission import SESSION_HEADER, admit, base_context, read_body, refuse, target_of, unknown_server
from ingress.http.channel import PostChannel
from ingress.http.held_request import may_hold, request_held
from ingress.http.listen import listen, passes_listen
from ingress.jsonrpc import Invalid, JsonObject, Message, error_body, parse_message
from ingress.mrtr import MRTR_METHODS
from ingress.routing import Route
from ingress.sessions import AgentSession, SessionLimitReached
from ingress.sink import SinkUnavailable
from ingress.upstreams.base import CallContext
from ingress.upstreams.mcp_headers import tool_param_headers
from schemas.events import EventType, Outcome

log = logging.getLogger("mcpgw.http")

RESUMABLE_VERSIONS = frozenset({"2025-11-25"})
PRIMING_DELAY_S = 0.5  # a call still running after this gets its resumable stream opened


class McpEndpoint:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    # -- POST ---------------------------------------------------------------------------------------

    async def post(self, request: web.Request) -> web.StreamResponse:
        gateway = self.gateway
        ctx = base_context(request, "streamable_http")
        admitted = await admit(gateway, request, ctx)
        # Checks against the concrete types: isinstance(x, web.Response) goes through ABCMeta
        # (web.StreamResponse is a MutableMapping), which costs a microsecond per call.
        if not isinstance(admitted, Identity):
            return admitted
        target = target_of(gateway, request)
        if target is None:
            return await unknown_server(gateway, request, ctx)
        ctx.server = target
        data = await read_body(gateway, request, ctx)
        if not isinstance(data, bytes):
            return data
        msg = parse_message(data)
        if isinstance(msg, Invalid):
            return await refuse(gateway, ctx, 400, msg.code, msg.message, Outcome.REFUSED, data, msg_id=msg.id)
        session_id = request.headers.get(SESSION_HEADER)
        detected = eras.detect(msg, request.headers, has_session=bool(session_id))
        if isinstance(detected, eras.Rejection):
            return await refuse(gateway, ctx, detected.status, detected.code, detected.message, Outcome.REFUSED,
                                data, msg.body, msg.id, data=detected.data)
        if detected.era == "modern" and msg.method == "tools/call":
            try:
                mismatch = await self._check_param_headers(msg, request, target)
            except SinkUnavailable as exc:  # the catalog fetch it needed could not be recorded
                return web.Response(status=503, body=orjson.dumps(_audit_unavailable(msg, exc)),
                                    content_type="application/json")
            if mismatch is not None:
                return await refuse(gateway, ctx, mismatch.status, mismatch.code, mismatch.message, Outcome.REFUSED,
                                    data, msg.body, msg.id)
        ctx.era = detected.era
        ctx.protocol_version = detected.version
        ctx.method = msg.method
        session: AgentSession | None = None
        if detected.era == "modern":
            meta = msg.meta
            caps = meta.get(eras.META_CAPABILITIES)
            ctx.client_capabilities = caps if isinstance(caps, dict) else {}
            info = meta.get(eras.META_CLIENT_INFO)
            ctx.client_info = info if isinstance(info, dict) else None
            level = meta.get(eras.META_LOG_LEVEL)
            ctx.log_level = level if isinstance(level, str) else None
            ctx.mirror_headers = _mirrored(request, msg.method)
        elif detected.handshake:
            if not msg.is_request:
                return await refuse(gateway, ctx, 400, INVALID_REQUEST, "initialize must be a request (with an id)",
                                    Outcome.REFUSED, data, msg.body)
            try:
                session = gateway.sessions.open(ctx.principal, ctx.tenant, target, "streamable_http")
            except SessionLimitReached as exc:
                return await refuse(gateway, ctx, 503, SESSION_LIMIT, f"{exc}; retry later", Outcome.REFUSED,
                                    data, msg.body, msg.id)
            ctx.session_id = session.id
        else:
            assert session_id is not None
            session = gateway.sessions.get(session_id, ctx.principal, target)
            if session is None:
                return await refuse(gateway, ctx, 404, INVALID_REQUEST,
                                    "Session not found: it expired or was closed; send initialize again",
                                    Outcome.REFUSED, data, msg.body, msg.id)
            ctx.session_id = session.id
            ctx.protocol_version = session.protocol_version or ctx.protocol_version
            ctx.log_level = session.log_level
        gateway.recorder.agent_received(ctx, msg.body, data)
        try:
            if msg.is_response:
                return await self._agent_answer(msg, ctx, session)
            if msg.is_notification:
                await gateway.dispatcher.notification(msg, ctx, target, session)
                await gateway.recorder.flush(ctx)
                return web.Response(status=202)
            if (msg.method == "subscriptions/listen" and detected.era == "modern"
                    and not passes_listen(gateway, target)
                    and gateway.dispatcher.caller_blocked(ctx) is None):  # a blocked caller gets its refusal below
                return await listen(gateway, request, msg, ctx, target)
            return await self._request(request, msg, ctx, target, session, detected.handshake)
        except SinkUnavailable as exc:
            return web.Response(status=503, body=orjson.dumps(_audit_unavailable(msg, exc)),
                                content_type="application/json")

    async def _request(self, request: web.Request, msg: Message, ctx: CallContext, target: str,
                       session: AgentSession | None, handshake: bool) -> web.StreamResponse:
        gateway = self.gateway
        if ctx.era == "modern" and msg.method in MRTR_METHODS and may_hold(gateway, msg, target):
            return await request_held(gateway, request, msg, ctx, target)
        headers = {SESSION_HEADER: session.id} if handshake and session is not None else None
        # Like the SDK's servers, answer a 2025-11-25 session's requests on resumable SSE streams.
        resumable = session is not None and not handshake and session.protocol_version in RESUMABLE_VERSIONS
        channel = PostChannel(request, gateway.recorder, ctx, session, gateway.config.limits.request_timeout_s,
                              headers, resumable)
        ctx.handler = channel
        if session is None:
            try:
                reply = await gateway.dispatcher.request(msg, ctx, target, session)
            finally:
                ctx.handler = None
            return await channel.finish(reply)

        async def run() -> web.StreamResponse:
            assert session is not None
            try:
                reply = await gateway.dispatcher.request(msg, ctx, target, session)
                if handshake:
                    await gateway.recorder.lifecycle(EventType.SESSION_OPENED, ctx, server=target,
                                                     detail=f"protocol {session.protocol_version}")
                return await channel.finish(reply)
            except asyncio.CancelledError:
                return await channel.cancelled()  # notifications/cancelled from the agent
            except SinkUnavailable as exc:
                if handshake:
                    gateway.sessions.close(session.id)  # never recorded as opened: it must not linger
                if channel.stream is None:
                    raise  # answered as a plain 503 below
                return await channel.abort(_audit_unavailable(msg, exc))
            finally:
                session.inflight.pop(msg.id, None)
                ctx.handler = None

        channel.open_soon(PRIMING_DELAY_S)
        # A legacy agent's dropped connection is not a cancellation (only notifications/cancelled
        # is), so the call runs on its own and a resumable stream keeps its events for GET.
        task = asyncio.ensure_future(run())
        session.inflight[msg.id] = task
        return await asyncio.shield(task)

    async def _agent_answer(self, msg: Message, ctx: CallContext, session: AgentSession | None) -> web.Response:
        ctx.deferred.clear()  # recorded once: by the call that asked, or as a refusal below
        waiter = session.awaiting.get(str(msg.id)) if session is not None else None
        if waiter is None or waiter.done():
            await self.gateway.recorder.refused(ctx, msg.body, msg.dumps(), INVALID_REQUEST,
                                                "no server-to-client request awaits this answer", Outcome.REFUSED)
            return web.Response(status=202)
        waiter.set_result((msg.body, msg.dumps()))
        return web.Response(status=202)

    async def _check_param_headers(self, msg: Message, request: web.Request, target: str) -> eras.Rejection | None:
        name = msg.params.get("name")
        if not isinstance(name, str):
            return None
        catalog = self.gateway.catalog
        if target:
            server, tool_name = target, name
        else:
            routed = catalog.cached_route("tool", name) or await catalog.route("tool", name)
            if not isinstance(routed, Route):
                return None  # dispatch answers the unknown tool
            server, tool_name = routed.server, routed.name
        specs = catalog.header_specs(server, tool_name)  # cached per listing: most tools have none
        if specs is None:  # not listed yet, or the list is stale: fetch it, as the call itself would
            tools = await catalog.server_list(server, "tools/list") or []
            tool = next((t for t in tools if t.get("name") == tool_name), None)
            specs = (tool_param_headers(tool) or []) if tool is not None else []
        if not specs:
            return None
        return eras.check_param_specs(specs, msg.params.get("arguments"), request.headers)


def _audit_unavailable(msg: Message, exc: Exception) -> JsonObject:
    """The answer when the audit log cannot record: it goes out unrecorded, since nothing was done."""
    log.error("audit sink unavailable, refusing %s: %s", msg.method, exc)
    return error_body(msg.id, AUDIT_UNAVAILABLE,
                      f"the audit log cannot record this call, so it was not made: {exc}; retry later")


def _mirrored(request: web.Request, method: str) -> dict[str, str] | None:
    """Metadata headers to relay to a modern upstream (the connector recomputes the ones it knows)."""
    headers = request.headers
    # Most requests carry no Mcp-Param-* header: one lowercased join of the names (a name cannot
    # hold a newline) rules them out at a quarter of the cost of lowercasing each name.
    if "\nmcp-param-" in ("\n" + "\n".join(headers)).lower():
        mirrored = {k: v for k, v in headers.items() if k.lower().startswith("mcp-param-")}
    else:
        mirrored = {}
    name = headers.get("Mcp-Name")
    if name is not None and method not in eras.NAMED_METHODS:
        mirrored["Mcp-Name"] = name
    return mirrored or None


__all__ = ["SESSION_HEADER", "McpEndpoint", "Reply"]
