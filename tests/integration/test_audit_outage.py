"""Audit-first when the event sink is down: nothing reaches an upstream unrecorded, every agent gets a
clear JSON-RPC error (not a bare 500), and the outage leaves nothing behind once the sink is back.

The sink is the harness's in-memory one; closing it makes `record()` raise `SinkUnavailable`, the
way a durable log that cannot take events does.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
import pytest_asyncio

from tests.integration.rawmcp import (
    Answer,
    SseStream,
    bound_module_tests,
    initialize_body,
    modern,
    modern_call,
    open_legacy,
    post,
)
from tests.support.gateway import RunningGateway, reference_server_stdio, running_gateway

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

AUDIT_UNAVAILABLE = -32011
WATCHED = "test://watched-resource"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gw() -> AsyncIterator[RunningGateway]:
    async with running_gateway({"servers": {"ref": reference_server_stdio()}}) as gateway:
        yield gateway


@pytest_asyncio.fixture(loop_scope="module")
async def http(gw: RunningGateway) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session
    gw.sink.closed = False  # every test starts and ends with a working sink


async def watched_content(http: aiohttp.ClientSession, gw: RunningGateway) -> str:
    answer = await modern(http, gw.url, "resources/read", {"uri": WATCHED}, id="read")
    return str(answer.result["contents"][0]["text"])


def assert_clear_error(answer: Answer, statuses: tuple[int, ...]) -> None:
    assert answer.status in statuses, (answer.status, answer.raw[:200])
    assert answer.headers.get("Content-Type", "").startswith("application/json"), answer.raw[:200]
    assert isinstance(json.loads(answer.raw)["error"]["code"], int)


@pytest.mark.parametrize("catalog", ["warm", "cold"])
@pytest.mark.parametrize("era", ["legacy", "modern"])
async def test_a_call_is_not_made_while_the_sink_is_down(gw: RunningGateway, http: aiohttp.ClientSession,
                                                         era: str, catalog: str) -> None:
    """`warm`: the tool list is cached, so the first write the call needs is its own event; `cold`:
    the gateway must first list the upstream's tools, and that fetch cannot be recorded either."""
    session = await open_legacy(http, gw.url) if era == "legacy" else None
    assert (await modern(http, gw.url, "tools/list", {})).status == 200
    if catalog == "cold":
        gw.gateway.catalog.invalidate("ref")
    marker = f"written-during-outage-{era}-{catalog}"
    gw.sink.closed = True
    try:
        if session is not None:
            attempt = session.call("ref__update_watched_resource", {"content": marker})
        else:
            attempt = modern_call(http, gw.url, "ref__update_watched_resource", {"content": marker}, id="w")
        answer = await asyncio.wait_for(attempt, 15)
    except TimeoutError:
        pytest.fail("the agent was left waiting: no answer within 15 s while the sink was down")
    finally:
        gw.sink.closed = False
    assert_clear_error(answer, (503,))
    assert answer.error["code"] == AUDIT_UNAVAILABLE
    assert await watched_content(http, gw) != marker, "the call reached the upstream without being recorded"
    if session is not None:
        answer = await session.call("ref__test_simple_text")
        assert answer.status == 200, "the session survives the outage"
        assert await session.delete() == 200


REFUSALS = {
    "malformed-json": (b"{nope", {}),
    "foreign-origin": (json.dumps(initialize_body()).encode(), {"Origin": "http://evil.example.com"}),
    "unknown-session": (b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}', {"Mcp-Session-Id": "f" * 32}),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
async def test_refusals_during_an_outage_are_still_clear_errors(gw: RunningGateway, http: aiohttp.ClientSession,
                                                                case: str) -> None:
    body, headers = REFUSALS[case]
    gw.sink.closed = True
    try:
        answer = await post(http, gw.url, body, headers)
    finally:
        gw.sink.closed = False
    assert_clear_error(answer, (400, 403, 404, 503))


async def test_initialize_during_an_outage_leaves_no_session_behind(gw: RunningGateway,
                                                                    http: aiohttp.ClientSession) -> None:
    before = len(gw.gateway.sessions)
    gw.sink.closed = True
    try:
        answers = [await post(http, gw.url, initialize_body(id=i)) for i in range(5)]
    finally:
        gw.sink.closed = False
    for answer in answers:
        assert_clear_error(answer, (503,))
        assert "Mcp-Session-Id" not in answer.headers
    assert len(gw.gateway.sessions) == before, "refused initializes left sessions in the registry"



async def test_sse_transport_agent_gets_an_error_not_silence(gw: RunningGateway, http: aiohttp.ClientSession) -> None:
    """HTTP+SSE: the POST is accepted (202) before the call runs, so the refusal must come back as a
    JSON-RPC error on the agent's SSE stream."""
    async with http.get(f"{gw.base}/sse", timeout=aiohttp.ClientTimeout(total=None, sock_read=None)) as resp:
        stream = SseStream(resp)
        line = b""
        while not line.startswith(b"data:"):
            line = await asyncio.wait_for(resp.content.readline(), 10)
        endpoint = gw.base + line[5:].strip().decode()
        assert (await post(http, endpoint, initialize_body(id=1))).status == 202
        assert (await stream.until(lambda m: m.get("id") == 1))["result"]
        note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        assert (await post(http, endpoint, note)).status == 202
        gw.sink.closed = True
        try:
            body = {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                    "params": {"name": "ref__update_watched_resource", "arguments": {"content": "via-sse"}}}
            accepted = await post(http, endpoint, body)
            try:
                answer = await stream.until(lambda m: m.get("id") == 2, 10)
            except TimeoutError:
                pytest.fail("no answer on the SSE stream within 10 s: the agent waits forever")
        finally:
            gw.sink.closed = False
        assert accepted.status in (202, 503)
        assert answer["error"]["code"] == AUDIT_UNAVAILABLE
    assert await watched_content(http, gw) != "via-sse"


bound_module_tests(globals(), 60)
