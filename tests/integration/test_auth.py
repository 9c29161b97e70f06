"""API-key authentication: 401 with a Bearer challenge that points at the protected-resource
metadata, every refusal audited (without the key), and sessions bound to the principal that
opened them."""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator

import aiohttp
import pytest
import pytest_asyncio

from schemas.events import EventType, Outcome
from tests.integration.rawmcp import (
    LEGACY,
    bound_module_tests,
    initialize_body,
    modern_call,
    open_legacy,
    post,
    refused,
)
from tests.support.gateway import RunningGateway, running_gateway, time_server

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

ALICE_KEY = "alice-secret-key-0123456789"
BOB_KEY = "bob-secret-key-9876543210"
WRONG_KEY = "mallory-guessed-this-key-42"
TOOL = "time__get_current_time"
UNAUTHENTICATED = -32015


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


ALICE, BOB = bearer(ALICE_KEY), bearer(BOB_KEY)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gw() -> AsyncIterator[RunningGateway]:
    config = {
        "servers": {"time": time_server()},
        "auth": {"api_keys": [
            {"key_sha256": sha256(ALICE_KEY), "principal": "alice", "tenant": "acme", "roles": ["analyst"]},
            {"key_sha256": sha256(BOB_KEY), "principal": "bob", "tenant": "globex"},
        ]},
    }
    async with running_gateway(config) as gateway:
        yield gateway


@pytest_asyncio.fixture(loop_scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def challenge_params(header: str) -> dict[str, str]:
    scheme, _, rest = header.partition(" ")
    assert scheme == "Bearer", header
    return dict(re.findall(r'(\w+)="([^"]*)"', rest))


CREDENTIALS = {
    "missing": {},
    "wrong-key": bearer(WRONG_KEY),
    "not-bearer": {"Authorization": f"Basic {ALICE_KEY}"},
    "empty-bearer": {"Authorization": "Bearer "},
}


@pytest.mark.parametrize("endpoint", ["/mcp", "/servers/time/mcp", "/sse"])
@pytest.mark.parametrize("credentials", sorted(CREDENTIALS))
async def test_missing_or_wrong_key_is_401_with_a_bearer_challenge(gw: RunningGateway, http: aiohttp.ClientSession,
                                                                  credentials: str, endpoint: str) -> None:
    mark = len(gw.sink.events)
    url = gw.base + endpoint
    if endpoint == "/sse":
        async with http.get(url, headers=CREDENTIALS[credentials]) as resp:
            status, headers, body = resp.status, resp.headers, await resp.json()
    else:
        answer = await post(http, url, initialize_body(), CREDENTIALS[credentials])
        status, headers, body = answer.status, answer.headers, answer.body
    assert status == 401
    assert "Mcp-Session-Id" not in headers
    params = challenge_params(headers["WWW-Authenticate"])
    assert params["resource_metadata"].startswith(f"{gw.base}/.well-known/oauth-protected-resource")
    assert body["error"]["code"] == UNAUTHENTICATED
    events = [e for e in gw.sink.events[mark:] if e.event_type is EventType.MESSAGE_REFUSED]
    assert len(events) == 1 and events[0].outcome is Outcome.UNAUTHENTICATED
    assert events[0].principal in ("", "anonymous")
    # The audit trail never holds the presented secret.
    for event in gw.sink.events:
        for value in (event.payload, event.detail.encode(), event.error_message.encode()):
            assert WRONG_KEY.encode() not in value and ALICE_KEY.encode() not in value


async def test_missing_key_challenge_carries_no_error_code(gw: RunningGateway, http: aiohttp.ClientSession) -> None:
    """RFC 6750 §3.1: a request with no credentials at all SHOULD get a challenge without `error=`."""
    answer = await post(http, gw.url, initialize_body())
    assert answer.status == 401
    params = challenge_params(answer.headers["WWW-Authenticate"])
    assert "error" not in params, answer.headers["WWW-Authenticate"]
    assert "resource_metadata" in params


@pytest.mark.parametrize("endpoint", ["/mcp", "/servers/time/mcp"])
async def test_resource_metadata_names_the_endpoint_that_was_refused(gw: RunningGateway,
                                                                      http: aiohttp.ClientSession,
                                                                      endpoint: str) -> None:
    """RFC 9728 §3.3: metadata reached through a 401's `resource_metadata` must name, as `resource`,
    the URL the client called; MCP clients refuse metadata for another resource."""
    answer = await post(http, gw.base + endpoint, initialize_body())
    assert answer.status == 401
    url = challenge_params(answer.headers["WWW-Authenticate"])["resource_metadata"]
    async with http.get(url) as resp:
        assert resp.status == 200
        metadata = await resp.json()
    assert metadata["resource"] == gw.base + endpoint


async def test_unknown_server_is_not_revealed_to_an_unauthenticated_caller(gw: RunningGateway,
                                                                           http: aiohttp.ClientSession) -> None:
    """Without a key nothing about the configuration may leak: not even which servers exist."""
    answer = await post(http, f"{gw.base}/servers/nosuch/mcp", initialize_body())
    assert answer.status == 401, answer.raw[:300]
    assert b"time" not in answer.raw


@pytest.mark.parametrize("era", ["legacy", "modern"])
async def test_right_key_is_served_and_events_carry_principal_and_tenant(gw: RunningGateway,
                                                                         http: aiohttp.ClientSession,
                                                                         era: str) -> None:
    mark = len(gw.sink.events)
    if era == "modern":
        answer = await modern_call(http, gw.url, TOOL, {"timezone": "UTC"}, id="alice-1", extra=ALICE)
    else:
        session = await open_legacy(http, gw.url, ALICE)
        answer = await session.call(TOOL, {"timezone": "UTC"})
    assert answer.status == 200 and answer.result.get("isError") is not True
    calls = [e for e in gw.sink.events[mark:] if e.method == "tools/call"]
    assert len(calls) == 4
    assert all((e.principal, e.tenant) == ("alice", "acme") for e in calls), [(e.principal, e.tenant) for e in calls]
    if era == "legacy":
        opened = [e for e in gw.sink.events[mark:] if e.event_type is EventType.SESSION_OPENED]
        assert [(e.principal, e.tenant, e.session_id) for e in opened] == [("alice", "acme", session.id)]
        assert all(e.session_id == session.id for e in calls)


async def test_a_session_of_alice_is_404_for_bob(gw: RunningGateway, http: aiohttp.ClientSession) -> None:
    alice = await open_legacy(http, gw.url, ALICE)
    mark = len(gw.sink.events)
    as_bob = {"Mcp-Session-Id": alice.id, "MCP-Protocol-Version": LEGACY, **BOB}
    answer = await post(http, gw.url, {"jsonrpc": "2.0", "id": 9, "method": "tools/call",
                                       "params": {"name": TOOL, "arguments": {"timezone": "UTC"}}}, as_bob)
    assert answer.status == 404
    for verb in ("GET", "DELETE"):
        async with http.request(verb, gw.url, headers={**as_bob, "Accept": "text/event-stream"}) as resp:
            assert resp.status == 404
    # Bob's attempts are on the record as refusals, with Bob as the principal, and reached nobody.
    refusals = refused(gw.sink, where=lambda e: e in gw.sink.events[mark:])
    assert len(refusals) == 3 and all(e.principal == "bob" for e in refusals)
    assert not [e for e in gw.sink.events[mark:] if e.event_type is EventType.UPSTREAM_MESSAGE_SENT]
    # ... and the session is still Alice's.
    answer = await alice.call(TOOL, {"timezone": "UTC"})
    assert answer.status == 200 and answer.result.get("isError") is not True
    assert await alice.delete() == 200


async def test_a_legacy_sse_session_of_alice_is_404_for_bob(gw: RunningGateway, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{gw.base}/sse", headers=ALICE) as stream:
        assert stream.status == 200
        line = b""
        while not line.startswith(b"data:"):
            line = await asyncio.wait_for(stream.content.readline(), 10)
        endpoint = line[5:].strip().decode()
        assert "sessionId=" in endpoint
        answer = await post(http, gw.base + endpoint, initialize_body(), BOB)
        assert answer.status == 404
        answer = await post(http, gw.base + endpoint, initialize_body(), bearer(WRONG_KEY))
        assert answer.status == 401
        answer = await post(http, gw.base + endpoint, initialize_body(), ALICE)
        assert answer.status == 202


async def test_protected_resource_metadata_is_public(gw: RunningGateway, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{gw.base}/.well-known/oauth-protected-resource") as resp:
        assert resp.status == 200
        metadata = await resp.json()
    assert metadata["resource"].startswith(gw.base)
    assert metadata["bearer_methods_supported"] == ["header"]


bound_module_tests(globals(), 60)
