"""Real `GatewayEvent`s with real JSON-RPC payload bytes, as the ingress records them, for the risk tests."""

from __future__ import annotations

import itertools
import json
from typing import Any

from schemas.events import Direction, EventType, GatewayEvent, Kind, Outcome
from schemas.payload import prepare_payload

T0 = 1_795_000_000_000_000  # µs; any fixed instant: the engine reads time only from events
SECOND = 1_000_000

_ids = itertools.count(1)


def next_id() -> str:
    return f"0193{next(_ids):028x}"


def event(
    event_type: EventType, kind: Kind, direction: Direction, ts: int, raw: bytes = b"", **fields: Any
) -> GatewayEvent:
    base: dict[str, Any] = {"tenant": "acme", "principal": "alice", "session_id": "s-1", "client_addr": "10.0.4.17",
                            "transport": "streamable_http", "protocol_era": "legacy"}  # fmt: skip
    made = GatewayEvent(event_type, kind, direction, event_id=next_id(), ts_us=ts, **{**base, **fields})
    if raw:
        prepare_payload(raw).apply_to(made)  # redacted and hashed exactly as the ingress stores it
    return made


def rpc_request(method: str, params: dict[str, Any], msg_id: int = 1) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params}).encode()


def rpc_result(result: dict[str, Any], msg_id: int = 1, ensure_ascii: bool = False) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": msg_id, "result": result}, ensure_ascii=ensure_ascii).encode()


def text_result(text: str, ensure_ascii: bool = False) -> bytes:
    return rpc_result({"content": [{"type": "text", "text": text}], "isError": False}, ensure_ascii=ensure_ascii)


def tool_call(
    ts: int, tool: str = "search", *, principal: str = "alice", tenant: str = "acme", session: str = "s-1",
    server: str = "notes", arguments: dict[str, Any] | None = None, result: str = "done",
    ensure_ascii: bool = False, latency_us: int = 3_000,
) -> list[GatewayEvent]:
    """The four events of one tools/call: agent request, upstream request, upstream answer, agent answer."""
    request = rpc_request("tools/call", {"name": tool, "arguments": arguments or {"q": "x"}})
    answer = text_result(result, ensure_ascii)
    who = {"principal": principal, "tenant": tenant, "session_id": session, "server": server, "tool": tool,
           "method": "tools/call", "jsonrpc_id": "1"}  # fmt: skip
    done = ts + latency_us
    return [
        event(EventType.AGENT_MESSAGE_RECEIVED, Kind.REQUEST, Direction.AGENT_TO_GATEWAY, ts, request, **who),
        event(EventType.UPSTREAM_MESSAGE_SENT, Kind.REQUEST, Direction.GATEWAY_TO_UPSTREAM, ts + 50, request, **who),
        event(EventType.UPSTREAM_MESSAGE_RECEIVED, Kind.RESPONSE, Direction.UPSTREAM_TO_GATEWAY, done, answer, **who),
        event(EventType.AGENT_MESSAGE_SENT, Kind.RESPONSE, Direction.GATEWAY_TO_AGENT, done + 50, answer, **who),
    ]


def resource_read(ts: int, uri: str = "file:///etc/app.conf", **fields: Any) -> GatewayEvent:
    raw = rpc_request("resources/read", {"uri": uri})
    return event(EventType.AGENT_MESSAGE_RECEIVED, Kind.REQUEST, Direction.AGENT_TO_GATEWAY, ts, raw,
                 method="resources/read", resource_uri=uri, server="fs", **fields)  # fmt: skip


def unauthenticated(ts: int, client_addr: str = "203.0.113.9") -> GatewayEvent:
    raw = rpc_request("tools/call", {"name": "search"})
    return event(EventType.MESSAGE_REFUSED, Kind.ERROR, Direction.AGENT_TO_GATEWAY, ts, raw,
                 outcome=Outcome.UNAUTHENTICATED, principal="anonymous", tenant="", session_id="",
                 client_addr=client_addr, method="tools/call", error_code=-32015,
                 error_message="Unauthorized: invalid API key")  # fmt: skip


def tool_definition(name: str, description: str, **schema: Any) -> dict[str, Any]:
    return {"name": name, "description": description,
            "inputSchema": {"type": "object", "properties": schema or {"q": {"type": "string"}}}}  # fmt: skip


def tools_listed(ts: int, server: str, tools: list[dict[str, Any]]) -> GatewayEvent:
    """An upstream's answer to the catalog's tools/list (the gateway's own traffic)."""
    return event(EventType.UPSTREAM_MESSAGE_RECEIVED, Kind.RESPONSE, Direction.UPSTREAM_TO_GATEWAY, ts,
                 rpc_result({"tools": tools}, msg_id=0), principal="gateway", tenant="", session_id="",
                 transport="internal", server=server, method="tools/list")  # fmt: skip


def definitions_changed(ts: int, server: str, tools: list[dict[str, Any]], detail: str = "") -> GatewayEvent:
    """What ingress/catalog.py records when a server's tool definitions change (first sight included)."""
    return event(EventType.TOOL_DEFINITIONS_CHANGED, Kind.LIFECYCLE, Direction.INTERNAL, ts,
                 json.dumps({"tools": tools}).encode(), principal="gateway", tenant="", session_id="",
                 transport="internal", server=server, method="tools/list", detail=detail)  # fmt: skip
