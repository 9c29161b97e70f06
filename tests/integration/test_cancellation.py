"""Cancellation and concurrency against a real upstream (`mcp-server-everything` over stdio).

Legacy era: `notifications/cancelled` cancels (upstream too); a dropped connection does not.
Modern era: closing the response stream is the cancellation. Several agents using the same
JSON-RPC ids and progress tokens at once never receive each other's messages.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from schemas.events import EventType, GatewayEvent
from tests.integration.rawmcp import (
    ACCEPT_BOTH,
    bound_module_tests,
    modern_body,
    modern_call,
    modern_headers,
    open_legacy,
    post,
    read_answer,
    request,
)
from tests.support.gateway import RunningGateway, everything_stdio, running_gateway

pytestmark = [pytest.mark.integration, pytest.mark.node, pytest.mark.asyncio(loop_scope="module")]

LONG_OP = "ev__trigger-long-running-operation"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gw() -> AsyncIterator[RunningGateway]:
    async with running_gateway({"servers": {"ev": everything_stdio()}}) as gateway:
        yield gateway


def is_forwarded(marker: str) -> Any:
    return lambda e: e.event_type is EventType.UPSTREAM_MESSAGE_SENT and e.method == "tools/call" \
        and marker.encode() in e.payload


def upstream_cancels(gw: RunningGateway, correlation_id: str) -> list[GatewayEvent]:
    return [e for e in gw.sink.events if e.event_type is EventType.UPSTREAM_MESSAGE_SENT
            and e.method == "notifications/cancelled" and e.correlation_id == correlation_id]


async def test_legacy_notifications_cancelled_stops_the_call_upstream(gw: RunningGateway) -> None:
    async with aiohttp.ClientSession() as http:
        session = await open_legacy(http, gw.url)
        body = request("tools/call", {"name": LONG_OP, "arguments": {"duration": 30, "steps": 3},
                                      "_meta": {"marker": "cancel-me-1"}}, id="c-1")
        call = asyncio.ensure_future(session.send(body))
        forwarded = await gw.sink.wait_for(is_forwarded("cancel-me-1"), 15)
        note = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": "c-1",
                                                                                 "reason": "user pressed stop"}}
        assert (await session.send(note)).status == 202
        answer = await asyncio.wait_for(call, 15)
        assert not [m for m in answer.messages if m.get("id") == "c-1" and "result" in m], \
            "a cancelled request gets no result"
        await gw.sink.wait_for(lambda e: e in upstream_cancels(gw, forwarded.correlation_id), 10)
        ok = await session.call("ev__echo", {"message": "after cancel"})
        assert "after cancel" in ok.result["content"][0]["text"]
        assert await session.delete() == 200


async def test_modern_stream_close_is_the_cancellation(gw: RunningGateway) -> None:
    async with aiohttp.ClientSession() as http:
        body = modern_body("tools/call", {"name": LONG_OP, "arguments": {"duration": 30, "steps": 3},
                                          "_meta": {"marker": "cancel-me-2"}}, "c-2")
        headers = {"Content-Type": "application/json", "Accept": ACCEPT_BOTH, **modern_headers("tools/call", LONG_OP)}

        async def call() -> None:
            async with http.post(gw.url, json=body, headers=headers) as resp:
                await resp.read()

        task = asyncio.ensure_future(call())
        forwarded = await gw.sink.wait_for(is_forwarded("cancel-me-2"), 15)
        task.cancel()  # closes the connection: the only way a modern agent cancels over HTTP
        await asyncio.gather(task, return_exceptions=True)
        await gw.sink.wait_for(lambda e: e in upstream_cancels(gw, forwarded.correlation_id), 10)
        answer = await modern_call(http, gw.url, "ev__echo", {"message": "still fine"})
        assert answer.status == 200


async def test_legacy_dropped_connection_is_not_a_cancellation(gw: RunningGateway) -> None:
    """2025-11-25: a disconnect SHOULD NOT be read as the client cancelling; the call completes upstream."""
    async with aiohttp.ClientSession() as http:
        session = await open_legacy(http, gw.url)
        body = request("tools/call", {"name": LONG_OP, "arguments": {"duration": 1.0, "steps": 2},
                                      "_meta": {"marker": "dropped-3"}}, id="c-3")

        async def call() -> None:
            async with http.post(gw.url, json=body, headers={"Accept": ACCEPT_BOTH, **session.headers}) as resp:
                await resp.read()

        task = asyncio.ensure_future(call())
        forwarded = await gw.sink.wait_for(is_forwarded("dropped-3"), 15)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        done = await gw.sink.wait_for(lambda e: e.event_type is EventType.UPSTREAM_MESSAGE_RECEIVED
                                      and e.correlation_id == forwarded.correlation_id and e.method == "tools/call"
                                      and b"Long running operation completed" in e.payload, 15)
        assert done.error_code is None
        assert not upstream_cancels(gw, forwarded.correlation_id)
        assert await session.delete() == 200


@pytest.mark.parametrize("era", ["legacy", "modern"])
async def test_same_ids_and_progress_tokens_from_many_agents_never_cross(gw: RunningGateway, era: str) -> None:
    agents = 6
    steps = 3
    async with aiohttp.ClientSession() as http:
        sessions = [await open_legacy(http, gw.url) for _ in range(agents)] if era == "legacy" else []

        async def one(i: int) -> list[dict[str, Any]]:
            params = {"name": LONG_OP, "arguments": {"duration": 0.3 + 0.05 * i, "steps": steps},
                      "_meta": {"progressToken": "same-token"}}
            if era == "legacy":
                answer = await sessions[i].send(request("tools/call", params, id=1))
            else:
                answer = await post(http, gw.url, modern_body("tools/call", params, 1),
                                    modern_headers("tools/call", LONG_OP))
            return answer.messages

        results = await asyncio.gather(*(one(i) for i in range(agents)))
        for i, messages in enumerate(results):
            progress = [m for m in messages if m.get("method") == "notifications/progress"]
            assert [p["params"]["progress"] for p in progress] == [1, 2, 3], (i, messages)
            assert all(p["params"]["progressToken"] == "same-token" for p in progress)
            final = messages[-1]
            assert final["id"] == 1 and "result" in final
            assert f"Duration: {0.3 + 0.05 * i:g}" in final["result"]["content"][0]["text"], (i, final)
        for session in sessions:
            assert await session.delete() == 200


async def test_json_only_agent_gets_one_json_answer_despite_progress(gw: RunningGateway) -> None:
    """An agent whose Accept has no text/event-stream gets its single JSON answer (progress is recorded,
    not streamed)."""
    async with aiohttp.ClientSession() as http:
        session = await open_legacy(http, gw.url)
        body = request("tools/call", {"name": LONG_OP, "arguments": {"duration": 0.2, "steps": 2},
                                      "_meta": {"progressToken": 5}}, id=9)
        async with http.post(gw.url, json=body, headers={**session.headers, "Accept": "application/json"}) as resp:
            answer = await read_answer(resp)
        assert answer.status == 200 and resp.headers["Content-Type"].startswith("application/json")
        assert answer.body["id"] == 9 and "result" in answer.body
        assert await session.delete() == 200


bound_module_tests(globals(), 60)
