"""Era translation: a 2026-07-28 agent in front of a legacy-only upstream (every Node reference server).

Server-to-client requests from the legacy upstream reach the modern agent as MRTR input_required
round trips; a legacy agent gets them as ordinary requests on its stream.
"""

from __future__ import annotations

from typing import Any

import mcp_types as types
import orjson
import pytest
from aiohttp import ClientSession
from mcp.client.client import Client

from schemas.events import EventType
from tests.support.gateway import everything_stdio, running_gateway

pytestmark = [pytest.mark.integration, pytest.mark.node]

MODERN_HEADERS = {"MCP-Protocol-Version": "2026-07-28", "Accept": "application/json, text/event-stream"}


async def _sampling(_ctx: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
    return types.CreateMessageResult(role="assistant", model="test-model",
                                     content=types.TextContent(type="text", text="sampled-42"))


async def _elicit(_ctx: Any, _params: Any) -> types.ElicitResult:
    return types.ElicitResult(action="accept", content={"name": "bob"})


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_server_requests_reach_the_agent_in_both_eras(mode: str) -> None:
    async with running_gateway({"servers": {"ev": everything_stdio()}}) as gw:
        async with Client(gw.server_url("ev"), mode=mode, sampling_callback=_sampling,
                          elicitation_callback=_elicit) as client:
            assert gw.gateway.upstreams["ev"].info.era == "legacy"  # type: ignore[union-attr]
            sampled = await client.call_tool("trigger-sampling-request", {"prompt": "hi", "maxTokens": 10})
            assert not sampled.is_error
            assert "sampled-42" in sampled.content[0].text  # type: ignore[union-attr]
            elicited = await client.call_tool("trigger-elicitation-request", {})
            assert not elicited.is_error
            assert "bob" in "".join(c.text for c in elicited.content)  # type: ignore[union-attr]
        assert len(gw.gateway.held_calls) == 0
        asked = [e for e in gw.sink.events if e.method == "sampling/createMessage"]
        assert asked, "the upstream's sampling request is in the audit trail"


def _call(msg_id: int, name: str, args: dict[str, Any], caps: dict[str, Any], **extra: Any) -> bytes:
    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": caps}
    return orjson.dumps({"jsonrpc": "2.0", "id": msg_id, "method": "tools/call",
                         "params": {"name": name, "arguments": args, "_meta": meta, **extra}})


async def test_input_required_round_trip_on_the_wire() -> None:
    async with running_gateway({"servers": {"ev": everything_stdio()}}) as gw, ClientSession() as http:
        headers = {**MODERN_HEADERS, "Mcp-Method": "tools/call", "Mcp-Name": "trigger-elicitation-request"}
        caps = {"elicitation": {}}
        async with http.post(gw.server_url("ev"), data=_call(1, "trigger-elicitation-request", {}, caps),
                             headers=headers) as resp:
            first = orjson.loads(await resp.read())
        result = first["result"]
        assert first["id"] == 1 and result["resultType"] == "input_required"
        (key, asked), = result["inputRequests"].items()
        assert asked["method"] == "elicitation/create"
        state = result["requestState"]

        # A forged state is refused and does not disturb the held call.
        forged = _call(2, "trigger-elicitation-request", {}, caps, requestState=state[:-2] + "00",
                       inputResponses={key: {"action": "accept", "content": {"name": "eve"}}})
        async with http.post(gw.server_url("ev"), data=forged, headers=headers) as resp:
            assert resp.status == 400
            assert (await resp.json())["error"]["code"] == -32602

        retry = _call(3, "trigger-elicitation-request", {}, caps, requestState=state,
                      inputResponses={key: {"action": "accept", "content": {"name": "ann"}}})
        async with http.post(gw.server_url("ev"), data=retry, headers=headers) as resp:
            final = orjson.loads(await resp.read())
        assert final["id"] == 3
        assert final["result"]["resultType"] == "complete"
        assert "ann" in orjson.dumps(final["result"]["content"]).decode()
        refused = gw.sink.of_type(EventType.MESSAGE_REFUSED)
        assert any("requestState" in e.error_message for e in refused)


async def test_undeclared_capability_is_not_asked() -> None:
    async with running_gateway({"servers": {"ev": everything_stdio()}}) as gw, ClientSession() as http:
        headers = {**MODERN_HEADERS, "Mcp-Method": "tools/call", "Mcp-Name": "trigger-sampling-request"}
        body = _call(1, "trigger-sampling-request", {"prompt": "x", "maxTokens": 5}, {})
        async with http.post(gw.server_url("ev"), data=body, headers=headers) as resp:
            reply = orjson.loads(await resp.read())
        # The upstream's sampling request was refused on the agent's behalf: no input_required.
        assert reply["result"].get("resultType") == "complete"
        assert reply["result"].get("isError") is True or "error" in orjson.dumps(reply).decode().lower()
