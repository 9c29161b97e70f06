"""The official `mcp` SDK client, in both protocol eras, through the gateway to real upstreams."""

from __future__ import annotations

import pytest
from mcp.client.client import Client

from schemas.events import Direction, EventType
from tests.support.gateway import running_gateway, time_server

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_aggregate_and_single_server_in_both_eras(mode: str) -> None:
    async with running_gateway({"servers": {"time": time_server()}}) as gw:
        async with Client(gw.url, mode=mode) as client:
            assert client.protocol_version == ("2025-11-25" if mode == "legacy" else "2026-07-28")
            tools = await client.list_tools()
            assert [t.name for t in tools.tools] == ["time__get_current_time", "time__convert_time"]
            result = await client.call_tool("time__get_current_time", {"timezone": "Europe/Paris"})
            assert not result.is_error
            assert "Europe/Paris" in result.content[0].text  # type: ignore[union-attr]
        async with Client(gw.server_url("time"), mode=mode) as client:
            tools = await client.list_tools()
            assert [t.name for t in tools.tools] == ["get_current_time", "convert_time"]
            result = await client.call_tool("get_current_time", {"timezone": "UTC"})
            assert not result.is_error

        calls = [e for e in gw.sink.events if e.method == "tools/call"]
        directions = [e.direction for e in calls if e.correlation_id == calls[0].correlation_id]
        assert directions == [Direction.AGENT_TO_GATEWAY, Direction.GATEWAY_TO_UPSTREAM,
                              Direction.UPSTREAM_TO_GATEWAY, Direction.GATEWAY_TO_AGENT]
        assert all(e.server == "time" and e.tool == "get_current_time" for e in calls)
        assert all(e.payload and len(e.payload_sha256) == 64 for e in calls)
        seqs = [e.seq for e in gw.sink.events]
        assert seqs == list(range(1, len(seqs) + 1))
        assert gw.sink.of_type(EventType.UPSTREAM_CONNECTED)
