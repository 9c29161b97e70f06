"""The ingress runtime: upstream connectors, catalog, sessions and the recorder, wired together.

It owns lifecycles (start, stop, session expiry) and what reaches agents without being asked:
change notifications and logs from upstreams, fanned out to the legacy sessions and modern
`subscriptions/listen` streams that want them. Per-message decisions live in `dispatch`; a block
applied here also ends the blocked caller's open streams and withholds what would reach them
(`ingress.block_cutoff`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from ingress.audit_query import AuditQuery
from ingress.auth import Authenticator
from ingress.block_cutoff import BlockCutoff
from ingress.blocklist import Blocklist
from ingress.catalog import Catalog
from ingress.config import HttpServerConfig, IngressConfig, StdioServerConfig
from ingress.decision_feed import DecisionFeed, DecisionLog
from ingress.dispatch import Dispatcher
from ingress.eras import META_SUBSCRIPTION_ID
from ingress.metrics import GatewayMetrics
from ingress.mrtr import HeldCalls
from ingress.naming import Naming
from ingress.recorder import Recorder, system_context
from ingress.sessions import AgentSession, Outbox, SessionRegistry
from ingress.sink import EventSink
from ingress.subscriptions import ResourceSubscriptions
from ingress.upstreams.base import (
    CallContext,
    JsonObject,
    Upstream,
    UpstreamInfo,
    UpstreamState,
    UpstreamStatus,
)
from ingress.upstreams.stdio import StdioUpstream
from schemas.decisions import Decision
from schemas.events import EventType, Outcome
from schemas.payload import PayloadPolicy

log = logging.getLogger("mcpgw.gateway")

LOG_LEVELS = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")
_LIST_CHANGED = {
    "notifications/tools/list_changed": ("tools/list", "toolsListChanged"),
    "notifications/prompts/list_changed": ("prompts/list", "promptsListChanged"),
    "notifications/resources/list_changed": ("resources/list", "resourcesListChanged"),
}


@dataclass(slots=True, eq=False)
class Listener:
    """A modern agent's `subscriptions/listen` stream."""

    subscription_id: Any
    target: str
    ctx: CallContext
    wants: JsonObject
    outbox: Outbox = field(default_factory=asyncio.Queue)

    def wanted(self, method: str, uri: str | None) -> bool:
        if method in _LIST_CHANGED:
            return bool(self.wants.get(_LIST_CHANGED[method][1]))
        if method == "notifications/resources/updated":
            return uri in (self.wants.get("resourceSubscriptions") or [])
        return False


def level_allows(threshold: str | None, level: object) -> bool:
    if threshold is None:
        return True
    try:
        return LOG_LEVELS.index(str(level)) >= LOG_LEVELS.index(threshold)
    except ValueError:
        return True


class Gateway:
    """`decision_log`: where decisions are published and read back (None: applied in memory only).
    `audit_query`: the audit store's read path, for the admin API (None: this process has no store)."""

    def __init__(self, config: IngressConfig, sink: EventSink, instance: str | None = None, *,
                 decision_log: DecisionLog | None = None, audit_query: AuditQuery | None = None) -> None:
        self.config = config
        redaction = config.audit.redaction
        policy = PayloadPolicy(redaction.max_payload_bytes, min(redaction.prefix_bytes, redaction.max_payload_bytes),
                               tuple(redaction.json_paths), redaction.patterns)
        # Everything recorded goes through the metrics' counting sink: /metrics counts what the audit trail holds.
        self.metrics = GatewayMetrics(self, sink)
        self.recorder = Recorder(self.metrics.sink, instance or config.instance_id, config.audit.mode, policy)
        self.auth = Authenticator(config)
        naming = Naming(config.naming.separator, config.naming.mode, config.naming.max_length)
        self.upstreams: dict[str, Upstream] = {}
        self.catalog = Catalog(lambda: self.upstreams, naming, self.recorder, config.limits.catalog_ttl_s)
        self.sessions = SessionRegistry(config.limits.max_sessions, config.limits.session_idle_timeout_s)
        self.listeners: set[Listener] = set()
        self.held_calls = HeldCalls(ttl_s=config.limits.request_timeout_s)
        self.resource_subscriptions = ResourceSubscriptions(lambda: self.upstreams, self._unsolicited,
                                                            config.limits.request_timeout_s)
        self.blocklist = Blocklist(naming)
        self.decisions = DecisionFeed(self.blocklist, self.recorder, decision_log, on_block=self._cut_off)
        self.cutoff = BlockCutoff(self.blocklist, self.recorder, self.decisions.clock)
        self.sessions.gate = self.cutoff
        self.audit_query = audit_query
        self.dispatcher = Dispatcher(lambda: self.upstreams, self.catalog, config.limits, self.resource_subscriptions,
                                     blocklist=self.blocklist, recorder=self.recorder)
        self._janitor: asyncio.Task[None] | None = None
        for name, server in config.servers.items():
            self.upstreams[name] = self._connector(name, server)

    def _connector(self, name: str, server: StdioServerConfig | HttpServerConfig) -> Upstream:
        timeout = self.config.limits.request_timeout_s
        if isinstance(server, StdioServerConfig):
            return StdioUpstream(name, server, self.recorder, self._unsolicited, self._status_changed,
                                 system_context, timeout)
        if server.resolved_transport == "sse":
            from ingress.upstreams.sse import SseUpstream

            return SseUpstream(name, server, self.recorder, self._unsolicited, self._status_changed,
                               system_context, timeout)
        from ingress.upstreams.streamable_http import StreamableHttpUpstream

        return StreamableHttpUpstream(name, server, self.recorder, self._unsolicited, self._status_changed,
                                      system_context, timeout)

    # -- lifecycle -------------------------------------------------------------------------------------

    async def start(self, wait_s: float = 0.0) -> None:
        if self.config.auth == "none":
            log.warning("AUTH IS OFF (auth: none): every local process can call every upstream as "
                        "'anonymous'. Configure auth.api_keys before exposing this gateway.")
        await self.recorder.lifecycle(EventType.SESSION_OPENED, system_context(), detail="gateway started")
        # Before any agent is served: a restarted replica enforces the blocks decided before it.
        await self.decisions.start()
        await asyncio.gather(*(u.start() for u in self.upstreams.values()))
        if wait_s > 0:
            await asyncio.gather(*(u.wait_ready(wait_s) for u in self.upstreams.values()))
        self._janitor = asyncio.create_task(self._expire_sessions())

    async def stop(self) -> None:
        if self._janitor is not None:
            self._janitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._janitor
        for session in self.sessions:
            await self.close_session(session, "gateway stopping")
        for listener in list(self.listeners):
            listener.outbox.put_nowait(None)
        self.held_calls.close()
        await self.decisions.stop()
        await self.resource_subscriptions.close()
        await asyncio.gather(*(u.stop() for u in self.upstreams.values()), return_exceptions=True)
        await self.recorder.lifecycle(EventType.SESSION_CLOSED, system_context(), detail="gateway stopped")
        await self.recorder.drain()

    async def _expire_sessions(self) -> None:
        interval = min(60.0, max(1.0, self.config.limits.session_idle_timeout_s / 4))
        while True:
            await asyncio.sleep(interval)
            for session in self.sessions.expired():
                await self.close_session(session, "idle timeout")

    async def close_session(self, session: AgentSession, reason: str, outcome: Outcome = Outcome.OK) -> None:
        if self.sessions.close(session.id) is None:
            return
        for uri, server in session.subscriptions.items():
            await self.resource_subscriptions.remove(server, uri)
        for upstream in self.upstreams.values():
            release = getattr(upstream, "release_session", None)
            if release is not None:
                await release(session.id)
        ctx = system_context(session_id=session.id, principal=session.principal, tenant=session.tenant)
        await self.recorder.lifecycle(EventType.SESSION_CLOSED, ctx, detail=reason, server=session.target,
                                      outcome=outcome)

    async def _cut_off(self, decision: Decision) -> None:
        """A caller-scope block was applied: end the covered callers' open streams now."""
        listeners = [(listener.ctx, listener.outbox) for listener in self.listeners]
        await self.cutoff.cut(decision, self.sessions, listeners, self.close_session)

    # -- upstream events -----------------------------------------------------------------------------

    async def _status_changed(self, server: str, status: UpstreamStatus, info: UpstreamInfo | None) -> None:
        if status.state is UpstreamState.READY:
            detail = f"{status.detail}; era {info.era} {info.protocol_version}" if info else status.detail
            self.catalog.invalidate(server)
            await self.recorder.lifecycle(EventType.UPSTREAM_CONNECTED, system_context(), detail, server)
        elif status.state is UpstreamState.DOWN:
            await self.recorder.lifecycle(EventType.UPSTREAM_LOST, system_context(), status.detail, server,
                                          outcome=Outcome.UPSTREAM_ERROR)

    async def _unsolicited(self, server: str, body: JsonObject) -> None:
        method = str(body.get("method", ""))
        params = body.get("params") if isinstance(body.get("params"), dict) else {}
        assert isinstance(params, dict)
        if method in _LIST_CHANGED:
            self.catalog.invalidate(server, _LIST_CHANGED[method][0])
        uri = params.get("uri") if method == "notifications/resources/updated" else None
        for session in self.sessions:
            if session.target not in ("", server) or not session.streams:
                continue
            if method == "notifications/message" and not level_allows(session.log_level, params.get("level")):
                continue
            if uri is not None and uri not in session.subscriptions:
                continue
            if method not in _LIST_CHANGED and uri is None and method != "notifications/message" and \
                    session.target != server:
                continue  # server-specific chatter only reaches that server's own endpoint
            ctx = CallContext(system_context().correlation_id, session.principal, session.tenant, session.id,
                              era="legacy", protocol_version=session.protocol_version, transport=session.transport,
                              method=method, server=server)
            wire = orjson.dumps(body)
            blocked = self.cutoff.blocking(session.principal, session.tenant, session.id)
            if blocked is not None:
                await self.cutoff.withhold(ctx, blocked, body, wire)
                continue
            await self.recorder.agent_sent(ctx, body, wire, final=False)
            session.push(wire)
        for listener in list(self.listeners):
            if listener.target not in ("", server) or not listener.wanted(method, uri):
                continue
            out_params = {**params, "_meta": {**(params.get("_meta") or {}),
                                              META_SUBSCRIPTION_ID: listener.subscription_id}}
            out = {"jsonrpc": "2.0", "method": method, "params": out_params}
            wire = orjson.dumps(out)
            lctx = listener.ctx
            blocked = self.cutoff.blocking(lctx.principal, lctx.tenant, lctx.session_id)
            if blocked is not None:
                await self.cutoff.withhold(lctx, blocked, out, wire)
                continue
            await self.recorder.agent_sent(lctx, out, wire, final=False)
            listener.outbox.put_nowait(wire)

    async def subscribe_resources(self, uris: list[str], target: str) -> list[tuple[str, str]]:
        """Subscribe upstreams to the resources a listener wants; returns what to release later."""
        done: list[tuple[str, str]] = []
        for uri in uris:
            server = target
            if not server:
                routed = await self.catalog.route("resource", uri)
                server = getattr(routed, "server", "")
            if await self.resource_subscriptions.add(server, uri):
                done.append((server, uri))
        return done

    async def unsubscribe_resources(self, subscribed: list[tuple[str, str]]) -> None:
        for server, uri in subscribed:
            await self.resource_subscriptions.remove(server, uri)

    def readiness(self) -> dict[str, Any]:
        servers: Mapping[str, Any] = {
            name: {
                "state": u.status.state.value,
                "detail": u.status.detail,
                "since": u.status.since,
                "transport": u.transport,
                "era": u.info.era if u.info else None,
                "protocol_version": u.info.protocol_version if u.info else None,
            }
            for name, u in self.upstreams.items()
        }
        ready = sum(1 for u in self.upstreams.values() if u.status.state is UpstreamState.READY)
        return {"ready": ready == len(self.upstreams), "servers_ready": ready, "servers_total": len(self.upstreams),
                "sessions": len(self.sessions), "listeners": len(self.listeners), "servers": servers}
