"""Lists show a caller only what it may call: a real gateway in front of two real MCP servers
(mcp-server-time and the reference server), blocks set through the admin API.

A tool-scope block takes the tool out of `tools/list` on `/mcp` and on `/servers/{name}/mcp` for
the callers it covers; a server-scope block takes all of that server's tools, prompts, resources
and templates out of the aggregated lists (its own endpoint refuses everything). The audit records
the list as the agent received it, and says how much was withheld. Pages are small (3), so every
listing here walks several pages.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
import pytest_asyncio

from schemas.events import EventType, GatewayEvent, Outcome
from tests.integration.rawmcp import LegacySession, bound_module_tests, modern, open_legacy
from tests.support.admin import ADMIN_TOKEN, active, assert_blocked_by, bearer, decide, sha256
from tests.support.gateway import RunningGateway, reference_server_stdio, running_gateway, time_server

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

ALICE_KEY = "alice-key-for-list-visibility-0123"
BOB_KEY = "bob-key-for-list-visibility-4567890"
ALICE, BOB = bearer(ALICE_KEY), bearer(BOB_KEY)  # tenants acme and globex
PAGE_SIZE = 3
KEY = {"tools/list": ("tools", "name"), "prompts/list": ("prompts", "name"),
       "resources/list": ("resources", "uri"), "resources/templates/list": ("resourceTemplates", "uriTemplate")}
_ids = iter(range(1, 1_000_000))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gw() -> AsyncIterator[RunningGateway]:
    config = {
        "servers": {"time": time_server(), "ref": reference_server_stdio()},
        "auth": {"api_keys": [
            {"key_sha256": sha256(ALICE_KEY), "principal": "alice", "tenant": "acme"},
            {"key_sha256": sha256(BOB_KEY), "principal": "bob", "tenant": "globex"},
        ]},
        "admin": {"token_sha256": sha256(ADMIN_TOKEN)},
        "limits": {"page_size": PAGE_SIZE},
    }
    async with running_gateway(config) as gateway:
        yield gateway


@pytest_asyncio.fixture(loop_scope="module")
async def http(gw: RunningGateway) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session
        for block in await active(session, gw.base):  # each test starts with nothing blocked
            await decide(session, gw.base, action="unblock", scope=block["scope"], subject=block["subject"],
                         tenant=block["tenant"], reason="test cleanup")


async def listing(http: aiohttp.ClientSession, url: str, method: str, who: dict[str, str],
                  legacy: LegacySession | None = None) -> tuple[list[str], list[str]]:
    """Every page of a list, walked by its cursors: the items' keys (each once) and the request ids."""
    result_key, key_field = KEY[method]
    keys: list[str] = []
    ids: list[str] = []
    cursor: str | None = None
    for _ in range(100):
        params = {"cursor": cursor} if cursor else {}
        if legacy is not None:
            answer = await legacy.request(method, params)
            ids.append(str(legacy.next_id))
        else:
            ids.append(f"list-{next(_ids)}")
            answer = await modern(http, url, method, params, id=ids[-1], extra=who)
        assert answer.status == 200, answer.raw[:300]
        result = answer.result
        keys.extend(item[key_field] for item in result[result_key])
        cursor = result.get("nextCursor")
        if not cursor:
            assert len(keys) == len(set(keys)), f"a page repeated an item: {keys}"
            return keys, ids
    raise AssertionError("the listing does not end")


def sent(gw: RunningGateway, ids: list[str]) -> list[GatewayEvent]:
    """The answers the agent received to these requests, as the audit recorded them."""
    events = [e for e in gw.sink.events if e.event_type is EventType.AGENT_MESSAGE_SENT and e.jsonrpc_id in ids]
    assert len(events) == len(ids)
    return events


def withheld_in(events: list[GatewayEvent]) -> int:
    total = 0
    for event in events:
        if event.detail:
            words = event.detail.split()
            assert words[0] == "withheld" and words[2] == "blocked", event.detail
            total += int(words[1])
    return total


async def test_a_tool_block_hides_the_tool_on_both_endpoints_until_lifted(
        gw: RunningGateway, http: aiohttp.ClientSession) -> None:
    before, _ = await listing(http, gw.url, "tools/list", ALICE)
    assert {"time__get_current_time", "time__convert_time", "ref__echo"} <= set(before)
    single_before, _ = await listing(http, gw.server_url("time"), "tools/list", BOB)
    assert set(single_before) == {"get_current_time", "convert_time"}

    decision = await decide(http, gw.base, scope="tool", subject="time__get_current_time")
    for who in (ALICE, BOB):
        after, ids = await listing(http, gw.url, "tools/list", who)
        assert after == [name for name in before if name != "time__get_current_time"]
        events = sent(gw, ids)
        assert withheld_in(events) == 1 and "withheld 1 blocked tool" in [e.detail for e in events]
        assert all(b"get_current_time" not in e.payload for e in events)  # recorded as the agent got it
        single, ids = await listing(http, gw.server_url("time"), "tools/list", who)
        assert single == ["convert_time"]
        [event] = sent(gw, ids)
        assert event.detail == "withheld 1 blocked tool" and event.outcome is Outcome.OK
        assert [t["name"] for t in json.loads(event.payload)["result"]["tools"]] == ["convert_time"]
    legacy = await open_legacy(http, gw.url, ALICE)
    assert (await listing(http, gw.url, "tools/list", ALICE, legacy))[0] == after
    # still refused by name, and named as blocked rather than unknown
    call = await modern(http, gw.url, "tools/call", {"name": "time__get_current_time",
                                                     "arguments": {"timezone": "UTC"}}, extra=ALICE)
    assert_blocked_by(call, decision)

    await decide(http, gw.base, action="unblock", scope="tool", subject="time__get_current_time")
    again, ids = await listing(http, gw.url, "tools/list", ALICE)
    assert again == before and not any(e.detail for e in sent(gw, ids))
    assert set((await listing(http, gw.server_url("time"), "tools/list", BOB))[0]) == set(single_before)


async def test_a_tenant_qualified_tool_block_hides_it_from_that_tenant_only(
        gw: RunningGateway, http: aiohttp.ClientSession) -> None:
    before, _ = await listing(http, gw.url, "tools/list", BOB)
    await decide(http, gw.base, scope="tool", subject="echo", tenant="acme")  # upstream name: every server's echo
    alice, _ = await listing(http, gw.url, "tools/list", ALICE)
    assert "ref__echo" not in alice and alice == [name for name in before if name != "ref__echo"]
    assert (await listing(http, gw.url, "tools/list", BOB))[0] == before
    assert "echo" not in (await listing(http, gw.server_url("ref"), "tools/list", ALICE))[0]
    assert "echo" in (await listing(http, gw.server_url("ref"), "tools/list", BOB))[0]


async def test_a_server_block_hides_everything_of_that_server_from_the_aggregate(
        gw: RunningGateway, http: aiohttp.ClientSession) -> None:
    before = {method: (await listing(http, gw.url, method, ALICE))[0] for method in KEY}
    for method in ("prompts/list", "resources/list", "resources/templates/list"):
        assert before[method], f"the reference server lists no {method}: nothing to check"

    decision = await decide(http, gw.base, scope="server", subject="ref")
    tools, ids = await listing(http, gw.url, "tools/list", ALICE)
    assert tools and all(name.startswith("time__") for name in tools)
    assert withheld_in(sent(gw, ids)) == len(before["tools/list"]) - len(tools)
    for method in ("prompts/list", "resources/list", "resources/templates/list"):
        keys, ids = await listing(http, gw.url, method, BOB)
        assert keys == [], (method, keys)  # time has none: all were ref's
        assert withheld_in(sent(gw, ids)) == len(before[method])
    # its own endpoint refuses every list before anything reaches the server
    for method in KEY:
        answer = await modern(http, gw.server_url("ref"), method, extra=ALICE)
        assert_blocked_by(answer, decision)
    legacy = await open_legacy(http, gw.server_url("ref"), BOB)
    assert_blocked_by(await legacy.request("tools/list"), decision)

    await decide(http, gw.base, action="unblock", scope="server", subject="ref")
    assert {method: (await listing(http, gw.url, method, ALICE))[0] for method in KEY} == before


async def test_a_server_block_in_another_tenant_hides_nothing(gw: RunningGateway,
                                                              http: aiohttp.ClientSession) -> None:
    before, _ = await listing(http, gw.url, "resources/list", ALICE)
    await decide(http, gw.base, scope="server", subject="ref", tenant="globex")
    assert (await listing(http, gw.url, "resources/list", ALICE))[0] == before
    assert (await listing(http, gw.url, "resources/list", BOB))[0] == []


bound_module_tests(globals(), 90)
