"""Upstreams over HTTP: `mcp-server-everything` as a Streamable HTTP server (`/mcp`) and as a
legacy HTTP+SSE server (`/sse`), each a real Node process on a loopback port, behind the gateway.

These exercise the connectors in `ingress/upstreams/streamable_http.py` and `sse.py`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import mcp_types as types
import pytest
import pytest_asyncio
from mcp.client.client import Client
from mcp.client.session import ClientRequestContext

from schemas.events import EventType
from tests.integration.rawmcp import bound_module_tests, modern_call, open_legacy, wait_until
from tests.peers.everything import EverythingServer, everything_server
from tests.support.gateway import RunningGateway, running_gateway

pytestmark = [pytest.mark.integration, pytest.mark.node, pytest.mark.asyncio(loop_scope="module")]

TRANSPORTS = ["streamableHttp", "sse"]


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=TRANSPORTS)
async def upstream(request: pytest.FixtureRequest) -> AsyncIterator[EverythingServer]:
    async with everything_server(request.param) as server:
        yield server


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gw(upstream: EverythingServer) -> AsyncIterator[RunningGateway]:
    async with running_gateway({"servers": {"ev": {"url": upstream.url}}}) as gateway:
        assert gateway.gateway.upstreams["ev"].transport == ("sse" if upstream.transport == "sse"
                                                              else "streamable_http")
        yield gateway


def text_of(result: types.CallToolResult) -> str:
    return "\n".join(c.text for c in result.content if isinstance(c, types.TextContent))


async def test_upstream_is_connected_and_ready(gw: RunningGateway) -> None:
    connected = gw.sink.of_type(EventType.UPSTREAM_CONNECTED)
    assert [e.server for e in connected] == ["ev"]
    async with aiohttp.ClientSession() as http, http.get(f"{gw.base}/readyz") as resp:
        assert resp.status == 200
        state = await resp.json()
    assert state["servers"]["ev"]["state"] == "ready"


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_tools_list_and_call_through_an_http_upstream(gw: RunningGateway, mode: str) -> None:
    mark = len(gw.sink.events)
    async with Client(gw.url, mode=mode) as client:
        names = {t.name for t in (await client.list_tools()).tools}
        assert {"ev__echo", "ev__get-sum", "ev__trigger-long-running-operation"} <= names
        echo = await client.call_tool("ev__echo", {"message": "over http"})
        assert "over http" in text_of(echo)
        total = await client.call_tool("ev__get-sum", {"a": 2, "b": 40})
        assert "42" in text_of(total)
    calls = [e for e in gw.sink.events[mark:] if e.method == "tools/call" and e.tool == "echo"]
    assert {e.event_type for e in calls} == {EventType.AGENT_MESSAGE_RECEIVED, EventType.UPSTREAM_MESSAGE_SENT,
                                             EventType.UPSTREAM_MESSAGE_RECEIVED, EventType.AGENT_MESSAGE_SENT}


async def test_single_server_endpoint_over_an_http_upstream(gw: RunningGateway) -> None:
    async with Client(gw.server_url("ev"), mode="legacy") as client:
        assert client.server_info is not None and "everything" in client.server_info.name
        result = await client.call_tool("echo", {"message": "direct"})
        assert "direct" in text_of(result)


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_progress_through_an_http_upstream(gw: RunningGateway, mode: str) -> None:
    progress: list[float] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(value)

    async with Client(gw.url, mode=mode) as client:
        result = await asyncio.wait_for(client.call_tool(
            "ev__trigger-long-running-operation", {"duration": 0.4, "steps": 4}, progress_callback=on_progress), 30)
    assert not result.is_error
    assert progress == [1.0, 2.0, 3.0, 4.0]


async def test_sampling_through_an_http_upstream(gw: RunningGateway) -> None:
    async def sample(context: ClientRequestContext,
                     params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        return types.CreateMessageResult(role="assistant", model="m",
                                         content=types.TextContent(type="text", text="http-sampled-7"))

    async with Client(gw.url, mode="legacy", sampling_callback=sample) as client:
        result = await asyncio.wait_for(
            client.call_tool("ev__trigger-sampling-request", {"prompt": "p", "maxTokens": 4}), 30)
    assert "http-sampled-7" in text_of(result), text_of(result)


async def test_concurrent_raw_calls_through_an_http_upstream(gw: RunningGateway) -> None:
    async with aiohttp.ClientSession() as http:
        session = await open_legacy(http, gw.url)

        async def one(i: int) -> str:
            if i % 2:
                answer = await modern_call(http, gw.url, "ev__echo", {"message": f"m{i}"}, id=i)
            else:
                answer = await session.call("ev__echo", {"message": f"m{i}"})
            return str(answer.result["content"][0]["text"])

        texts = await asyncio.gather(*(one(i) for i in range(40)))
        assert all(f"m{i}" in text for i, text in enumerate(texts))
        assert await session.delete() == 200


async def test_upstream_killed_and_restarted(upstream: EverythingServer) -> None:
    """Own gateway: the server goes away (calls fail naming it, readiness says so), then comes back
    on the same port and the gateway reconnects by itself."""
    async with running_gateway({"servers": {"ev": {"url": upstream.url}}}) as gw, aiohttp.ClientSession() as http:
        assert (await modern_call(http, gw.url, "ev__echo", {"message": "before"})).status == 200
        await upstream.kill()
        answer = await modern_call(http, gw.url, "ev__echo", {"message": "while down"}, id="down")
        assert "error" in answer.body, answer.body
        assert "'ev'" in answer.error["message"]
        await gw.sink.wait_for(lambda e: e.event_type is EventType.UPSTREAM_LOST and e.server == "ev", 15)
        await upstream.start()
        assert await gw.gateway.upstreams["ev"].wait_ready(30)
        answer = await modern_call(http, gw.url, "ev__echo", {"message": "after"}, id="up")
        assert answer.status == 200 and "after" in answer.result["content"][0]["text"]
        await wait_until(lambda: len(gw.sink.of_type(EventType.UPSTREAM_CONNECTED)) >= 2, 5, what="reconnected")


bound_module_tests(globals(), 60)
