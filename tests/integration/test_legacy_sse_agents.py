"""Old agents on the deprecated HTTP+SSE transport (2024-11-05): the SDK's `sse_client` against the
gateway's `/sse` and `/servers/{name}/sse`, plus the raw edges of `/messages`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import mcp_types as types
import pytest
import pytest_asyncio
from mcp.client.client import Client
from mcp.client.session import ClientRequestContext
from mcp.client.sse import sse_client

from schemas.events import EventType
from tests.integration.rawmcp import bound_module_tests, initialize_body, post, wait_until
from tests.support.gateway import RunningGateway, everything_stdio, running_gateway, time_server

pytestmark = [
    pytest.mark.integration,
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning"),
]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gw() -> AsyncIterator[RunningGateway]:
    async with running_gateway({"servers": {"time": time_server()}}) as gateway:
        yield gateway


def text_of(result: types.CallToolResult) -> str:
    return "\n".join(c.text for c in result.content if isinstance(c, types.TextContent))


@pytest.mark.parametrize("endpoint", ["aggregate", "single"])
async def test_sdk_sse_client_lists_and_calls_tools(gw: RunningGateway, endpoint: str) -> None:
    url = f"{gw.base}/sse" if endpoint == "aggregate" else f"{gw.base}/servers/time/sse"
    tool = "time__get_current_time" if endpoint == "aggregate" else "get_current_time"
    mark = len(gw.sink.events)
    async with Client(sse_client(url), mode="legacy") as client:
        names = [t.name for t in (await client.list_tools()).tools]
        assert tool in names
        result = await client.call_tool(tool, {"timezone": "Asia/Tokyo"})
        assert not result.is_error and "Asia/Tokyo" in text_of(result)
        assert isinstance(await client.send_ping(), types.EmptyResult)
    events = gw.sink.events[mark:]
    opened = [e for e in events if e.event_type is EventType.SESSION_OPENED and e.transport == "sse"]
    assert len(opened) == 1
    session_id = opened[0].session_id
    calls = [e for e in events if e.method == "tools/call"]
    assert len(calls) == 4 and all(e.session_id == session_id and e.transport == "sse" for e in calls)
    # Closing the SSE connection ends the session, and that is recorded too.
    await gw.sink.wait_for(lambda e: e.event_type is EventType.SESSION_CLOSED and e.session_id == session_id, 10)
    await wait_until(lambda: session_id not in {s.id for s in gw.gateway.sessions}, 5, what="session released")


async def test_several_sse_agents_at_once_get_their_own_answers(gw: RunningGateway) -> None:
    zones = ["Europe/Paris", "America/New_York", "Asia/Kolkata", "Australia/Sydney"]

    async def one(zone: str) -> str:
        async with Client(sse_client(f"{gw.base}/sse"), mode="legacy") as client:
            results = [await client.call_tool("time__get_current_time", {"timezone": zone}) for _ in range(3)]
        return "\n".join(text_of(r) for r in results)

    texts = await asyncio.wait_for(asyncio.gather(*(one(z) for z in zones)), 60)
    for zone, text in zip(zones, texts, strict=True):
        assert text.count(zone) == 3, (zone, text)


async def test_messages_for_an_unknown_session_are_404(gw: RunningGateway) -> None:
    async with aiohttp.ClientSession() as http:
        mark = len(gw.sink.events)
        answer = await post(http, f"{gw.base}/messages?sessionId=00000000000000000000000000000000",
                            initialize_body())
        assert answer.status == 404
        assert [e for e in gw.sink.events[mark:] if e.event_type is EventType.MESSAGE_REFUSED]


async def test_malformed_message_on_an_sse_session_is_400_and_the_session_survives(gw: RunningGateway) -> None:
    async with aiohttp.ClientSession() as http, http.get(f"{gw.base}/sse") as stream:
        line = b""
        while not line.startswith(b"data:"):
            line = await asyncio.wait_for(stream.content.readline(), 10)
        endpoint = gw.base + line[5:].strip().decode()
        answer = await post(http, endpoint, b"{not json")
        assert answer.status == 400 and answer.error["code"] == -32700
        answer = await post(http, endpoint, initialize_body(id=5))
        assert answer.status == 202
        # The answer to initialize travels on the SSE stream.
        data = b""
        while b'"id":5' not in data:
            data = await asyncio.wait_for(stream.content.readline(), 10)
        assert b'"protocolVersion"' in data


@pytest.mark.node
async def test_sse_agent_gets_progress_and_sampling_from_everything() -> None:
    async def sample(context: ClientRequestContext,
                     params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        return types.CreateMessageResult(role="assistant", model="m",
                                         content=types.TextContent(type="text", text="over-sse-42"))

    progress: list[float] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(value)

    async with running_gateway({"servers": {"ev": everything_stdio()}}) as gw, \
            Client(sse_client(f"{gw.base}/sse"), mode="legacy", sampling_callback=sample) as client:
        result = await client.call_tool("ev__trigger-long-running-operation", {"duration": 0.3, "steps": 3},
                                        progress_callback=on_progress)
        assert not result.is_error
        assert progress == [1.0, 2.0, 3.0]
        sampled = await client.call_tool("ev__trigger-sampling-request", {"prompt": "hi", "maxTokens": 5})
        assert "over-sse-42" in text_of(sampled)


bound_module_tests(globals(), 60)
