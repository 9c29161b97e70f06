"""What the gateway answers itself, and how the aggregated endpoint routes calls.

The aggregated endpoint (`/mcp`) answers the handshake and the list methods from the catalog and
routes calls to the owning upstream under that upstream's own name. The handshake handlers also
serve a per-server endpoint, with the upstream's identity instead of the gateway's.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable

from mcp_types import INVALID_PARAMS

from ingress.aggregate import LIST_METHODS, InvalidCursor, visible_page
from ingress.era_translation import RESOURCE_NOT_FOUND_LEGACY
from ingress.eras import ALL_VERSIONS, META_SERVER_INFO, negotiate_legacy
from ingress.forwarding import Forwarder
from ingress.jsonrpc import JsonObject, Message, result_body
from ingress.list_visibility import hidden_predicate, withheld_detail
from ingress.replies import Reply, error_reply
from ingress.routing import NotRouted
from ingress.sessions import AgentSession
from ingress.upstreams.base import GATEWAY_CLIENT_INFO, CallContext, UpstreamInfo
from schemas.events import Outcome

GATEWAY_SERVER_INFO: JsonObject = {"name": "mcp-audit-gateway", "title": "MCP Audit Gateway",
                                   "version": GATEWAY_CLIENT_INFO["version"]}
AGGREGATE_CAPABILITIES: JsonObject = {
    "tools": {"listChanged": True},
    "prompts": {"listChanged": True},
    "resources": {"subscribe": True, "listChanged": True},
    "logging": {},
    "completions": {},
}


class AggregateHandlers(Forwarder):
    @functools.cached_property
    def _aggregate(self) -> dict[str, Callable[[Message, CallContext, AgentSession | None], Awaitable[Reply]]]:
        """The methods the aggregated endpoint answers itself or routes, each to its handler."""
        return {
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

    # -- handshake -------------------------------------------------------------------------------

    def _server_info(self, target: str) -> JsonObject:
        if not target:
            return GATEWAY_SERVER_INFO
        info = self._upstreams()[target].info
        server_info = info.server_info if info is not None else None
        return server_info or {"name": target, "version": "unknown"}

    def _identity(self, target: str) -> tuple[JsonObject, JsonObject, str | None]:
        if not target:
            return GATEWAY_SERVER_INFO, AGGREGATE_CAPABILITIES, self._instructions()
        info = self._upstreams()[target].info or UpstreamInfo("legacy", "")
        return self._server_info(target), info.capabilities, info.instructions

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
            return error_reply(msg.id, INVALID_PARAMS, "logging/setLevel needs params.level", Outcome.REFUSED)
        if session is not None:
            session.log_level = level
        legacy = [n for n in self._ready_servers("logging") if self._upstreams()[n].info.era == "legacy"]  # type: ignore[union-attr]
        await asyncio.gather(*(self._forward_quietly(name, msg, ctx) for name in legacy))
        return Reply(result_body(msg.id, {}))

    def _ready_servers(self, capability: str) -> list[str]:
        return [n for n, u in self._upstreams().items() if u.info is not None and capability in u.info.capabilities]

    # -- lists and calls on the aggregate ----------------------------------------------------------

    async def _list(self, msg: Message, ctx: CallContext, session: AgentSession | None) -> Reply:
        merged = await self.catalog.merged(msg.method)
        cursor = msg.params.get("cursor")
        # What this caller may not call is not offered to it (nearly always nothing is blocked).
        hidden = hidden_predicate(msg.method, merged.owners.get, self.blocklist, ctx.tenant,
                                  self.clock()) if self.blocklist.size else None
        try:
            items, next_cursor, withheld = visible_page(merged, cursor if isinstance(cursor, str) else None,
                                                        self.limits.page_size, hidden)
        except InvalidCursor as exc:
            return error_reply(msg.id, INVALID_PARAMS, f"invalid cursor: {exc}", Outcome.REFUSED)
        result: JsonObject = {LIST_METHODS[msg.method][0]: items}
        if next_cursor:
            result["nextCursor"] = next_cursor
        return Reply(result_body(msg.id, result), detail=withheld_detail(msg.method, withheld) if withheld else "")

    async def _call_named(self, msg: Message, ctx: CallContext, session: AgentSession | None) -> Reply:
        params = msg.params
        name = params.get("name")
        what = "tool" if msg.method == "tools/call" else "prompt"
        if not isinstance(name, str):
            return error_reply(msg.id, INVALID_PARAMS, f"{msg.method} needs params.name (the {what} name)",
                               Outcome.REFUSED)
        # Nearly every call names a listed tool: found without a coroutine when the catalog has it.
        routed = self.catalog.cached_route(what, name) or await self.catalog.route(what, name)
        if isinstance(routed, NotRouted):
            return error_reply(msg.id, INVALID_PARAMS, routed.message, Outcome.REFUSED,
                               data={what: name, "searched": list(routed.searched)})
        if what == "tool":
            ctx.tool = routed.name
        else:
            ctx.prompt_name = routed.name
        body = {**msg.body, "params": {**params, "name": routed.name}}
        return await self._forward(routed.server, body, ctx)

    async def _call_resource(self, msg: Message, ctx: CallContext, session: AgentSession | None) -> Reply:
        uri = msg.params.get("uri")
        if not isinstance(uri, str):
            return error_reply(msg.id, INVALID_PARAMS, f"{msg.method} needs params.uri", Outcome.REFUSED)
        ctx.resource_uri = uri
        routed = await self.catalog.route("resource", uri)
        if isinstance(routed, NotRouted):
            code = INVALID_PARAMS if ctx.era == "modern" else RESOURCE_NOT_FOUND_LEGACY
            return error_reply(msg.id, code, routed.message, Outcome.REFUSED,
                               data={"uri": uri, "searched": list(routed.searched)})
        if msg.method in ("resources/subscribe", "resources/unsubscribe"):
            return await self._subscription(msg, ctx, session, routed.server, uri)
        return await self._forward(routed.server, msg.body, ctx)

    async def _complete(self, msg: Message, ctx: CallContext, session: AgentSession | None) -> Reply:
        ref = msg.params.get("ref")
        if not isinstance(ref, dict):
            return error_reply(msg.id, INVALID_PARAMS, "completion/complete needs params.ref", Outcome.REFUSED)
        if ref.get("type") == "ref/prompt" and isinstance(ref.get("name"), str):
            routed = await self.catalog.route("prompt", ref["name"])
            new_ref = {**ref, "name": getattr(routed, "name", ref["name"])}
        elif ref.get("type") == "ref/resource" and isinstance(ref.get("uri"), str):
            routed = await self.catalog.route("resource", ref["uri"])
            new_ref = ref
        else:
            return error_reply(msg.id, INVALID_PARAMS, "params.ref must be a ref/prompt with a name or a "
                               "ref/resource with a uri", Outcome.REFUSED)
        if isinstance(routed, NotRouted):
            return error_reply(msg.id, INVALID_PARAMS, routed.message, Outcome.REFUSED)
        body = {**msg.body, "params": {**msg.params, "ref": new_ref}}
        return await self._forward(routed.server, body, ctx)
