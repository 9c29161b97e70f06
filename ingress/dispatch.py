"""What the gateway does with each agent message, per method and per endpoint.

The aggregated endpoint (`target == ""`) answers the handshake and list methods itself, from the
catalog, and routes calls to the owning upstream under its own name (`ingress.aggregate_handlers`).
A per-server endpoint (`target == "time"`) forwards everything to that one upstream
(`ingress.forwarding`) and answers the handshake with the upstream's own identity, so an agent
cannot tell it from the server itself. Between eras the envelope is translated
(`ingress.era_translation`).
"""

from __future__ import annotations

import logging

from ingress import errors
from ingress.aggregate import LIST_METHODS
from ingress.aggregate_handlers import AGGREGATE_CAPABILITIES, GATEWAY_SERVER_INFO, AggregateHandlers
from ingress.blocklist import refusal
from ingress.era_translation import legacy_answer, modernize
from ingress.jsonrpc import Message, result_body
from ingress.list_visibility import visible_answer, withheld_detail
from ingress.replies import Reply, blocked_reply
from ingress.sessions import AgentSession
from ingress.upstreams.base import CallContext
from ingress.upstreams.errors import UpstreamError
from schemas.decisions import Decision
from schemas.events import Outcome

__all__ = ["AGGREGATE_CAPABILITIES", "GATEWAY_SERVER_INFO", "Dispatcher", "Reply"]

log = logging.getLogger("mcpgw.dispatch")

# Methods 2026-07-28 removed: a modern agent gets "method not found" (HTTP 404) for them.
REMOVED_IN_MODERN = frozenset({"initialize", "ping", "logging/setLevel", "resources/subscribe",
                               "resources/unsubscribe"})


class Dispatcher(AggregateHandlers):
    # -- entry points --------------------------------------------------------------------------

    async def request(self, msg: Message, ctx: CallContext, target: str, session: AgentSession | None) -> Reply:
        ctx.method = msg.method
        if self.blocklist.size:
            decision = self.caller_blocked(ctx)
            if decision is not None:
                return blocked_reply(msg.id, decision)
        if ctx.era == "modern" and msg.method in REMOVED_IN_MODERN:
            return self._unknown_method(msg, ctx)
        if target:
            reply = await self._single(msg, ctx, target, session)
        else:
            handler = self._aggregate.get(msg.method)
            if handler is None:
                reply = self._unknown_method(msg, ctx)
            else:
                reply = await handler(msg, ctx, session)
        if ctx.era == "modern":
            modernize(msg.method, reply.body, self._server_info, target, int(self.catalog.ttl_s * 1000))
        else:
            legacy_answer(reply.body)
        return reply

    def caller_blocked(self, ctx: CallContext) -> Decision | None:
        """The block on this caller (principal, session or tenant), for paths that do not come through `request`."""
        if not self.blocklist.size:
            return None
        return self.blocklist.match_caller(ctx.principal, ctx.tenant, ctx.session_id, self.clock())

    async def notification(self, msg: Message, ctx: CallContext, target: str, session: AgentSession | None) -> None:
        ctx.method = msg.method
        # A cancellation only stops work, so it passes even when the caller is blocked.
        if self.blocklist.size and msg.method != "notifications/cancelled":
            decision = self.caller_blocked(ctx)
            if decision is not None:
                if self.recorder is not None:
                    message, _ = refusal(decision)
                    await self.recorder.refused(ctx, msg.body, b"", errors.BLOCKED, message, Outcome.BLOCKED)
                return
        if msg.method == "notifications/initialized":
            if session is not None:
                session.initialized = True
            return
        if msg.method == "notifications/cancelled":
            request_id = msg.params.get("requestId")
            if session is not None:
                task = session.inflight.get(request_id)
                if task is not None:
                    task.cancel()  # the connector cancels the call upstream
            return
        servers = [target] if target else [
            name for name, up in self._upstreams().items() if up.info is not None and up.info.era == "legacy"
        ] if msg.method == "notifications/roots/list_changed" else []
        for server in servers:
            upstream = self._upstreams().get(server)
            if upstream is None:
                continue
            try:
                ctx.server = server
                await upstream.notify(self._for_upstream(msg.body, upstream), ctx)
            except UpstreamError as exc:
                log.info("notification %s not delivered to %s: %s", msg.method, server, exc)

    # -- one upstream ----------------------------------------------------------------------------------

    async def _single(self, msg: Message, ctx: CallContext, target: str, session: AgentSession | None) -> Reply:
        if msg.method == "initialize":
            return await self._initialize(msg, ctx, session, target)
        if msg.method == "server/discover":
            return await self._discover(msg, ctx, session, target)
        if msg.method == "ping":
            return await self._ping(msg, ctx, session)
        params = msg.params
        if msg.method == "tools/call":
            ctx.tool = str(params.get("name", ""))
        elif msg.method == "prompts/get":
            ctx.prompt_name = str(params.get("name", ""))
        elif "uri" in params:
            ctx.resource_uri = str(params.get("uri"))
        if msg.method in ("resources/subscribe", "resources/unsubscribe") and isinstance(params.get("uri"), str):
            return await self._subscription(msg, ctx, session, target, params["uri"])
        if msg.method == "logging/setLevel":
            if session is not None:
                session.log_level = params.get("level") if isinstance(params.get("level"), str) else None
            info = self._upstreams()[target].info
            if info is not None and info.era == "modern":
                return Reply(result_body(msg.id, {}))  # modern servers take the level on each request
        reply = await self._forward(target, msg.body, ctx)
        if self.blocklist.size and msg.method in LIST_METHODS:
            # The upstream lists everything it has; this caller is not offered what it may not call.
            body, withheld = visible_answer(msg.method, reply.body, target, self.blocklist, ctx.tenant, self.clock())
            if withheld:
                reply.body = body
                reply.detail = withheld_detail(msg.method, withheld)
        return reply
