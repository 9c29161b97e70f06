"""Decisions enforced by a real gateway in front of a real MCP server (mcp-server-time), set through
the admin API: blocks by principal, tenant, session, tool and server, in both protocol eras and on
every endpoint; unblock and TTL expiry; every refusal and every admin request in the audit trail;
bad admin input refused with nothing decided.

The gateway runs on the in-memory event log here (decisions apply directly); the embedded-log and
Kafka wiring, restarts and the audit query are in test_decisions_durable.py.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from ingress.grafana_alerts import sign
from schemas.events import EventType, GatewayEvent, Outcome
from tests.integration.rawmcp import (
    bound_module_tests,
    initialize_body,
    modern,
    modern_call,
    open_legacy,
    post,
    request,
    wait_until,
)
from tests.support.admin import ADMIN_TOKEN, BLOCKED, assert_blocked_by, assert_ok, bearer, sha256
from tests.support.admin import admin as admin_request
from tests.support.admin import decide as decide_on
from tests.support.durable import wait_for
from tests.support.gateway import RunningGateway, running_gateway, time_server

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

ALICE_KEY = "alice-key-for-decision-tests-0123"
BOB_KEY = "bob-key-for-decision-tests-456789"
TOOL = "time__get_current_time"
ARGS = {"timezone": "UTC"}
GRAFANA_SECRET = "grafana-webhook-secret-for-tests"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "grafana"
ALICE, BOB = bearer(ALICE_KEY), bearer(BOB_KEY)


def decisions_config(**extra: Any) -> dict[str, Any]:
    return {
        "servers": {"time": time_server()},
        "auth": {"api_keys": [
            {"key_sha256": sha256(ALICE_KEY), "principal": "alice", "tenant": "acme"},
            {"key_sha256": sha256(BOB_KEY), "principal": "bob", "tenant": "globex"},
        ]},
        "admin": {"token_sha256": sha256(ADMIN_TOKEN), "grafana": {"secret": GRAFANA_SECRET}},
        **extra,
    }


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gw() -> AsyncIterator[RunningGateway]:
    async with running_gateway(decisions_config()) as gateway:
        yield gateway


@pytest_asyncio.fixture(loop_scope="module")
async def http(gw: RunningGateway) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session
        # Each test starts with nothing blocked: lift what it left, through the API.
        status, listed, _ = await admin(session, gw, "GET", "/admin/decisions")
        assert status == 200, listed
        for active in listed["active"]:
            undo = {"action": "unblock", "scope": active["scope"], "subject": active["subject"],
                    "tenant": active["tenant"], "reason": "test cleanup"}
            assert (await admin(session, gw, "POST", "/admin/decisions", undo))[0] == 201


async def admin(http: aiohttp.ClientSession, gw: RunningGateway, method: str, path: str,
                body: dict[str, Any] | bytes | None = None, headers: dict[str, str] | None = None
                ) -> tuple[int, dict[str, Any], dict[str, str]]:
    return await admin_request(http, gw.base, method, path, body, headers)


async def decide(http: aiohttp.ClientSession, gw: RunningGateway, **body: Any) -> dict[str, Any]:
    return await decide_on(http, gw.base, **body)


def since(gw: RunningGateway, mark: int) -> list[GatewayEvent]:
    return gw.sink.events[mark:]


# -- principal and tenant ---------------------------------------------------------------------------------


async def test_an_operator_block_refuses_that_principal_and_names_the_decision(
        gw: RunningGateway, http: aiohttp.ClientSession) -> None:
    assert_ok(await modern_call(http, gw.url, TOOL, ARGS, extra=ALICE))
    mark = len(gw.sink.events)
    decision = await decide(http, gw, scope="principal", subject="alice", reason="exfiltration suspected",
                            actor="jane")
    assert decision["action"] == "block" and decision["source"] == "operator" and decision["actor"] == "jane"
    assert decision["expires_at"] is None and decision["tenant"] is None and isinstance(decision["ts"], int)

    refused = await modern_call(http, gw.url, TOOL, ARGS, id="alice-1", extra=ALICE)
    assert_blocked_by(refused, decision)
    assert refused.error["message"].endswith("exfiltration suspected; indefinitely)")
    assert_ok(await modern_call(http, gw.url, TOOL, ARGS, extra=BOB))  # another principal keeps working
    listen = await modern(http, gw.url, "subscriptions/listen", {"notifications": {"toolsListChanged": True}},
                          extra=ALICE)
    assert_blocked_by(listen, decision)  # no change stream for a blocked principal either

    events = since(gw, mark)
    admin_in = [e for e in events if e.event_type is EventType.AGENT_MESSAGE_RECEIVED and e.method == "admin/decisions"]
    admin_out = [e for e in events if e.event_type is EventType.AGENT_MESSAGE_SENT and e.method == "admin/decisions"]
    assert len(admin_in) == len(admin_out) == 1
    assert admin_in[0].principal == "jane" and admin_in[0].jsonrpc_id == decision["decision_id"]
    assert b'"exfiltration suspected"' in admin_in[0].payload
    assert admin_out[0].outcome is Outcome.OK and decision["decision_id"].encode() in admin_out[0].payload
    applied = [e for e in events if e.event_type is EventType.DECISION_APPLIED]
    assert len(applied) == 1 and applied[0].principal == "alice" and decision["decision_id"] in applied[0].detail
    assert applied[0].seq > admin_in[0].seq  # the request was on record before it took effect
    answers = [e for e in events if e.event_type is EventType.AGENT_MESSAGE_SENT and e.jsonrpc_id == "alice-1"]
    assert len(answers) == 1
    assert answers[0].outcome is Outcome.BLOCKED and answers[0].error_code == BLOCKED
    assert answers[0].principal == "alice" and decision["decision_id"] in answers[0].error_message
    assert not [e for e in events if e.event_type is EventType.UPSTREAM_MESSAGE_SENT and e.principal == "alice"]

    status, listed, _ = await admin(http, gw, "GET", "/admin/decisions")
    assert status == 200 and listed == {"active": [decision]}

    lifted = await decide(http, gw, action="unblock", scope="principal", subject="alice", actor="jane")
    assert lifted["action"] == "unblock"
    assert_ok(await modern_call(http, gw.url, TOOL, ARGS, extra=ALICE))
    assert (await admin(http, gw, "GET", "/admin/decisions"))[1] == {"active": []}
    assert any(e.event_type is EventType.DECISION_APPLIED and f"lifted decision {decision['decision_id']}" in e.detail
               for e in since(gw, mark))


async def test_a_tenant_block_covers_its_principals_only(gw: RunningGateway, http: aiohttp.ClientSession) -> None:
    decision = await decide(http, gw, scope="tenant", subject="acme")
    assert_blocked_by(await modern_call(http, gw.url, TOOL, ARGS, extra=ALICE), decision)
    assert_ok(await modern_call(http, gw.url, TOOL, ARGS, extra=BOB))


async def test_a_block_confined_to_another_tenant_does_not_apply(gw: RunningGateway,
                                                                 http: aiohttp.ClientSession) -> None:
    await decide(http, gw, scope="principal", subject="alice", tenant="globex")  # alice is in acme
    assert_ok(await modern_call(http, gw.url, TOOL, ARGS, extra=ALICE))
    decision = await decide(http, gw, scope="principal", subject="alice", tenant="acme")
    assert_blocked_by(await modern_call(http, gw.url, TOOL, ARGS, extra=ALICE), decision)


async def test_an_unblock_naming_no_tenant_lifts_the_subject_in_every_tenant(
        gw: RunningGateway, http: aiohttp.ClientSession) -> None:
    block = await decide(http, gw, scope="principal", subject="alice", tenant="acme")
    assert_blocked_by(await modern_call(http, gw.url, TOOL, ARGS, extra=ALICE), block)
    status, answer, _ = await admin(http, gw, "POST", "/admin/decisions",
                                    {"action": "unblock", "scope": "principal", "subject": "alice", "reason": "ok"})
    assert status == 201, answer
    assert answer["decision"]["tenant"] is None
    assert [(d["action"], d["tenant"]) for d in answer["lifted"]] == [("unblock", "acme")]
    assert_ok(await modern_call(http, gw.url, TOOL, ARGS, extra=ALICE))


async def test_a_block_with_a_ttl_lifts_by_itself(gw: RunningGateway, http: aiohttp.ClientSession) -> None:
    decision = await decide(http, gw, scope="principal", subject="bob", ttl_s=0.5)
    assert decision["expires_at"] - decision["ts"] == 500_000
    refused = await modern_call(http, gw.url, TOOL, ARGS, extra=BOB)
    assert_blocked_by(refused, decision)
    assert "; until 20" in refused.error["message"]

    async def call_ok() -> bool:
        answer = await modern_call(http, gw.url, TOOL, ARGS, extra=BOB)
        return "result" in answer.body

    await wait_for(call_ok, 10, "the block to expire", interval_s=0.1)
    assert (await admin(http, gw, "GET", "/admin/decisions"))[1] == {"active": []}


# -- tool and server -----------------------------------------------------------------------------------------


async def test_a_tool_block_by_aggregated_name_refuses_that_tool_on_every_endpoint(
        gw: RunningGateway, http: aiohttp.ClientSession) -> None:
    decision = await decide(http, gw, scope="tool", subject=TOOL)
    assert_blocked_by(await modern_call(http, gw.url, TOOL, ARGS, extra=ALICE), decision)
    assert_blocked_by(await modern_call(http, gw.server_url("time"), "get_current_time", ARGS, extra=BOB), decision)
    legacy = await open_legacy(http, gw.url, ALICE)
    assert_blocked_by(await legacy.call(TOOL, ARGS), decision)
    converted = await modern_call(http, gw.url, "time__convert_time",
                                  {"source_timezone": "UTC", "time": "12:00", "target_timezone": "UTC"}, extra=ALICE)
    assert_ok(converted)  # the server's other tools still answer
    assert_ok(await legacy.request("tools/list"))
    refusals = [e for e in gw.sink.events if e.event_type is EventType.AGENT_MESSAGE_SENT
                and e.outcome is Outcome.BLOCKED and e.tool == "get_current_time"]
    assert len(refusals) >= 3 and all(e.server == "time" for e in refusals)


async def test_a_tool_block_by_upstream_name(gw: RunningGateway, http: aiohttp.ClientSession) -> None:
    decision = await decide(http, gw, scope="tool", subject="get_current_time")
    assert_blocked_by(await modern_call(http, gw.url, TOOL, ARGS, extra=BOB), decision)
    assert_blocked_by(await modern_call(http, gw.server_url("time"), "get_current_time", ARGS, extra=BOB), decision)


async def test_a_server_block_refuses_everything_forwarded_to_it(gw: RunningGateway,
                                                                 http: aiohttp.ClientSession) -> None:
    legacy = await open_legacy(http, gw.server_url("time"), BOB)  # opened before the block
    decision = await decide(http, gw, scope="server", subject="time", ttl_s=3600)
    assert_blocked_by(await modern_call(http, gw.url, TOOL, ARGS, extra=ALICE), decision)
    assert_blocked_by(await legacy.call("convert_time", {"source_timezone": "UTC", "time": "12:00",
                                                         "target_timezone": "UTC"}), decision)
    assert_ok(await legacy.request("ping"))  # answered by the gateway itself, nothing reaches the server
    assert_ok(await modern(http, gw.url, "tools/list", extra=ALICE))  # the catalog's answer, not a call
    other = await decide(http, gw, scope="server", subject="no-such-server")  # recorded though nobody has it
    assert other["subject"] == "no-such-server"


async def test_legacy_sse_agents_get_the_refusal_on_their_stream(gw: RunningGateway,
                                                                 http: aiohttp.ClientSession) -> None:
    decision = await decide(http, gw, scope="principal", subject="alice")
    async with http.get(f"{gw.base}/sse", headers=ALICE) as stream:
        line = b""
        while not line.startswith(b"data:"):
            line = await asyncio.wait_for(stream.content.readline(), 10)
        endpoint = gw.base + line[5:].strip().decode()
        assert (await post(http, endpoint, initialize_body(id=5), ALICE)).status == 202
        assert (await post(http, endpoint, request("tools/call", {"name": TOOL, "arguments": ARGS}, id=6),
                           ALICE)).status == 202
        seen = b""
        while b'"id":5' not in seen or b'"id":6' not in seen:
            seen += await asyncio.wait_for(stream.content.readline(), 10)
    assert seen.count(b'"code":-32012') == 2  # initialize too: a blocked principal starts nothing
    assert decision["decision_id"].encode() in seen


# -- sessions and notifications ----------------------------------------------------------------------------


async def test_a_session_block_refuses_that_session_and_its_notifications(
        gw: RunningGateway, http: aiohttp.ClientSession) -> None:
    blocked = await open_legacy(http, gw.url, ALICE)
    other = await open_legacy(http, gw.url, ALICE)
    decision = await decide(http, gw, scope="session", subject=blocked.id)
    assert_blocked_by(await blocked.call(TOOL, ARGS), decision)
    assert_ok(await other.call(TOOL, ARGS))
    mark = len(gw.sink.events)
    note = await blocked.send({"jsonrpc": "2.0", "method": "notifications/roots/list_changed"})
    assert note.status == 202
    refusal = await wait_until(lambda: [e for e in since(gw, mark) if e.event_type is EventType.MESSAGE_REFUSED
                                        and e.session_id == blocked.id], what="the notification's refusal")
    assert refusal[0].outcome is Outcome.BLOCKED and refusal[0].error_code == BLOCKED
    assert refusal[0].method == "notifications/roots/list_changed"
    assert decision["decision_id"] in refusal[0].error_message


# -- Grafana alerts -------------------------------------------------------------------------------------------


def grafana_alert(fixture: str, principal: str) -> bytes:
    """One of Grafana's own payloads (tests/fixtures/grafana) about `principal` of tenant acme."""
    payload = json.loads((FIXTURES / fixture).read_text())
    for alert in payload["alerts"]:
        alert["labels"]["principal"] = principal
        alert["labels"]["tenant"] = "acme"
    return json.dumps(payload).encode()


async def deliver(http: aiohttp.ClientSession, gw: RunningGateway, body: bytes,
                  signed: bool = True) -> tuple[int, dict[str, Any]]:
    headers = sign(GRAFANA_SECRET, body, int(time.time())) if signed else {}
    async with http.post(f"{gw.base}/admin/alerts/grafana", data=body,
                         headers={"Content-Type": "application/json", **headers}) as resp:
        return resp.status, await resp.json(content_type=None)


async def test_a_grafana_alert_blocks_until_it_resolves(gw: RunningGateway, http: aiohttp.ClientSession) -> None:
    firing = grafana_alert("firing-block-principal.json", "alice")
    mark = len(gw.sink.events)
    status, answer = await deliver(http, gw, firing, signed=False)
    assert status == 401 and "X-Grafana-Alerting-Signature" in answer["error"]
    assert_ok(await modern_call(http, gw.url, TOOL, ARGS, extra=ALICE))
    unsigned = [e for e in since(gw, mark) if e.method == "admin/alerts/grafana"]
    assert [(e.event_type, e.outcome) for e in unsigned] == [(EventType.MESSAGE_REFUSED, Outcome.UNAUTHENTICATED)]

    status, answer = await deliver(http, gw, firing)
    assert status == 200, answer
    [decision] = answer["decisions"]
    assert decision["source"] == "grafana_alert" and decision["tenant"] == "acme" and decision["subject"] == "alice"
    assert decision["expires_at"] - decision["ts"] == 30 * 60 * 1_000_000  # the alert's ttl label
    refused = await modern_call(http, gw.url, TOOL, ARGS, extra=ALICE)
    assert_blocked_by(refused, decision)
    assert "MCP risk over threshold" in refused.error["message"]
    again = await deliver(http, gw, firing)  # Grafana repeats notifications
    assert again == (200, {"decisions": [], "duplicates": 1, "ignored": [], "errors": []})

    status, answer = await deliver(http, gw, grafana_alert("resolved-block-principal.json", "alice"))
    assert status == 200 and [d["action"] for d in answer["decisions"]] == ["unblock"], answer
    assert_ok(await modern_call(http, gw.url, TOOL, ARGS, extra=ALICE))
    accepted = [e for e in since(gw, mark) if e.method == "admin/alerts/grafana"
                and e.event_type is EventType.AGENT_MESSAGE_RECEIVED]
    assert len(accepted) == 3 and all(e.principal == "grafana" for e in accepted)


# -- bad admin input ---------------------------------------------------------------------------------------


BAD_INPUT = {
    "unknown-scope": ({"action": "block", "scope": "user", "subject": "alice", "reason": "r"},
                      "unknown scope 'user': use one of principal, session, tenant, tool, server"),
    "missing-subject": ({"action": "block", "scope": "principal", "reason": "r"}, "subject is required"),
    "bad-json": (b'{"action": "block", ', "the body is not JSON"),
    "not-an-object": (b'["block"]', "the body must be a JSON object"),
    "bad-ttl": ({"action": "block", "scope": "principal", "subject": "alice", "reason": "r", "ttl_s": -1},
                "ttl_s must be"),
}


@pytest.mark.parametrize("case", BAD_INPUT)
async def test_bad_admin_input_is_400_and_decides_nothing(gw: RunningGateway, http: aiohttp.ClientSession,
                                                          case: str) -> None:
    body, says = BAD_INPUT[case]
    mark = len(gw.sink.events)
    status, answer, _ = await admin(http, gw, "POST", "/admin/decisions", body)
    assert status == 400 and says in answer["error"], answer
    assert set(answer) == {"error"}
    events = since(gw, mark)
    assert [e.event_type for e in events] == [EventType.MESSAGE_REFUSED]
    assert events[0].method == "admin/decisions" and events[0].outcome is Outcome.REFUSED
    assert events[0].principal == "admin" and says in events[0].error_message
    assert (await admin(http, gw, "GET", "/admin/decisions"))[1] == {"active": []}
    assert_ok(await modern_call(http, gw.url, TOOL, ARGS, extra=ALICE))


@pytest.mark.parametrize("headers", [{}, bearer("not-the-admin-token"), ALICE, {"Authorization": "Basic abc"}])
async def test_a_missing_or_wrong_admin_token_is_401_and_recorded(gw: RunningGateway, http: aiohttp.ClientSession,
                                                                  headers: dict[str, str]) -> None:
    mark = len(gw.sink.events)
    body = {"action": "block", "scope": "principal", "subject": "alice", "reason": "r"}
    status, answer, response_headers = await admin(http, gw, "POST", "/admin/decisions", body, headers)
    assert status == 401 and response_headers["WWW-Authenticate"].startswith("Bearer"), answer
    assert "admin" in answer["error"]
    for path, method in (("/admin/decisions", "GET"), ("/admin/audit/query", "POST")):
        assert (await admin(http, gw, method, path, {"sql": "SELECT 1"}, headers))[0] == 401
    events = since(gw, mark)
    assert [e.event_type for e in events] == [EventType.MESSAGE_REFUSED] * 3
    assert all(e.outcome is Outcome.UNAUTHENTICATED and e.principal == "anonymous" for e in events)
    assert [e.method for e in events] == ["admin/decisions", "admin/decisions/list", "admin/audit/query"]
    assert (await admin(http, gw, "GET", "/admin/decisions"))[1] == {"active": []}


async def test_the_audit_query_without_a_store_is_503(gw: RunningGateway, http: aiohttp.ClientSession) -> None:
    status, answer, _ = await admin(http, gw, "POST", "/admin/audit/query", {"sql": "SELECT 1"})
    assert status == 503 and "no audit store" in answer["error"]
    status, answer, _ = await admin(http, gw, "POST", "/admin/audit/query", {"query": "SELECT 1"})
    assert status == 400 and '{"sql": ' in answer["error"]


async def test_without_admin_config_the_admin_api_is_403() -> None:
    config = decisions_config()
    del config["admin"]
    async with running_gateway(config) as gateway, aiohttp.ClientSession() as session:
        for method, path in (("POST", "/admin/decisions"), ("GET", "/admin/decisions"),
                             ("POST", "/admin/audit/query")):
            status, answer, _ = await admin(session, gateway, method, path, {"sql": "SELECT 1"})
            assert status == 403
            assert answer == {"error": "the admin API is disabled: set admin.token_sha256 in the config"}
        assert (await session.post(f"{gateway.base}/admin/alerts/grafana", data=b"{}")).status == 404
        refusals = [e for e in gateway.sink.events if e.event_type is EventType.MESSAGE_REFUSED]
        assert len(refusals) == 3 and all(e.outcome is Outcome.FORBIDDEN for e in refusals)


bound_module_tests(globals(), 90)
