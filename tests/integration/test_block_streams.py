"""A block cuts the blocked caller's open server-to-agent streams, not only its next request: a real
gateway in front of the repository's reference server (stdio), decisions through the admin API.

A 2025-11-25 session's GET stream and a 2024-11-05 HTTP+SSE connection of the blocked principal
end at once, each cut on the audit trail naming the decision; another principal's stream keeps
receiving the upstream's `notifications/tools/list_changed`; the blocked caller's GET is refused
with -32012 (a new SSE connection may open: it carries only refusals); after the unblock the same
Streamable HTTP session opens a new GET stream and a new SSE connection works. A server request
aimed at a blocked agent is withheld and the upstream gets the block's error instead of waiting.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from schemas.events import Direction, EventType, GatewayEvent, Kind, Outcome
from tests.integration.rawmcp import (
    LegacySession,
    SseStream,
    bound_module_tests,
    modern_body,
    modern_headers,
    open_legacy,
    parse_sse,
    wait_until,
)
from tests.support.admin import ADMIN_TOKEN, BLOCKED, bearer, decide, sha256
from tests.support.durable import wait_for
from tests.support.gateway import RunningGateway, reference_server_stdio, running_gateway

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

ALICE_KEY = "alice-key-for-stream-block-tests-01"
BOB_KEY = "bob-key-for-stream-block-tests-0234"
ALICE, BOB = bearer(ALICE_KEY), bearer(BOB_KEY)
STREAM_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_read=None, connect=10)
TRIGGER = "ref__test_trigger_tool_change"
LIST_CHANGED = "notifications/tools/list_changed"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gw() -> AsyncIterator[RunningGateway]:
    config = {
        "servers": {"ref": reference_server_stdio()},
        "auth": {"api_keys": [
            {"key_sha256": sha256(ALICE_KEY), "principal": "alice", "tenant": "acme"},
            {"key_sha256": sha256(BOB_KEY), "principal": "bob", "tenant": "globex"},
        ]},
        "admin": {"token_sha256": sha256(ADMIN_TOKEN)},
    }
    async with running_gateway(config) as gateway:
        yield gateway


@pytest_asyncio.fixture(loop_scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def get_stream(http: aiohttp.ClientSession, session: LegacySession) -> Any:
    return http.get(session.url, headers={**session.headers, "Accept": "text/event-stream"}, timeout=STREAM_TIMEOUT)


async def streams_open(gw: RunningGateway, session_id: str) -> None:
    await wait_until(lambda: any(s.id == session_id and s.streams for s in gw.gateway.sessions),
                     what=f"the stream of session {session_id} to be registered")


async def open_sse(gw: RunningGateway, resp: aiohttp.ClientResponse) -> str:
    """Read the `endpoint` event of an HTTP+SSE connection; the session id it names."""
    lines: list[bytes] = []
    while not lines or lines[-1] != b"":
        lines.append((await resp.content.readline()).rstrip(b"\r\n"))
    assert lines[0] == b"event: endpoint", lines
    session_id = lines[1].decode().rsplit("sessionId=", 1)[1]
    await streams_open(gw, session_id)
    return session_id


def cut_events(events: list[GatewayEvent], decision_id: str) -> list[GatewayEvent]:
    return [e for e in events if e.outcome is Outcome.BLOCKED and decision_id in e.detail
            and e.event_type in (EventType.MESSAGE_REFUSED, EventType.SESSION_CLOSED)]


async def test_a_principal_block_ends_its_get_and_sse_streams_and_spares_others(
        gw: RunningGateway, http: aiohttp.ClientSession) -> None:
    alice = await open_legacy(http, gw.url, ALICE)
    bob = await open_legacy(http, gw.url, BOB)
    async with get_stream(http, alice) as alice_get, get_stream(http, bob) as bob_get, \
            http.get(f"{gw.base}/sse", headers=ALICE, timeout=STREAM_TIMEOUT) as alice_sse:
        assert alice_get.status == bob_get.status == alice_sse.status == 200
        sse_id = await open_sse(gw, alice_sse)
        await streams_open(gw, alice.id)
        await streams_open(gw, bob.id)
        mark = len(gw.sink.events)

        decision = await decide(http, gw.base, scope="principal", subject="alice", reason="stream cut test")

        assert await SseStream(alice_get).ended(10)
        assert (await alice_sse.content.read()) == b""  # the connection ended cleanly, nothing more sent
        # Bob's stream goes on: the upstream's change notification still reaches him.
        answer = await bob.call(TRIGGER)
        assert answer.status == 200 and answer.result.get("isError") is not True, answer.raw[:300]
        await SseStream(bob_get).until(lambda m: m.get("method") == LIST_CHANGED)

    events = gw.sink.events[mark:]
    applied = [e for e in events if e.event_type is EventType.DECISION_APPLIED
               and decision["decision_id"] in e.detail]
    cuts = cut_events(events, decision["decision_id"])
    get_cut = [e for e in cuts if e.session_id == alice.id]
    assert len(get_cut) == 1 and get_cut[0].event_type is EventType.MESSAGE_REFUSED, cuts
    assert get_cut[0].principal == "alice" and get_cut[0].error_code == BLOCKED
    assert get_cut[0].direction is Direction.GATEWAY_TO_AGENT and get_cut[0].kind is Kind.LIFECYCLE
    assert "GET stream ended" in get_cut[0].detail
    sse_cut = [e for e in cuts if e.session_id == sse_id]
    assert len(sse_cut) == 1 and sse_cut[0].event_type is EventType.SESSION_CLOSED, cuts
    assert sse_cut[0].principal == "alice" and "HTTP+SSE connection ended" in sse_cut[0].detail
    assert all(c.seq > applied[0].seq for c in cuts)  # the decision is on record before its effects
    assert not [e for e in cuts if e.principal == "bob"]
    # The SSE session is gone; the Streamable HTTP session stays for after the block.
    assert sse_id not in {s.id for s in gw.gateway.sessions}
    assert alice.id in {s.id for s in gw.gateway.sessions}

    # While blocked, alice's GET is refused, naming the decision (a resumption too).
    for extra in ({}, {"Last-Event-ID": "1-0"}):
        async with http.get(alice.url, headers={**alice.headers, "Accept": "text/event-stream", **extra},
                            timeout=STREAM_TIMEOUT) as again:
            assert again.status == 403
            error = (await again.json())["error"]
            assert error["code"] == BLOCKED and decision["decision_id"] in error["message"]
    refusals = [e for e in gw.sink.events[mark:] if e.event_type is EventType.MESSAGE_REFUSED
                and e.direction is Direction.AGENT_TO_GATEWAY and e.outcome is Outcome.BLOCKED]
    assert len(refusals) == 2 and {e.session_id for e in refusals} == {alice.id}

    await decide(http, gw.base, action="unblock", scope="principal", subject="alice", reason="cleared")
    # The same session opens a new GET stream, which gets what the upstream announces.
    async with get_stream(http, alice) as after, \
            http.get(f"{gw.base}/sse", headers=ALICE, timeout=STREAM_TIMEOUT) as sse_after:
        assert after.status == 200 and sse_after.status == 200
        await open_sse(gw, sse_after)
        await streams_open(gw, alice.id)
        await bob.call(TRIGGER)
        await SseStream(after).until(lambda m: m.get("method") == LIST_CHANGED)
    for session in (alice, bob):
        assert await session.delete() == 200


async def test_a_tenant_qualified_block_cuts_only_that_tenants_streams(
        gw: RunningGateway, http: aiohttp.ClientSession) -> None:
    alice = await open_legacy(http, gw.url, ALICE)
    async with get_stream(http, alice) as alice_get:
        await streams_open(gw, alice.id)
        mark = len(gw.sink.events)
        # alice is in tenant acme: a block of principal alice confined to globex does not reach her.
        other = await decide(http, gw.base, scope="principal", subject="alice", tenant="globex")
        assert not cut_events(gw.sink.events[mark:], other["decision_id"])
        session = await decide(http, gw.base, scope="session", subject=alice.id, tenant="acme")
        assert await SseStream(alice_get).ended(10)
        assert len(cut_events(gw.sink.events[mark:], session["decision_id"])) == 1
    for undo in ({"scope": "principal", "subject": "alice", "tenant": "globex"},
                 {"scope": "session", "subject": alice.id, "tenant": "acme"}):
        await decide(http, gw.base, action="unblock", **undo)
    assert await alice.delete() == 200


async def test_a_modern_listen_stream_of_a_blocked_principal_ends(
        gw: RunningGateway, http: aiohttp.ClientSession) -> None:
    body = modern_body("subscriptions/listen", {"notifications": {"toolsListChanged": True}}, "L-alice")
    headers = {"Accept": "application/json, text/event-stream", **modern_headers("subscriptions/listen"), **ALICE}
    async with http.post(gw.url, json=body, headers=headers, timeout=STREAM_TIMEOUT) as resp:
        stream = SseStream(resp)
        ack = await stream.next()
        assert ack is not None and ack["method"] == "notifications/subscriptions/acknowledged"
        mark = len(gw.sink.events)
        decision = await decide(http, gw.base, scope="tenant", subject="acme")
        assert await stream.ended(10)
        cuts = cut_events(gw.sink.events[mark:], decision["decision_id"])
        assert len(cuts) == 1 and "subscriptions/listen stream ended" in cuts[0].detail
        assert cuts[0].principal == "alice" and cuts[0].tenant == "acme"
    await decide(http, gw.base, action="unblock", scope="tenant", subject="acme")


async def test_a_block_with_a_ttl_cuts_the_stream_and_new_streams_work_once_it_expires(
        gw: RunningGateway, http: aiohttp.ClientSession) -> None:
    bob = await open_legacy(http, gw.url, BOB)
    async with get_stream(http, bob) as bob_get:
        await streams_open(gw, bob.id)
        mark = len(gw.sink.events)
        decision = await decide(http, gw.base, scope="principal", subject="bob", ttl_s=2)
        assert await SseStream(bob_get).ended(10)
        assert len(cut_events(gw.sink.events[mark:], decision["decision_id"])) == 1

    async def reopened() -> bool:
        async with get_stream(http, bob) as resp:
            if resp.status != 200:
                assert resp.status == 403 and (await resp.json())["error"]["code"] == BLOCKED
                return False
            await streams_open(gw, bob.id)
            await bob.call(TRIGGER)
            await SseStream(resp).until(lambda m: m.get("method") == LIST_CHANGED)
            return True

    await wait_for(reopened, 15, "the block to expire", interval_s=0.2)
    assert await bob.delete() == 200


async def test_a_server_request_for_a_blocked_agent_is_withheld_and_answered_upstream(
        gw: RunningGateway, http: aiohttp.ClientSession) -> None:
    """`multi_input` asks the agent two questions in turn; the block comes between them."""
    alice = await open_legacy(http, gw.url, ALICE, capabilities={"elicitation": {}})
    mark = len(gw.sink.events)
    async with http.post(gw.url, json={"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                                       "params": {"name": "ref__multi_input", "arguments": {}}},
                         headers={**alice.headers, "Accept": "application/json, text/event-stream"},
                         timeout=STREAM_TIMEOUT) as call:
        stream = SseStream(call)
        first = await stream.until(lambda m: m.get("method") == "elicitation/create")
        decision = await decide(http, gw.base, scope="principal", subject="alice", reason="mid-call")
        # The answer to the first question was asked for before the block; it still gets upstream.
        answered = await alice.send({"jsonrpc": "2.0", "id": first["id"],
                                     "result": {"action": "accept", "content": {"name": "Ada"}}})
        assert answered.status == 202, answered.raw
        rest = await call.read()
    later = [m for m in parse_sse(rest) if m.get("method") == "elicitation/create"]
    assert not later, "the second question must not reach the blocked agent"
    events = gw.sink.events[mark:]
    withheld = [e for e in events if e.event_type is EventType.MESSAGE_REFUSED and e.outcome is Outcome.BLOCKED
                and e.direction is Direction.GATEWAY_TO_AGENT and e.method == "elicitation/create"]
    assert len(withheld) == 1 and withheld[0].principal == "alice" and withheld[0].session_id == alice.id
    assert withheld[0].error_code == BLOCKED and b"elicitation/create" in withheld[0].payload
    upstream_answer = [e for e in events if e.event_type is EventType.UPSTREAM_MESSAGE_SENT
                       and e.error_code == BLOCKED]
    assert len(upstream_answer) == 1, "the upstream got the block's error instead of waiting"
    assert decision["decision_id"] in json.loads(upstream_answer[0].payload)["error"]["message"]
    await decide(http, gw.base, action="unblock", scope="principal", subject="alice")
    assert await alice.delete() == 200


bound_module_tests(globals(), 60)
