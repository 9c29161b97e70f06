"""What the gateway does with each agent message, per method and per endpoint.

The aggregated endpoint (`target == ""`) answers the handshake and list methods itself, from the
catalog, and routes calls to the owning upstream under its own name. A per-server endpoint
(`target == "time"`) forwards everything to that one upstream and answers the handshake with the
upstream's own identity, so an agent cannot tell it from the server itself. Between eras the
envelope is translated: modern agents get `resultType`, `ttlMs` and `cacheScope` on results from
legacy upstreams; legacy upstreams never see modern `_meta` keys.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from mcp_types import INVALID_PARAMS, METHOD_NOT_FOUND

from ingress import errors
from ingress.aggregate import LIST_METHODS, InvalidCursor, page
from ingress.blocklist import Blocklist, refusal
from ingress.catalog import Catalog
from ingress.config import LimitsConfig
from ingress.eras import ALL_VERSIONS, META_SERVER_INFO, negotiate_legacy
from ingress.jsonrpc import JsonObject, Message, error_body, result_body
from ingress.recorder import Recorder
from ingress.routing import NotRouted
from ingress.sessions import AgentSession
from ingress.subscriptions import ResourceSubscriptions
from ingress.upstreams.base import GATEWAY_CLIENT_INFO, CallContext, Upstream, UpstreamInfo
from ingress.upstreams.errors import UpstreamError, UpstreamTimeout
from schemas.decisions import Decision
from schemas.events import Outcome

log = logging.getLogger("mcpgw.dispatch")

GATEWAY_SERVER_INFO: JsonObject = {"name": "mcp-audit-gateway", "title": "MCP Audit Gateway",
                                   "version": GATEWAY_CLIENT_INFO["version"]}
AGGREGATE_CAPABILITIES: JsonObject = {
    "tools": {"listChanged": True},
    "prompts": {"listChanged": True},
    "resources": {"subscribe": True, "listChanged": True},
    "logging": {},
    "completions": {},
}
CACHEABLE = frozenset({*LIST_METHODS, "resources/read", "server/discover"})
_RESOURCE_NOT_FOUND_LEGACY = -32002
MAX_INPUT_ROUNDS = 10
# Methods 2026-07-28 removed: a modern agent gets "method not found" (HTTP 404) for them.
REMOVED_IN_MODERN = frozenset({"initialize", "ping", "logging/setLevel", "resources/subscribe",
                               "resources/unsubscribe"})
LISTEN_TIMEOUT_S = 7 * 24 * 3600.0  # a listen stream lasts until either side closes it
_MODERN_ONLY_RESULT_KEYS = ("resultType", "ttlMs", "cacheScope")


def _now_us() -> int:
    return time.time_ns() // 1000


def _needs_input(response: JsonObject) -> bool:
    result = response.get("result")
    return isinstance(result, dict) and result.get("resultType") == "input_required"


@dataclass(slots=True)
class Reply:
    body: JsonObject
    outcome: Outcome = Outcome.OK
    http_status: int = 200


def _error(ctx_id: Any, code: int, message: str, outcome: Outcome, status: int = 200,
           data: Any = None) -> Reply:
    return Reply(error_body(ctx_id, code, message, data), outcome, status)


def _blocked(msg_id: Any, decision: Decision) -> Reply:
    message, data = refusal(decision)
    return _error(msg_id, errors.BLOCKED, message, Outcome.BLOCKED, data=data)


class Dispatcher:
    def __init__(
        self,
        upstreams: Callable[[], Mapping[str, Upstream]],
        catalog: Catalog,
        limits: LimitsConfig,
        subscriptions: ResourceSubscriptions,
        *,
        blocklist: Blocklist | None = None,
        recorder: Recorder | None = None,
        clock: Callable[[], int] = _now_us,
    ) -> None:
        self._upstreams = upstreams
        self.blocklist = blocklist if blocklist is not None else Blocklist(catalog.naming)
        self.recorder = recorder  # records refusals of notifications, which get no answer to carry them
        self.clock = clock
        self.subscriptions = subscriptions
        self.catalog = catalog
        self.limits = limits
        self._aggregate: dict[str, Callable[[Message, CallContext, AgentSession | None], Awaitable[Reply]]] = {
            "initialize": self._initialize,
            "server/discover": self._discover,
            "ping": self._ping,
            "logging/setLevel": self._set_level,
            "tools/list": self._list,
            "prompts/list": self._list,
            "resources/list": self._list,
            "resources/templates/list": self._list,
            "tools/call": self._call_named,
            "prompts/get": self._call_named,
            "resources/read": self._call_resource,
            "resources/subscribe": self._call_resource,
            "resources/unsubscribe": self._call_resource,
            "completion/complete": self._complete,
        }

    # -- entry points --------------------------------------------------------------------------

    async def request(self, msg: Message, ctx: CallContext, target: str, session: AgentSession | None) -> Reply:
        ctx.method = msg.method
        if self.blocklist.size:
            decision = self.caller_blocked(ctx)
            if decision is not None:
                return _blocked(msg.id, decision)
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
            self._modernize(msg.method, reply.body, ctx, target)
        else:
            result = reply.body.get("result")
            if isinstance(result, dict):
                for key in _MODERN_ONLY_RESULT_KEYS:
                    result.pop(key, None)
        return reply

    def caller_blocked(self, ctx: CallContext) -> Decision | None:
        """The block on this caller (principal, session or tenant), for paths that do not come through `request`."""
        if not self.blocklist.size:
            return None
        return self.blocklist.match_caller(ctx.principal, ctx.tenant, ctx.session_id, self.clock())

    def _unknown_method(self, msg: Message, ctx: CallContext) -> Reply:
        return _error(msg.id, METHOD_NOT_FOUND, f"Method not found: {msg.method}", Outcome.REFUSED,
                      data=msg.method)

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

    # -- handshake -------------------------------------------------------------------------------

    def _identity(self, target: str) -> tuple[JsonObject, JsonObject, str | None]:
        if not target:
            return GATEWAY_SERVER_INFO, AGGREGATE_CAPABILITIES, self._instructions()
        upstream = self._upstreams()[target]
        info = upstream.info or UpstreamInfo("legacy", "")
        return info.server_info or {"name": target, "version": "unknown"}, info.capabilities, info.instructions

    def _instructions(self) -> str:
        naming = self.catalog.naming
        lines = ["This gateway aggregates several MCP servers."]
        if naming.mode == "prefix":
            lines.append(f"Tool and prompt names are prefixed with their server: <server>{naming.separator}<name>.")
        for name, upstream in self._upstreams().items():
            info = upstream.info
            if info is not None and info.instructions:
                lines.append(f"[{name}] {info.instructions}")
        return "\n".join(lines)

    async def _initialize(self, msg: Message, ctx: CallContext, session: AgentSession | None,
                          target: str = "") -> Reply:
        if target:
            await self._upstreams()[target].wait_ready(min(5.0, self.limits.request_timeout_s))
        server_info, capabilities, instructions = self._identity(target)
        version = negotiate_legacy(msg.params.get("protocolVersion"))
        result: JsonObject = {"protocolVersion": version, "capabilities": capabilities, "serverInfo": server_info}
        if instructions:
            result["instructions"] = instructions
        if session is not None:
            session.protocol_version = version
            client_info = msg.params.get("clientInfo")
            caps = msg.params.get("capabilities")
            session.client_info = client_info if isinstance(client_info, dict) else {}
            session.client_capabilities = caps if isinstance(caps, dict) else {}
        ctx.protocol_version = version
        return Reply(result_body(msg.id, result))

    async def _discover(self, msg: Message, ctx: CallContext, session: AgentSession | None,
                        target: str = "") -> Reply:
        if target:
            await self._upstreams()[target].wait_ready(min(5.0, self.limits.request_timeout_s))
        server_info, capabilities, instructions = self._identity(target)
        result: JsonObject = {"supportedVersions": list(ALL_VERSIONS), "capabilities": capabilities,
                              "_meta": {META_SERVER_INFO: server_info}}
        if instructions:
            result["instructions"] = instructions
        return Reply(result_body(msg.id, result))

    async def _ping(self, msg: Message, ctx: CallContext, session: AgentSession | None) -> Reply:
        return Reply(result_body(msg.id, {}))

    async def _set_level(self, msg: Message, ctx: CallContext, session: AgentSession | None) -> Reply:
        level = msg.params.get("level")
        if not isinstance(level, str):
            return _error(msg.id, INVALID_PARAMS, "logging/setLevel needs params.level", Outcome.REFUSED)
        if session is not None:
            session.log_level = level
        legacy = [n for n in self._ready_servers("logging") if self._upstreams()[n].info.era == "legacy"]  # type: ignore[union-attr]
        await asyncio.gather(*(self._forward_quietly(name, msg, ctx) for name in legacy))
        return Reply(result_body(msg.id, {}))

    def _ready_servers(self, capability: str) -> list[str]:
        return [n for n, u in self._upstreams().items() if u.info is not None and capability in u.info.capabilities]

    async def _forward_quietly(self, server: str, msg: Message, ctx: CallContext) -> None:
        upstream = self._upstreams()[server]
        sub = CallContext(ctx.correlation_id, ctx.principal, ctx.tenant, ctx.session_id, ctx.client_addr,
                          ctx.era, ctx.protocol_version, ctx.transport, method=msg.method, server=server)
        try:
            await upstream.request(self._for_upstream(msg.body, upstream), sub, self._timeout(upstream))
        except UpstreamError as exc:
            log.info("%s to %s failed: %s", msg.method, server, exc)

    # -- lists and calls on the aggregate ----------------------------------------------------------

    async def _list(self, msg: Message, ctx: CallContext, session: AgentSession | None) -> Reply:
        merged = await self.catalog.merged(msg.method)
        cursor = msg.params.get("cursor")
        try:
            items, next_cursor = page(merged, cursor if isinstance(cursor, str) else None, self.limits.page_size)
        except InvalidCursor as exc:
            return _error(msg.id, INVALID_PARAMS, f"invalid cursor: {exc}", Outcome.REFUSED)
        result: JsonObject = {LIST_METHODS[msg.method][0]: items}
        if next_cursor:
            result["nextCursor"] = next_cursor
        return Reply(result_body(msg.id, result))

    async def _call_named(self, msg: Message, ctx: CallContext, session: AgentSession | None) -> Reply:
        name = msg.params.get("name")
        what = "tool" if msg.method == "tools/call" else "prompt"
        if not isinstance(name, str):
            return _error(msg.id, INVALID_PARAMS, f"{msg.method} needs params.name (the {what} name)",
                          Outcome.REFUSED)
        routed = await self.catalog.route(what, name)
        if isinstance(routed, NotRouted):
            return _error(msg.id, INVALID_PARAMS, routed.message, Outcome.REFUSED,
                          data={what: name, "searched": list(routed.searched)})
        if what == "tool":
            ctx.tool = routed.name
        else:
            ctx.prompt_name = routed.name
        body = {**msg.body, "params": {**msg.params, "name": routed.name}}
        return await self._forward(routed.server, body, ctx)

    async def _call_resource(self, msg: Message, ctx: CallContext, session: AgentSession | None) -> Reply:
        uri = msg.params.get("uri")
        if not isinstance(uri, str):
            return _error(msg.id, INVALID_PARAMS, f"{msg.method} needs params.uri", Outcome.REFUSED)
        ctx.resource_uri = uri
        routed = await self.catalog.route("resource", uri)
        if isinstance(routed, NotRouted):
            code = INVALID_PARAMS if ctx.era == "modern" else _RESOURCE_NOT_FOUND_LEGACY
            return _error(msg.id, code, routed.message, Outcome.REFUSED,
                          data={"uri": uri, "searched": list(routed.searched)})
        if msg.method in ("resources/subscribe", "resources/unsubscribe"):
            return await self._subscription(msg, ctx, session, routed.server, uri)
        return await self._forward(routed.server, msg.body, ctx)

    async def _subscription(self, msg: Message, ctx: CallContext, session: AgentSession | None, server: str,
                            uri: str) -> Reply:
        """Agents share upstream sessions, so subscriptions are counted here, not forwarded one by one."""
        ctx.server = server
        if self.blocklist.size and msg.method == "resources/subscribe":
            decision = self.blocklist.match_target(ctx.tenant, "", server, self.clock())
            if decision is not None:
                return _blocked(msg.id, decision)
        if session is None:
            return self._unknown_method(msg, ctx)
        if msg.method == "resources/unsubscribe":
            if session.subscriptions.pop(uri, None) is not None:
                await self.subscriptions.remove(server, uri)
            return Reply(result_body(msg.id, {}))
        if uri not in session.subscriptions:
            if not await self.subscriptions.add(server, uri):
                return _error(msg.id, METHOD_NOT_FOUND, f"server {server!r} does not support resource subscriptions",
                              Outcome.REFUSED)
            session.subscriptions[uri] = server
        return Reply(result_body(msg.id, {}))

    async def _complete(self, msg: Message, ctx: CallContext, session: AgentSession | None) -> Reply:
        ref = msg.params.get("ref")
        if not isinstance(ref, dict):
            return _error(msg.id, INVALID_PARAMS, "completion/complete needs params.ref", Outcome.REFUSED)
        if ref.get("type") == "ref/prompt" and isinstance(ref.get("name"), str):
            routed = await self.catalog.route("prompt", ref["name"])
            new_ref = {**ref, "name": getattr(routed, "name", ref["name"])}
        elif ref.get("type") == "ref/resource" and isinstance(ref.get("uri"), str):
            routed = await self.catalog.route("resource", ref["uri"])
            new_ref = ref
        else:
            return _error(msg.id, INVALID_PARAMS, "params.ref must be a ref/prompt with a name or a "
                          "ref/resource with a uri", Outcome.REFUSED)
        if isinstance(routed, NotRouted):
            return _error(msg.id, INVALID_PARAMS, routed.message, Outcome.REFUSED)
        body = {**msg.body, "params": {**msg.params, "ref": new_ref}}
        return await self._forward(routed.server, body, ctx)

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
        return await self._forward(target, msg.body, ctx)

    def _timeout(self, upstream: Upstream, method: str = "") -> float:
        if method == "subscriptions/listen":
            return LISTEN_TIMEOUT_S
        config = getattr(upstream, "config", None)
        return getattr(config, "request_timeout_s", None) or self.limits.request_timeout_s

    def _for_upstream(self, body: JsonObject, upstream: Upstream) -> JsonObject:
        """Strip the modern envelope for a legacy upstream; the modern connector adds its own."""
        info = upstream.info
        if info is not None and info.era == "modern":
            return body
        params = body.get("params")
        if not isinstance(params, dict):
            return body
        meta = params.get("_meta")
        if not isinstance(meta, dict) or not any(k.startswith("io.modelcontextprotocol/") for k in meta):
            return body
        kept = {k: v for k, v in meta.items() if not k.startswith("io.modelcontextprotocol/")}
        new_params = {k: v for k, v in params.items() if k != "_meta"}
        if kept:
            new_params["_meta"] = kept
        return {**body, "params": new_params}

    async def _forward(self, server: str, body: JsonObject, ctx: CallContext) -> Reply:
        ctx.server = server
        request_id = body.get("id")
        if self.blocklist.size:
            decision = self.blocklist.match_target(ctx.tenant, ctx.tool, server, self.clock())
            if decision is not None:
                return _blocked(request_id, decision)
        upstream = self._upstreams().get(server)
        if upstream is None:
            return _error(request_id, INVALID_PARAMS, f"unknown server {server!r}", Outcome.REFUSED)
        try:
            response = await upstream.request(self._for_upstream(body, upstream), ctx,
                                              self._timeout(upstream, str(body.get("method", ""))))
        except UpstreamTimeout as exc:
            return _error(request_id, errors.UPSTREAM_TIMEOUT,
                          f"upstream {server!r} did not answer in time: {exc.detail}", Outcome.TIMEOUT,
                          data={"server": server})
        except UpstreamError as exc:
            return _error(request_id, errors.UPSTREAM_UNAVAILABLE, f"upstream {server!r} is unavailable: "
                          f"{exc.detail}", Outcome.UPSTREAM_ERROR, data={"server": server, "retryable": exc.retryable})
        if ctx.era != "modern" and _needs_input(response) and ctx.handler is not None:
            response = await self._answer_input_required(server, upstream, body, response, ctx)
        outcome = Outcome.UPSTREAM_ERROR if "error" in response else Outcome.OK
        return Reply(response, outcome)

    async def _answer_input_required(self, server: str, upstream: Upstream, body: JsonObject,
                                     response: JsonObject, ctx: CallContext) -> JsonObject:
        """A modern upstream asks a legacy agent: ask it as server-to-client requests, then retry."""
        assert ctx.handler is not None
        request_id = body.get("id")
        for round_no in range(1, MAX_INPUT_ROUNDS + 1):
            result = response["result"]
            answers: JsonObject = {}
            for key, asked in (result.get("inputRequests") or {}).items():
                if not isinstance(asked, dict):
                    continue
                question = {"jsonrpc": "2.0", "id": f"input-{key}", "method": asked.get("method"),
                            "params": asked.get("params") or {}}
                answer = await ctx.handler.request(server, question)
                if "result" not in answer:
                    error = answer.get("error") or {}
                    return error_body(request_id, error.get("code", INVALID_PARAMS),
                                      f"the agent could not answer {asked.get('method')}: {error.get('message')}")
                answers[key] = answer["result"]
            params = {**(body.get("params") or {}), "inputResponses": answers}
            if "requestState" in result:
                params["requestState"] = result["requestState"]
            retry = {**body, "id": f"{request_id}~{round_no}", "params": params}
            try:
                response = await upstream.request(retry, ctx, self._timeout(upstream))
            except UpstreamError as exc:
                return error_body(request_id, errors.UPSTREAM_UNAVAILABLE, f"upstream {server!r}: {exc.detail}")
            response["id"] = request_id
            if not _needs_input(response):
                return response
        return error_body(request_id, errors.UPSTREAM_UNAVAILABLE,
                          f"upstream {server!r} still wanted input after {MAX_INPUT_ROUNDS} rounds")

    # -- era translation of answers -----------------------------------------------------------------

    def _modernize(self, method: str, body: JsonObject, ctx: CallContext, target: str) -> None:
        result = body.get("result")
        if isinstance(result, dict):
            meta = result.get("_meta")
            if not isinstance(meta, dict) or META_SERVER_INFO not in meta:
                result["_meta"] = {**(meta if isinstance(meta, dict) else {}),
                                   META_SERVER_INFO: self._identity(target)[0]}
            if result.setdefault("resultType", "complete") != "complete":
                return  # input_required results carry no cache hints
            if method in CACHEABLE:
                result.setdefault("ttlMs", int(self.catalog.ttl_s * 1000))
                result.setdefault("cacheScope", "private")
            return
        error = body.get("error")
        if isinstance(error, dict) and error.get("code") == _RESOURCE_NOT_FOUND_LEGACY and method == "resources/read":
            error["code"] = INVALID_PARAMS
