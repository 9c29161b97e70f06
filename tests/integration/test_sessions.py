"""Legacy-era sessions on Streamable HTTP (initialize, Mcp-Session-Id, GET stream, DELETE), and the
modern-era `subscriptions/listen` stream, fed by a real upstream's change notifications.

The upstream is the repository's reference server over stdio: its `test_trigger_tool_change` and
`update_watched_resource` tools make it send `notifications/tools/list_changed` and
`notifications/resources/updated`.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from schemas.events import EventType
from tests.integration.rawmcp import (
    LEGACY,
    LegacySession,
    SseStream,
    bound_module_tests,
    initialize_body,
    modern_body,
    modern_call,
    modern_headers,
    open_legacy,
    post,
)
from tests.support.gateway import RunningGateway, reference_server_stdio, running_gateway, time_server

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

STREAM_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_read=None, connect=10)
TRIGGER = "ref__test_trigger_tool_change"
WATCHED = "test://watched-resource"
LIST_CHANGED = "notifications/tools/list_changed"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gw() -> AsyncIterator[RunningGateway]:
    async with running_gateway({"servers": {"ref": reference_server_stdio()}}) as gateway:
        yield gateway


@pytest_asyncio.fixture(loop_scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def get_stream(http: aiohttp.ClientSession, session: LegacySession,
               accept: str = "text/event-stream") -> Any:
    return http.get(session.url, headers={**session.headers, "Accept": accept}, timeout=STREAM_TIMEOUT)


@pytest.mark.parametrize("endpoint", ["aggregate", "single"])
async def test_initialize_returns_a_visible_ascii_session_id(gw: RunningGateway, http: aiohttp.ClientSession,
                                                             endpoint: str) -> None:
    url = gw.url if endpoint == "aggregate" else gw.server_url("ref")
    answer = await post(http, url, initialize_body(), {"MCP-Protocol-Version": LEGACY})
    assert answer.status == 200
    session_id = answer.headers["Mcp-Session-Id"]
    assert re.fullmatch(r"[\x21-\x7e]+", session_id)
    assert len(session_id) >= 16, "session ids must be hard to guess"
    assert answer.result["protocolVersion"] == LEGACY
    opened = await gw.sink.wait_for(lambda e: e.event_type is EventType.SESSION_OPENED and e.session_id == session_id)
    assert opened.server == ("" if endpoint == "aggregate" else "ref")
    other = await post(http, url, initialize_body(), {"MCP-Protocol-Version": LEGACY})
    assert other.headers["Mcp-Session-Id"] != session_id


async def test_delete_ends_the_session(gw: RunningGateway, http: aiohttp.ClientSession) -> None:
    session = await open_legacy(http, gw.url)
    assert (await session.request("tools/list")).status == 200
    assert await session.delete() == 200
    await gw.sink.wait_for(lambda e: e.event_type is EventType.SESSION_CLOSED and e.session_id == session.id)
    answer = await session.request("tools/list")
    assert answer.status == 404 and answer.error["code"] == -32600
    async with get_stream(http, session) as resp:
        assert resp.status == 404
    assert await session.delete() == 404


async def test_get_stream_receives_list_changed_from_the_upstream(gw: RunningGateway,
                                                                  http: aiohttp.ClientSession) -> None:
    listener = await open_legacy(http, gw.url)
    single = await open_legacy(http, gw.server_url("ref"))
    caller = await open_legacy(http, gw.url)
    async with get_stream(http, listener) as resp, get_stream(http, single) as single_resp:
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
        assert single_resp.status == 200
        answer = await caller.call(TRIGGER)
        assert answer.status == 200 and answer.result.get("isError") is not True, answer.raw[:300]
        note = await SseStream(resp).until(lambda m: m.get("method") == LIST_CHANGED)
        assert "id" not in note
        await SseStream(single_resp).until(lambda m: m.get("method") == LIST_CHANGED)
    sent = [e for e in gw.sink.events if e.event_type is EventType.AGENT_MESSAGE_SENT and e.method == LIST_CHANGED]
    assert {listener.id, single.id} <= {e.session_id for e in sent}
    # The caller held no GET stream: the notification had nowhere to go, so it was not "sent" to it.
    assert caller.id not in {e.session_id for e in sent}
    for session in (listener, single, caller):
        assert await session.delete() == 200


async def test_a_second_get_stream_is_409(gw: RunningGateway, http: aiohttp.ClientSession) -> None:
    session = await open_legacy(http, gw.url)
    async with get_stream(http, session) as first:
        assert first.status == 200
        mark = len(gw.sink.events)
        async with get_stream(http, session) as second:
            assert second.status == 409
        assert [e for e in gw.sink.events[mark:] if e.event_type is EventType.MESSAGE_REFUSED]
        # The first stream is unaffected: it still receives what the upstream announces.
        await session.call(TRIGGER)
        await SseStream(first).until(lambda m: m.get("method") == LIST_CHANGED)
    assert await session.delete() == 200


async def test_get_stream_ends_when_the_session_is_deleted(gw: RunningGateway, http: aiohttp.ClientSession) -> None:
    session = await open_legacy(http, gw.url)
    async with get_stream(http, session) as resp:
        assert resp.status == 200
        assert await session.delete() == 200
        assert await SseStream(resp).ended(10)


async def test_get_stream_needs_an_event_stream_accept(gw: RunningGateway, http: aiohttp.ClientSession) -> None:
    session = await open_legacy(http, gw.url)
    async with get_stream(http, session, accept="application/json") as resp:
        assert resp.status == 406
    assert await session.delete() == 200


async def test_resource_updates_reach_only_subscribed_sessions(gw: RunningGateway,
                                                               http: aiohttp.ClientSession) -> None:
    subscribed = await open_legacy(http, gw.url)
    other = await open_legacy(http, gw.url)
    answer = await subscribed.request("resources/subscribe", {"uri": WATCHED})
    assert answer.status == 200 and answer.result == {}, answer.raw[:300]
    async with get_stream(http, subscribed) as sub_resp, get_stream(http, other) as other_resp:
        answer = await other.call("ref__update_watched_resource", {"content": "v2"})
        assert answer.result.get("isError") is not True, answer.raw[:300]
        updated = await SseStream(sub_resp).until(lambda m: m.get("method") == "notifications/resources/updated")
        assert updated["params"]["uri"] == WATCHED
        # Upstream notifications are delivered in order: once the later list change reached the
        # other session, an update for it would have arrived before.
        await other.call(TRIGGER)
        other_stream = SseStream(other_resp)
        await other_stream.until(lambda m: m.get("method") == LIST_CHANGED)
        assert [m["method"] for m in other_stream.seen] == [LIST_CHANGED]
    answer = await subscribed.request("resources/unsubscribe", {"uri": WATCHED})
    assert answer.status == 200
    for session in (subscribed, other):
        assert await session.delete() == 200


# -- the modern counterpart: subscriptions/listen ---------------------------------------------------


def listen_body(id: Any, notifications: dict[str, Any]) -> dict[str, Any]:
    return modern_body("subscriptions/listen", {"notifications": notifications}, id)


async def test_modern_listen_acknowledges_then_tags_notifications(gw: RunningGateway,
                                                                  http: aiohttp.ClientSession) -> None:
    async with http.post(gw.url, json=listen_body("L1", {"toolsListChanged": True}),
                         headers={"Accept": "application/json, text/event-stream",
                                  **modern_headers("subscriptions/listen")}, timeout=STREAM_TIMEOUT) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
        stream = SseStream(resp)
        ack = await stream.next()
        assert ack is not None and ack["method"] == "notifications/subscriptions/acknowledged"
        assert ack["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"] == "L1"
        assert ack["params"]["notifications"] == {"toolsListChanged": True}
        answer = await modern_call(http, gw.url, TRIGGER, {})
        assert answer.status == 200
        note = await stream.until(lambda m: m.get("method") == LIST_CHANGED)
        assert note["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"] == "L1"


async def test_modern_listen_honours_its_filter(gw: RunningGateway, http: aiohttp.ClientSession) -> None:
    headers = {"Accept": "application/json, text/event-stream", **modern_headers("subscriptions/listen")}
    async with http.post(gw.url, json=listen_body("P", {"promptsListChanged": True}), headers=headers,
                         timeout=STREAM_TIMEOUT) as prompts_only, \
            http.post(gw.url, json=listen_body("T", {"toolsListChanged": True}), headers=headers,
                      timeout=STREAM_TIMEOUT) as tools:
        prompts_stream, tools_stream = SseStream(prompts_only), SseStream(tools)
        assert (await prompts_stream.next())["method"] == "notifications/subscriptions/acknowledged"  # type: ignore[index]
        assert (await tools_stream.next())["method"] == "notifications/subscriptions/acknowledged"  # type: ignore[index]
        await modern_call(http, gw.url, TRIGGER, {})
        await tools_stream.until(lambda m: m.get("method") == LIST_CHANGED)
        await modern_call(http, gw.url, "ref__test_trigger_prompt_change", {})
        note = await prompts_stream.until(lambda m: m.get("method") == "notifications/prompts/list_changed")
        assert note["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"] == "P"
        assert [m["method"] for m in prompts_stream.seen] == ["notifications/subscriptions/acknowledged",
                                                                "notifications/prompts/list_changed"]




# -- session bookkeeping: scope, negotiation, limits, expiry ----------------------------------------


async def test_a_session_belongs_to_the_endpoint_that_opened_it(gw: RunningGateway,
                                                                http: aiohttp.ClientSession) -> None:
    aggregate = await open_legacy(http, gw.url)
    elsewhere = LegacySession(http, gw.server_url("ref"), aggregate.id)
    answer = await elsewhere.request("tools/list")
    assert answer.status == 404
    assert (await aggregate.request("tools/list")).status == 200
    assert await aggregate.delete() == 200


@pytest.mark.parametrize(("requested", "negotiated"), [("2024-11-05", "2024-11-05"), ("2025-03-26", "2025-03-26"),
                                                       ("2025-06-18", "2025-06-18"), ("1999-01-01", LEGACY)])
async def test_initialize_negotiates_the_protocol_version(gw: RunningGateway, http: aiohttp.ClientSession,
                                                          requested: str, negotiated: str) -> None:
    body = initialize_body()
    body["params"]["protocolVersion"] = requested
    answer = await post(http, gw.url, body)
    assert answer.status == 200 and answer.result["protocolVersion"] == negotiated
    session = LegacySession(http, gw.url, answer.headers["Mcp-Session-Id"])
    session_headers = {**session.headers, "MCP-Protocol-Version": negotiated}
    listed = await post(http, gw.url, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, session_headers)
    assert listed.status == 200 and listed.result["tools"]
    assert await session.delete() == 200


async def test_session_limit_is_503_until_a_session_ends() -> None:
    async with running_gateway({"servers": {"time": time_server()}, "limits": {"max_sessions": 2}}) as gw, \
            aiohttp.ClientSession() as http:
        first = await open_legacy(http, gw.url)
        second = await open_legacy(http, gw.url)
        answer = await post(http, gw.url, initialize_body())
        assert answer.status == 503 and answer.error["code"] == -32014
        assert "Mcp-Session-Id" not in answer.headers
        assert [e for e in gw.sink.events if e.event_type is EventType.MESSAGE_REFUSED and e.error_code == -32014]
        # Stateless (modern) calls need no session and are still served.
        assert (await modern_call(http, gw.url, "time__get_current_time", {"timezone": "UTC"})).status == 200
        assert await first.delete() == 200
        third = await open_legacy(http, gw.url)
        for session in (second, third):
            assert await session.delete() == 200


async def test_idle_session_expires_and_is_recorded() -> None:
    config = {"servers": {"time": time_server()}, "limits": {"session_idle_timeout_s": 0.5}}
    async with running_gateway(config) as gw, aiohttp.ClientSession() as http:
        session = await open_legacy(http, gw.url)
        closed = await gw.sink.wait_for(lambda e: e.event_type is EventType.SESSION_CLOSED
                                        and e.session_id == session.id, 10)
        assert "idle" in closed.detail
        answer = await session.request("tools/list")
        assert answer.status == 404


bound_module_tests(globals(), 60)
