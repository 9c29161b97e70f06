"""Streamable HTTP for agents: POST, GET and DELETE on `/mcp` and `/servers/{name}/mcp`.

One endpoint serves both eras. A legacy agent initializes, receives an `Mcp-Session-Id`, and may
hold a GET stream for unsolicited messages; a modern agent sends self-describing requests and
opens `subscriptions/listen` streams for change notifications.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import orjson
from aiohttp import web
from mcp_types import INVALID_PARAMS, INVALID_REQUEST

from ingress import eras
from ingress.auth import Identity
from ingress.dispatch import Reply
from ingress.errors import AUDIT_UNAVAILABLE, SESSION_LIMIT
from ingress.gateway import Gateway, Listener
from ingress.http.admission import admit, base_context, read_body, refuse
from ingress.http.channel import RETRY_MS, SSE_HEADERS, PostChannel, sse_event
from ingress.jsonrpc import Invalid, JsonObject, Message, error_body, parse_message, result_body
from ingress.mrtr import EXPIRED, MRTR_METHODS, STATE_PREFIX, HeldCall, input_required, next_outcome, params_digest
from ingress.routing import Route
from ingress.sessions import AgentSession, SessionLimitReached
from ingress.sink import SinkUnavailable
from ingress.upstreams.base import CallContext
from ingress.upstreams.mcp_headers import tool_param_headers
from schemas.events import EventType, Outcome

log = logging.getLogger("mcpgw.http")

SESSION_HEADER = "Mcp-Session-Id"
RESUMABLE_VERSIONS = frozenset({"2025-11-25"})
PRIMING_DELAY_S = 0.5  # a call still running after this gets its resumable stream opened
KEEPALIVE_S = 15.0
_LIST_OF = {"tools/call": "tools/list", "prompts/get": "prompts/list"}  # the catalog list that routes a call


class McpEndpoint:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def _target(self, request: web.Request) -> str | None:
        target = request.match_info.get("server", "")
        return target if not target or target in self.gateway.upstreams else None

    async def _unknown_server(self, request: web.Request, ctx: CallContext) -> web.Response:
        name = request.match_info.get("server", "")
        known = ", ".join(self.gateway.upstreams) or "none"
        return await refuse(self.gateway, ctx, 404, INVALID_REQUEST, f"no server named {name!r} (configured: {known})",
                            Outcome.REFUSED)

    # -- POST ---------------------------------------------------------------------------------------

    async def post(self, request: web.Request) -> web.StreamResponse:
        gateway = self.gateway
        ctx = base_context(request, "streamable_http")
        admitted = await admit(gateway, request, ctx)
        # Checks against the concrete types: isinstance(x, web.Response) goes through ABCMeta
        # (web.StreamResponse is a MutableMapping), which costs a microsecond per call.
        if not isinstance(admitted, Identity):
            return admitted
        target = self._target(request)
        if target is None:
            return await self._unknown_server(request, ctx)
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
            if msg.method == "subscriptions/listen" and detected.era == "modern" and not self._passes_listen(target) \
                    and gateway.dispatcher.caller_blocked(ctx) is None:  # a blocked caller gets its refusal below
                return await self._listen(request, msg, ctx, target)
            return await self._request(request, msg, ctx, target, session, detected.handshake)
        except SinkUnavailable as exc:
            return web.Response(status=503, body=orjson.dumps(_audit_unavailable(msg, exc)),
                                content_type="application/json")

    async def _request(self, request: web.Request, msg: Message, ctx: CallContext, target: str,
                       session: AgentSession | None, handshake: bool) -> web.StreamResponse:
        gateway = self.gateway
        if ctx.era == "modern" and msg.method in MRTR_METHODS and self._may_hold(msg, target):
            return await self._request_mrtr(request, msg, ctx, target)
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

    def _may_hold(self, msg: Message, target: str) -> bool:
        """Whether a modern agent's call must run held: a retry with the gateway's `requestState`, or a
        call routed to an upstream that may ask the agent mid-call (legacy era, or not known yet).

        A modern upstream never asks mid-call (it answers `input_required` itself, which goes through
        as is), so its calls skip the held task, its wake-ups and the params digest.
        """
        state = msg.params.get("requestState")
        if isinstance(state, str) and state.startswith(STATE_PREFIX):
            return True
        server = target
        if not server:
            owners = self.gateway.catalog.cached_owners(_LIST_OF.get(msg.method, ""))
            name = msg.params.get("name")
            owner = owners.get(name) if owners is not None and isinstance(name, str) else None
            if owner is None:
                return True  # not routed from the cache (resources, unknown names): run held to be safe
            server = owner[0]
        upstream = self.gateway.upstreams.get(server)
        info = upstream.info if upstream is not None else None
        return info is None or info.era != "modern"

    async def _request_mrtr(self, request: web.Request, msg: Message, ctx: CallContext,
                            target: str) -> web.StreamResponse:
        """A call that may need the agent's input: run it held, answer input_required if it asks."""
        gateway = self.gateway
        timeout = gateway.config.limits.request_timeout_s
        state = msg.params.get("requestState")
        ask_again: list[str] = []
        if isinstance(state, str) and state.startswith(STATE_PREFIX):
            held = gateway.held_calls.find(state, ctx.principal, msg.method, params_digest(msg.params))
            responses = msg.params.get("inputResponses", {})
            if held is None or held.busy or not isinstance(responses, dict):
                problem = ("requestState is unknown, expired, altered, or was issued for another request; call "
                           "again without it" if held is None else
                           "another retry with this requestState is in progress" if held.busy else
                           "inputResponses must be an object")
                ctx.deferred.clear()
                return await refuse(gateway, ctx, 400, INVALID_PARAMS, problem, Outcome.REFUSED, msg.dumps(),
                                    msg.body, msg.id)
            held.ctx.deferred.extend(ctx.deferred)
            ctx.deferred.clear()
            channel = PostChannel(request, gateway.recorder, held.ctx, None, timeout)
            held.ctx.handler = channel
            held.answer(responses)
            ask_again = [k for k in held.unanswered() if k not in held.fresh]
        else:
            held = HeldCall(ctx.principal, msg.method, ctx, params_digest(msg.params))
            channel = PostChannel(request, gateway.recorder, ctx, None, timeout)
            ctx.handler = channel
            held.run(asyncio.ensure_future(gateway.dispatcher.request(msg, ctx, target, None)))
        channel.held = held
        held.busy = True
        try:
            outcome = None if ask_again else await next_outcome(held)
        except asyncio.CancelledError:
            gateway.held_calls.drop(held)  # the agent closed the stream: that cancels the call
            raise
        finally:
            held.busy = False
        if outcome is EXPIRED:
            return await channel.finish(Reply(error_body(msg.id, INVALID_PARAMS, "the held call expired before "
                                                         "this retry; call again without requestState"),
                                              Outcome.TIMEOUT))
        if outcome is None:
            keys = ask_again + held.fresh
            held.fresh.clear()
            result = input_required(held, gateway.held_calls.register(held), keys)
            return await channel.finish(Reply(result_body(msg.id, result)))
        gateway.held_calls.drop(held)
        channel.held = None  # the call is over: break the held call <-> channel cycle for the GC
        held.ctx.handler = None
        reply: Reply = outcome
        reply.body["id"] = msg.id
        return await channel.finish(reply)

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
            routed = await catalog.route("tool", name)
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

    def _passes_listen(self, target: str) -> bool:
        """A modern upstream on its own endpoint runs its own subscriptions: relay its stream as is."""
        upstream = self.gateway.upstreams.get(target) if target else None
        return upstream is not None and upstream.info is not None and upstream.info.era == "modern"

    async def _listen(self, request: web.Request, msg: Message, ctx: CallContext, target: str) -> web.StreamResponse:
        gateway = self.gateway
        wants = msg.params.get("notifications")
        wants = wants if isinstance(wants, dict) else {}
        listener = Listener(msg.id, target, ctx, wants)
        accepted = {k: v for k, v in wants.items()
                    if k in ("toolsListChanged", "promptsListChanged", "resourcesListChanged",
                             "resourceSubscriptions")}
        ack = {"jsonrpc": "2.0", "method": "notifications/subscriptions/acknowledged",
               "params": {"_meta": {eras.META_SUBSCRIPTION_ID: msg.id}, "notifications": accepted}}
        ack_wire = orjson.dumps(ack)
        uris = wants.get("resourceSubscriptions")
        # Upstream subscriptions first: a change right after the ack must already reach us.
        gateway.listeners.add(listener)
        subscribed = await gateway.subscribe_resources(
            [u for u in uris if isinstance(u, str)] if isinstance(uris, list) else [], target)
        try:
            await gateway.recorder.agent_sent(ctx, ack, ack_wire, final=False)
            stream = web.StreamResponse(status=200, headers=SSE_HEADERS)
            await stream.prepare(request)
            await stream.write(sse_event(ack_wire))
            await _pump(stream, listener.outbox)
            # The gateway is ending the subscription: close it gracefully with a result.
            done = {"jsonrpc": "2.0", "id": msg.id, "result": {
                "resultType": "complete", "_meta": {eras.META_SUBSCRIPTION_ID: msg.id}}}
            wire = orjson.dumps(done)
            await gateway.recorder.agent_sent(ctx, done, wire)
            with contextlib.suppress(ConnectionError):
                await stream.write(sse_event(wire))
                await stream.write_eof()
        finally:
            gateway.listeners.discard(listener)
            await asyncio.shield(gateway.unsubscribe_resources(subscribed))
        return stream

    # -- GET and DELETE (legacy sessions) ---------------------------------------------------------------

    async def _session_of(self, request: web.Request, ctx: CallContext) -> AgentSession | web.Response:
        gateway = self.gateway
        admitted = await admit(gateway, request, ctx)
        if isinstance(admitted, web.Response):
            return admitted
        target = self._target(request)
        if target is None:
            return await self._unknown_server(request, ctx)
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
            await _pump(stream, outbox)
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


def _audit_unavailable(msg: Message, exc: Exception) -> JsonObject:
    """The answer when the audit log cannot record: it goes out unrecorded, since nothing was done."""
    log.error("audit sink unavailable, refusing %s: %s", msg.method, exc)
    return error_body(msg.id, AUDIT_UNAVAILABLE,
                      f"the audit log cannot record this call, so it was not made: {exc}; retry later")


def _mirrored(request: web.Request, method: str) -> dict[str, str] | None:
    """Metadata headers to relay to a modern upstream (the connector recomputes the ones it knows)."""
    mirrored = {k: v for k, v in request.headers.items() if k.lower().startswith("mcp-param-")}
    name = request.headers.get("Mcp-Name")
    if name is not None and method not in eras.NAMED_METHODS:
        mirrored["Mcp-Name"] = name
    return mirrored or None


async def _pump(stream: web.StreamResponse, outbox: asyncio.Queue[bytes | None]) -> None:
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


__all__ = ["McpEndpoint", "Reply"]
