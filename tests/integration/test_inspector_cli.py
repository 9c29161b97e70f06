"""The MCP Inspector CLI (a real Node client) against the gateway, with an API key."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from schemas.events import EventType, Outcome
from tests.integration.rawmcp import bound_module_tests
from tests.peers.nodepeers import run_inspector
from tests.support.gateway import RunningGateway, running_gateway, time_server

pytestmark = [pytest.mark.integration, pytest.mark.node, pytest.mark.asyncio(loop_scope="module")]

KEY = "inspector-key-5f2a9c"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gw() -> AsyncIterator[RunningGateway]:
    config = {
        "servers": {"time": time_server()},
        "auth": {"api_keys": [{"key_sha256": hashlib.sha256(KEY.encode()).hexdigest(), "principal": "inspector",
                               "tenant": "qa"}]},
    }
    async with running_gateway(config) as gateway:
        yield gateway


def common(url: str, era: str, key: str = KEY) -> list[str]:
    return [url, "--transport", "http", "--header", f"Authorization: Bearer {key}", "--format", "json",
            "--protocol-era", era, "--stored-auth-only"]


@pytest.mark.parametrize("era", ["legacy", "modern"])
async def test_inspector_lists_tools(gw: RunningGateway, era: str) -> None:
    run = await run_inspector(*common(gw.url, era), "--method", "tools/list")
    assert run.returncode == 0, run.stderr
    names = [t["name"] for t in run.json()["result"]["tools"]]
    assert names == ["time__get_current_time", "time__convert_time"]


@pytest.mark.parametrize("era", ["legacy", "modern"])
async def test_inspector_calls_a_tool(gw: RunningGateway, era: str) -> None:
    mark = len(gw.sink.events)
    run = await run_inspector(*common(gw.url, era), "--method", "tools/call", "--tool-name", "time__convert_time",
                              "--tool-arg", "source_timezone=UTC", "time=12:30", "target_timezone=Asia/Tokyo")
    assert run.returncode == 0, run.stderr
    result = run.json()["result"]
    assert result["isError"] is False
    assert result["structuredContent"]["target"]["timezone"] == "Asia/Tokyo"
    assert result["structuredContent"]["target"]["datetime"].endswith("21:30:00+09:00")
    calls = [e for e in gw.sink.events[mark:] if e.method == "tools/call"]
    assert len(calls) == 4
    assert all(e.principal == "inspector" and e.tenant == "qa" and e.tool == "convert_time" for e in calls)
    assert {e.protocol_era for e in calls} == {"legacy" if era == "legacy" else "modern"}


async def test_inspector_on_a_single_server_endpoint(gw: RunningGateway) -> None:
    run = await run_inspector(*common(gw.server_url("time"), "legacy"), "--method", "tools/call",
                              "--tool-name", "get_current_time", "--tool-arg", "timezone=Europe/Berlin")
    assert run.returncode == 0, run.stderr
    assert run.json()["result"]["structuredContent"]["timezone"] == "Europe/Berlin"


async def test_inspector_with_a_wrong_key_is_refused_and_recorded(gw: RunningGateway) -> None:
    mark = len(gw.sink.events)
    run = await run_inspector(*common(gw.url, "legacy", key="not-the-key"), "--method", "tools/list")
    assert run.returncode != 0
    assert run.error()["error"]["code"] == "auth_required", run.stderr
    refused = [e for e in gw.sink.events[mark:] if e.event_type is EventType.MESSAGE_REFUSED]
    assert refused and all(e.outcome is Outcome.UNAUTHENTICATED for e in refused)
    assert not [e for e in gw.sink.events[mark:] if e.event_type is EventType.UPSTREAM_MESSAGE_SENT]


bound_module_tests(globals(), 120)
