"""What every upstream connector offers the gateway, whatever its transport or protocol era.

A connector owns one upstream MCP server (a stdio process, a Streamable HTTP or an SSE endpoint),
speaks that server's era, and reports every JSON-RPC message it sends or receives to the
`UpstreamTap` *before* acting on it, so upstream traffic is recorded like agent traffic.
Messages the server sends during a call (progress, logging, server-to-client requests) go to the
call's `CallHandler`; messages that belong to no call go to `on_unsolicited`.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

JsonObject = dict[str, Any]

GATEWAY_CLIENT_INFO: JsonObject = {"name": "mcp-audit-gateway", "version": "0.1.0"}
# Offered to upstreams on behalf of every agent; a call whose agent lacks a capability gets an
# error back for the server's request instead (see the agent-side handler).
GATEWAY_CLIENT_CAPABILITIES: JsonObject = {
    "roots": {"listChanged": True},
    "sampling": {},
    "elicitation": {"form": {}, "url": {}},
}


class CallHandler(Protocol):
    """Receives what an upstream sends in the course of one agent's call."""

    async def notification(self, server: str, body: JsonObject) -> None: ...

    async def request(self, server: str, body: JsonObject) -> JsonObject:
        """Answer a server-to-client request; returns a JSON-RPC response body (id is rewritten)."""
        ...


@dataclass(slots=True)
class CallContext:
    """Who and what a message belongs to; carried into every event of a call."""

    correlation_id: str
    principal: str = "gateway"
    tenant: str = ""
    session_id: str = ""
    client_addr: str = ""
    era: str = ""
    protocol_version: str = ""
    transport: str = ""
    client_capabilities: JsonObject | None = None
    client_info: JsonObject | None = None
    log_level: str | None = None
    # Request-metadata headers of a modern agent to relay upstream when the gateway does not compute
    # them itself (Mcp-Name of methods it does not know, Mcp-Param-* it has no annotation for).
    mirror_headers: dict[str, str] | None = None
    trace_id: str = ""
    span_id: str = ""
    handler: CallHandler | None = None
    started_ns: int = field(default_factory=time.perf_counter_ns)
    # Filled in as the call is routed; every event of the call carries them.
    method: str = ""
    server: str = ""
    tool: str = ""
    resource_uri: str = ""
    prompt_name: str = ""
    # Events built but not yet handed to the sink: they are recorded together with the next
    # outgoing message of the call, so one durable write covers "received" and "forwarded".
    deferred: list[Any] = field(default_factory=list)


class UpstreamTap(Protocol):
    def sent(self, server: str, body: JsonObject, wire: bytes, ctx: CallContext) -> Awaitable[None]: ...

    def received(
        self, server: str, body: JsonObject, wire: bytes, ctx: CallContext, latency_us: int | None
    ) -> Awaitable[None]: ...


class UpstreamState(StrEnum):
    CONNECTING = "connecting"
    READY = "ready"
    DOWN = "down"
    STOPPED = "stopped"


@dataclass(slots=True)
class UpstreamStatus:
    state: UpstreamState
    detail: str = ""
    since: float = field(default_factory=time.time)


@dataclass(slots=True)
class UpstreamInfo:
    """What the upstream said about itself in `initialize` or `server/discover`."""

    era: str  # "legacy" | "modern"
    protocol_version: str
    server_info: JsonObject = field(default_factory=dict)
    capabilities: JsonObject = field(default_factory=dict)
    instructions: str | None = None
    supported_versions: list[str] = field(default_factory=list)


UnsolicitedHandler = Callable[[str, JsonObject], Awaitable[None]]
StatusHandler = Callable[[str, UpstreamStatus, UpstreamInfo | None], Awaitable[None]]


class Upstream(Protocol):
    name: str
    transport: str

    @property
    def status(self) -> UpstreamStatus: ...

    @property
    def info(self) -> UpstreamInfo | None: ...

    async def start(self) -> None:
        """Begin connecting; returns without waiting for the server (see `wait_ready`)."""

    async def wait_ready(self, timeout: float) -> bool: ...

    async def stop(self) -> None: ...

    async def request(self, body: JsonObject, ctx: CallContext, timeout: float) -> JsonObject:
        """Send one request; return the final response body carrying `body`'s own id.

        Raises `UpstreamError` subclasses (unavailable, timeout, protocol violation). Cancelling the
        awaiting task cancels the request upstream (notifications/cancelled or stream close).
        """
        ...

    async def notify(self, body: JsonObject, ctx: CallContext) -> None: ...
