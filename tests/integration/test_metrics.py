"""GET /metrics on a real gateway in front of a real MCP server (mcp-server-time).

The counters are checked against the audit trail itself (the in-memory sink): every recorded event
counted once under its type, method, server and outcome, the tools/call latency histogram holding
exactly the final answers' latencies. Also: upstream state, blocks and refusals, bounded labels, the
admin token off loopback, and the in-process consumers' metrics under `mcpgw up`.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from mcp_types import METHOD_NOT_FOUND
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from ingress.metrics import KNOWN_METHODS, LATENCY_BOUNDS_US, OTHER, REFUSAL_OUTCOMES
from schemas.events import EventType, GatewayEvent, Outcome
from tests.integration.rawmcp import bound_module_tests, modern, modern_call, open_legacy
from tests.support.admin import ADMIN, ADMIN_TOKEN, assert_blocked_by, assert_ok, bearer, decide, sha256
from tests.support.durable import GatewayProcess
from tests.support.gateway import RunningGateway, free_port, running_gateway, time_server

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

TOOL = "time__get_current_time"
ARGS = {"timezone": "UTC"}
AGENT_KEY = "agent-key-for-metrics-tests-01234"

Families = dict[str, Metric]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gw() -> AsyncIterator[RunningGateway]:
    # An admin token is configured, yet on loopback /metrics needs none.
    async with running_gateway({"servers": {"time": time_server()},
                                "admin": {"token_sha256": sha256(ADMIN_TOKEN)}}) as gateway:
        yield gateway


@pytest_asyncio.fixture(loop_scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def get_metrics(http: aiohttp.ClientSession, base: str,
                      headers: dict[str, str] | None = None) -> tuple[int, str, dict[str, str]]:
    async with http.get(f"{base}/metrics", headers=headers) as resp:
        return resp.status, await resp.text(), dict(resp.headers)


def parse(text: str) -> Families:
    return {family.name: family for family in text_string_to_metric_families(text)}


async def scrape(http: aiohttp.ClientSession, base: str, headers: dict[str, str] | None = None) -> Families:
    status, text, resp_headers = await get_metrics(http, base, headers)
    assert status == 200, text[:500]
    assert resp_headers["Content-Type"].startswith("text/plain; version=0.0.4"), resp_headers
    return parse(text)


async def scrape_with_trail(http: aiohttp.ClientSession, gw: RunningGateway) -> tuple[Families, list[GatewayEvent]]:
    """A scrape and the events recorded when it was taken (retried if an event landed meanwhile)."""
    for _ in range(5):
        before = len(gw.sink.events)
        families = await scrape(http, gw.base)
        events = gw.sink.events
        if len(events) == before:
            return families, events
    raise AssertionError("events kept being recorded during every scrape")


def value(families: Families, sample: str, **labels: str) -> float:
    family = families[sample.removesuffix("_total").removesuffix("_bucket").removesuffix("_count")
                      .removesuffix("_sum")]
    found = [s.value for s in family.samples if s.name == sample and s.labels == labels]
    assert len(found) == 1, (sample, labels, [s for s in family.samples if s.name == sample])
    return found[0]


def counted(families: Families) -> Counter[tuple[str, str, str, str]]:
    return Counter({(s.labels["event_type"], s.labels["method"], s.labels["server"], s.labels["outcome"]): int(s.value)
                    for s in families["mcpgw_messages"].samples if s.name == "mcpgw_messages_total"})


def trail(events: Sequence[GatewayEvent], servers: Sequence[str]) -> Counter[tuple[str, str, str, str]]:
    """The audit trail, tallied under the labels /metrics promises (unknown methods and servers as (other))."""
    return Counter((e.event_type.value, e.method if e.method in KNOWN_METHODS else OTHER,
                    e.server if e.server in {"", *servers} else OTHER, e.outcome.value) for e in events)


def final_tool_call_latencies(events: Sequence[GatewayEvent], server: str) -> list[int]:
    return [e.latency_us for e in events if e.event_type is EventType.AGENT_MESSAGE_SENT
            and e.method == "tools/call" and e.server == server and e.latency_us is not None]


# -- counts from the audit trail ----------------------------------------------------------------------


async def test_tool_calls_are_counted_as_the_audit_trail_recorded_them(gw: RunningGateway,
                                                                       http: aiohttp.ClientSession) -> None:
    for i in range(5):
        assert_ok(await modern_call(http, gw.url, TOOL, ARGS, id=f"modern-{i}"))
    legacy = await open_legacy(http, gw.server_url("time"))
    assert_ok(await legacy.call("get_current_time", ARGS))

    families, events = await scrape_with_trail(http, gw)

    assert counted(families) == trail(events, ["time"])
    answered = ("agent_message_sent", "tools/call", "time", "ok")
    assert counted(families)[answered] >= 6
    latencies = final_tool_call_latencies(events, "time")
    assert len(latencies) >= 6
    assert value(families, "mcpgw_tool_call_duration_seconds_count", server="time") == len(latencies)
    assert value(families, "mcpgw_tool_call_duration_seconds_sum", server="time") == \
        pytest.approx(sum(latencies) / 1e6)
    for bound in LATENCY_BOUNDS_US:
        in_bucket = value(families, "mcpgw_tool_call_duration_seconds_bucket", server="time", le=str(bound / 1e6))
        assert in_bucket == sum(1 for us in latencies if us <= bound), bound
    assert value(families, "mcpgw_tool_call_duration_seconds_bucket", server="time", le="+Inf") == len(latencies)
    assert value(families, "mcpgw_sessions") >= 1  # the legacy session, still open
    assert value(families, "mcpgw_upstream_state", server="time", state="ready") == 1
    assert value(families, "mcpgw_event_sink_failures_total") == 0
    assert value(families, "process_cpu_seconds_total") > 0


async def test_methods_no_mcp_type_names_count_as_other(gw: RunningGateway, http: aiohttp.ClientSession) -> None:
    before = counted(await scrape(http, gw.base))
    invented = "vendor/x-unbounded-name-0042"
    answer = await modern(http, gw.url, invented, {})
    assert answer.error["code"] == METHOD_NOT_FOUND

    families, events = await scrape_with_trail(http, gw)

    after = counted(families)
    assert after == trail(events, ["time"])
    assert after[("agent_message_received", OTHER, "", "ok")] == before[("agent_message_received", OTHER, "", "ok")] + 1
    assert not [s for s in families["mcpgw_messages"].samples if invented in s.labels.values()]


# -- blocks and refusals ------------------------------------------------------------------------------


async def test_a_blocked_call_shows_in_refusals_and_its_block_in_force(gw: RunningGateway,
                                                                      http: aiohttp.ClientSession) -> None:
    before = await scrape(http, gw.base)
    decision = await decide(http, gw.base, scope="tool", subject=TOOL, reason="metrics test")
    try:
        assert_blocked_by(await modern_call(http, gw.url, TOOL, ARGS, id="blocked-1"), decision)
        during, events = await scrape_with_trail(http, gw)
    finally:
        await decide(http, gw.base, action="unblock", scope="tool", subject=TOOL)
    after = await scrape(http, gw.base)

    assert counted(during) == trail(events, ["time"])
    blocked = value(before, "mcpgw_refusals_total", outcome="blocked")
    assert value(during, "mcpgw_refusals_total", outcome="blocked") == blocked + 1
    blocked_events = [e for e in events if e.outcome is Outcome.BLOCKED and e.event_type in
                      (EventType.AGENT_MESSAGE_SENT, EventType.MESSAGE_REFUSED)]
    assert value(during, "mcpgw_refusals_total", outcome="blocked") == len(blocked_events)
    for outcome in REFUSAL_OUTCOMES:
        value(during, "mcpgw_refusals_total", outcome=outcome.value)  # every outcome is exposed, zero or not
    assert value(during, "mcpgw_blocks_active", scope="tool") == 1
    assert value(after, "mcpgw_blocks_active", scope="tool") == 0
    assert value(after, "mcpgw_decisions_applied_total") == value(before, "mcpgw_decisions_applied_total") + 2


# -- upstream state, per-gateway registries ------------------------------------------------------------


async def test_the_upstream_state_gauge_follows_a_stopped_upstream(gw: RunningGateway,
                                                                   http: aiohttp.ClientSession) -> None:
    async with running_gateway({"servers": {"clock": time_server()}}) as other:
        assert_ok(await modern_call(http, other.url, "clock__get_current_time", ARGS))
        ready = await scrape(http, other.base)
        assert value(ready, "mcpgw_upstream_state", server="clock", state="ready") == 1

        await other.gateway.upstreams["clock"].stop()
        stopped, events = await scrape_with_trail(http, other)

        assert value(stopped, "mcpgw_upstream_state", server="clock", state="stopped") == 1
        assert value(stopped, "mcpgw_upstream_state", server="clock", state="ready") == 0
        # Its own registry: this gateway's counts are its own trail's, not the module gateway's.
        assert counted(stopped) == trail(events, ["clock"])
        assert not [s for s in stopped["mcpgw_upstream_state"].samples if s.labels["server"] == "time"]


async def test_events_the_sink_refuses_are_counted_as_failures(http: aiohttp.ClientSession) -> None:
    async with running_gateway({"servers": {"clock": time_server()}}) as other:
        other.sink.closed = True  # the sink refuses everything from here on: calls fail closed
        try:
            failed = await modern_call(http, other.url, "clock__get_current_time", ARGS)
            families = await scrape(http, other.base)
        finally:
            other.sink.closed = False
        assert failed.status >= 500 or "error" in failed.body, failed.raw[:300]
        refused = value(families, "mcpgw_event_sink_failures_total")
        assert refused > 0
        # Counted when handed over, whether or not the sink took them.
        assert sum(counted(families).values()) == len(other.sink.events) + refused


# -- access off loopback ---------------------------------------------------------------------------------


def exposed_config(**extra: Any) -> dict[str, Any]:
    # 0.0.0.0 is not a loopback address, and the tests still reach it on 127.0.0.1.
    return {"listen": {"host": "0.0.0.0"},
            "auth": {"api_keys": [{"key_sha256": sha256(AGENT_KEY), "principal": "alice", "tenant": "acme"}]},
            **extra}


async def test_off_loopback_with_an_admin_token_a_scrape_needs_it(http: aiohttp.ClientSession) -> None:
    async with running_gateway(exposed_config(admin={"token_sha256": sha256(ADMIN_TOKEN)})) as exposed:
        assert not exposed.gateway.config.listen.is_loopback
        for headers in (None, bearer("not-the-admin-token"), bearer(AGENT_KEY)):
            status, text, resp_headers = await get_metrics(http, exposed.base, headers)
            assert status == 401, (headers, status, text[:300])
            assert resp_headers.get("WWW-Authenticate", "").startswith("Bearer"), resp_headers
            assert "mcpgw_messages" not in text
        refusals = [e for e in exposed.sink.events if e.event_type is EventType.MESSAGE_REFUSED
                    and e.method == "metrics"]
        assert len(refusals) == 3 and {e.outcome for e in refusals} == {Outcome.UNAUTHENTICATED}

        families = await scrape(http, exposed.base, ADMIN)
        assert value(families, "mcpgw_refusals_total", outcome="unauthenticated") == 3
        assert counted(families)[("message_refused", "metrics", "", "unauthenticated")] == 3


async def test_off_loopback_without_an_admin_token_metrics_are_open(http: aiohttp.ClientSession) -> None:
    async with running_gateway(exposed_config()) as exposed:
        families = await scrape(http, exposed.base)
        assert value(families, "mcpgw_messages_total", event_type="session_opened", method="", server="",
                     outcome="ok") == 1


# -- mcpgw up: the in-process consumers -----------------------------------------------------------------


async def test_mcpgw_up_exposes_its_consumers_metrics(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    config = {"auth": "none", "listen": {"host": "127.0.0.1", "port": free_port()}, "data_dir": str(tmp_path / "data"),
              "servers": {"time": time_server()}}
    process = GatewayProcess(config, tmp_path)
    process.start()
    try:
        await process.wait_ready(60)
        for i in range(3):
            assert_ok(await modern_call(http, process.url, TOOL, ARGS, id=f"up-{i}"))

        families = await scrape(http, process.base)
        for _ in range(240):  # until the audit consumer has stored and committed the calls
            if value(families, "mcpgw_consumer_commits_total", consumer="audit") > 0:
                break
            await asyncio.sleep(0.25)
            families = await scrape(http, process.base)
        consumers = {s.labels["consumer"] for s in families["mcpgw_consumer_consumed"].samples}
        assert {"audit", "risk"} <= consumers, consumers
        assert value(families, "mcpgw_consumer_inserted_total", consumer="audit") > 0
        assert value(families, "mcpgw_consumer_paused", consumer="audit") == 0
        offsets = [s for s in families["mcpgw_consumer_committed_offset"].samples
                   if s.labels["consumer"] == "audit" and s.labels["topic"] == "mcp.events"]
        assert offsets and sum(s.value for s in offsets) > 0
        assert value(families, "mcpgw_upstream_state", server="time", state="ready") == 1
    finally:
        await asyncio.to_thread(process.terminate)
        process.stop_quietly()


bound_module_tests(globals(), 120)
