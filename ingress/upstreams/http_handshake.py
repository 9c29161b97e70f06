"""Era negotiation and handshakes for Streamable HTTP upstreams.

`auto` follows the SDK's `negotiate_auto`: probe `server/discover` at the newest modern version
and keep the modern era only on positive evidence (a discover result listing a modern version,
or -32022 naming one); anything else falls back to the legacy `initialize` handshake. Network
errors are never an era verdict: they fail the attempt and the supervisor retries. The result is
cached so reconnects skip the probe, and dropped when the cached assumption stops holding.
"""

from __future__ import annotations

from typing import Any

import orjson
from mcp_types import (
    CLIENT_CAPABILITIES_META_KEY,
    CLIENT_INFO_META_KEY,
    PROTOCOL_VERSION_META_KEY,
    SERVER_INFO_META_KEY,
    UNSUPPORTED_PROTOCOL_VERSION,
)
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, LATEST_HANDSHAKE_VERSION, LATEST_MODERN_VERSION
from mcp_types.version import MODERN_PROTOCOL_VERSIONS as MODERN_VERSIONS

from ingress.upstreams.base import GATEWAY_CLIENT_CAPABILITIES, GATEWAY_CLIENT_INFO, JsonObject, UpstreamInfo
from ingress.upstreams.errors import UpstreamProtocolError
from ingress.upstreams.http_exchange import ACCEPT_BOTH, HttpExchange
from ingress.upstreams.http_messages import Call

INIT_HEADERS = {"Accept": ACCEPT_BOTH, "Content-Type": "application/json"}
# 2026 dropped `roots.listChanged`; the rest of the gateway's offer is the same in both eras.
MODERN_GATEWAY_CAPS: JsonObject = {**GATEWAY_CLIENT_CAPABILITIES, "roots": {}}


class Rejected(UpstreamProtocolError):
    """A handshake answered with a JSON-RPC error (kept for the era negotiation to inspect)."""

    def __init__(self, server: str, method: str, response: JsonObject) -> None:
        error = response.get("error")
        self.error: JsonObject = error if isinstance(error, dict) else {}
        code = self.error.get("code")
        self.code = code if isinstance(code, int) else None
        super().__init__(server, f"{method} failed: {self.error.get('message', response)} (code {self.code})")


class HttpHandshake(HttpExchange):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._era: str | None = None  # negotiated era, cached for reconnects (auto mode)
        self._modern_headers: dict[tuple[str, str | None], dict[str, str]] = {}

    async def _connect(self) -> UpstreamInfo:
        mode = self.config.protocol
        cached = self._era if mode == "auto" else mode
        try:
            if cached == "legacy":
                return await self._initialize()
            info = await self._negotiate(fallback=cached is None)
        except UpstreamProtocolError:
            self._era = None  # the cached assumption failed: probe again next time
            raise
        self._era = info.era
        return info

    async def _negotiate(self, fallback: bool) -> UpstreamInfo:
        """SDK `negotiate_auto` semantics: only positive modern evidence keeps the modern era."""
        version = LATEST_MODERN_VERSION
        for attempt in range(2):
            try:
                response: JsonObject | None = await self._discover(version)
            except UpstreamProtocolError:
                if not fallback:
                    raise
                response = None  # an HTTP-level rejection is not modern evidence
            if response is not None:
                result = response.get("result")
                if isinstance(result, dict):
                    offered = result.get("supportedVersions")
                    offered = offered if isinstance(offered, list) else []
                    mutual = [v for v in MODERN_VERSIONS if v in offered]
                    if mutual:
                        return self._adopt_modern(result, version if version in mutual else mutual[-1])
                    detail = f"server/discover lists no modern protocol version ({offered})"
                else:
                    error = response.get("error")
                    error = error if isinstance(error, dict) else {}
                    supported = _supported(error)
                    if error.get("code") == UNSUPPORTED_PROTOCOL_VERSION:
                        mutual = [v for v in MODERN_VERSIONS if v in (supported or ())]
                        if mutual and attempt == 0:
                            version = mutual[-1]
                            continue
                        legacy = [v for v in supported or () if v in HANDSHAKE_PROTOCOL_VERSIONS]
                        if supported is not None and not legacy:
                            raise UpstreamProtocolError(self.name, f"the server speaks only {supported}")
                    detail = f"server/discover failed: {error.get('message', response)}"
                if not fallback:
                    raise UpstreamProtocolError(self.name, detail)
            try:
                return await self._initialize()
            except Rejected as rejected:
                # -32022 to initialize is modern evidence (a slow probe locked the server modern).
                mutual = [v for v in MODERN_VERSIONS if v in (_supported(rejected.error) or ())]
                if rejected.code != UNSUPPORTED_PROTOCOL_VERSION or attempt or not mutual:
                    raise
                version = mutual[-1]
        raise UpstreamProtocolError(self.name, "protocol negotiation did not settle")

    async def _discover(self, version: str) -> JsonObject:
        self._next_id += 1
        rid = f"gw-discover-{self._next_id}"
        body = {"jsonrpc": "2.0", "id": rid, "method": "server/discover", "params": {"_meta": {
            PROTOCOL_VERSION_META_KEY: version,
            CLIENT_INFO_META_KEY: GATEWAY_CLIENT_INFO,
            CLIENT_CAPABILITIES_META_KEY: MODERN_GATEWAY_CAPS,
        }}}
        headers = {**INIT_HEADERS, "MCP-Protocol-Version": version, "Mcp-Method": "server/discover"}
        call = Call(self._system_ctx(), "server/discover", rid)
        return (await self._exchange(body, orjson.dumps(body), rid, call, headers, -1))[0]

    def _adopt_modern(self, result: JsonObject, version: str) -> UpstreamInfo:
        self._modern = True
        self._version = version
        self._session_id = None
        self._modern_headers.clear()
        meta = result.get("_meta")
        server_info = meta.get(SERVER_INFO_META_KEY) if isinstance(meta, dict) else None
        capabilities = result.get("capabilities")
        instructions = result.get("instructions")
        return UpstreamInfo(
            era="modern",
            protocol_version=version,
            server_info=server_info if isinstance(server_info, dict) else {},
            capabilities=capabilities if isinstance(capabilities, dict) else {},
            instructions=instructions if isinstance(instructions, str) else None,
            supported_versions=[v for v in result.get("supportedVersions", ()) if isinstance(v, str)],
        )

    async def _initialize(self, generation: int = -1) -> UpstreamInfo:
        ctx = self._system_ctx()
        self._next_id += 1
        uid = self._next_id
        body = {"jsonrpc": "2.0", "id": uid, "method": "initialize", "params": {
            "protocolVersion": LATEST_HANDSHAKE_VERSION,
            "capabilities": GATEWAY_CLIENT_CAPABILITIES,
            "clientInfo": GATEWAY_CLIENT_INFO,
        }}
        response, _, http_response = await self._exchange(
            body, orjson.dumps(body), uid, Call(ctx, "initialize", uid), INIT_HEADERS, generation
        )
        result = response.get("result")
        if not isinstance(result, dict):
            raise Rejected(self.name, "initialize", response)
        version = result.get("protocolVersion")
        if version not in HANDSHAKE_PROTOCOL_VERSIONS:
            raise UpstreamProtocolError(self.name, f"initialize settled on unsupported version {version!r}")
        self._modern = False
        self._version = str(version)
        self._session_id = http_response.headers.get("Mcp-Session-Id") or None
        self._headers = {**INIT_HEADERS, "MCP-Protocol-Version": self._version}
        self._get_headers = {"Accept": "text/event-stream", "MCP-Protocol-Version": self._version}
        if self._session_id is not None:
            self._headers["Mcp-Session-Id"] = self._get_headers["Mcp-Session-Id"] = self._session_id
        initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        await self._post_message(initialized, ctx, self._headers, generation)
        server_info = result.get("serverInfo")
        capabilities = result.get("capabilities")
        instructions = result.get("instructions")
        return UpstreamInfo(
            era="legacy",
            protocol_version=self._version,
            server_info=server_info if isinstance(server_info, dict) else {},
            capabilities=capabilities if isinstance(capabilities, dict) else {},
            instructions=instructions if isinstance(instructions, str) else None,
            supported_versions=[self._version],
        )


def _supported(error: JsonObject) -> list[str] | None:
    data = error.get("data")
    supported = data.get("supported") if isinstance(data, dict) else None
    if isinstance(supported, list) and all(isinstance(v, str) for v in supported):
        return supported
    return None
