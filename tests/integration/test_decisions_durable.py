"""Decisions on a durable log: recorded in `mcp.decisions`, rebuilt by a restarted gateway before it
serves, followed live by every Kafka replica; and the admin audit query of a running `mcpgw up`.

Gateways here are wired as `mcpgw.runner.serve` wires them (event log, decision log, ports), in
this process, or are `mcpgw up` itself as a subprocess (chDB audit store).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from eventlog.base import TOPIC_DECISIONS
from eventlog.embedded import EmbeddedLog
from eventlog.embedded.reader import read_all
from ingress.gateway import Gateway
from ingress.http.app import build_app, start_runner
from mcpgw.config import parse_config
from mcpgw.decisions_runtime import open_gateway_ports
from mcpgw.sinks import open_event_log
from schemas.codec import DecisionCodec
from schemas.events import EventType, Outcome
from tests.eventlog.kafka_fixture import TansuBroker, require_tansu, running_tansu
from tests.integration.rawmcp import bound_module_tests, modern_call
from tests.support.admin import ADMIN_TOKEN, active, admin, assert_blocked_by, assert_ok, bearer, decide, sha256
from tests.support.durable import (
    MAX_BODY,
    DurableGateway,
    GatewayProcess,
    WitnessUpstream,
    gateway_config,
    read_embedded_events,
    wait_for,
)
from tests.support.gateway import free_port, time_server

pytestmark = pytest.mark.integration

ALICE_KEY = "alice-key-for-durable-decisions-01"
BOB_KEY = "bob-key-for-durable-decisions-0234"
ALICE, BOB = bearer(ALICE_KEY), bearer(BOB_KEY)
ECHO = "fast__echo"


def base(gw: DurableGateway) -> str:
    return f"http://127.0.0.1:{gw.port}"


def with_keys(config: dict[str, Any]) -> dict[str, Any]:
    config["auth"] = {"api_keys": [
        {"key_sha256": sha256(ALICE_KEY), "principal": "alice", "tenant": "acme"},
        {"key_sha256": sha256(BOB_KEY), "principal": "bob", "tenant": "acme"},
    ]}
    config["admin"] = {"token_sha256": sha256(ADMIN_TOKEN)}
    return config


@contextlib.asynccontextmanager
async def serving(config: dict[str, Any]) -> AsyncIterator[DurableGateway]:
    """A gateway wired as `serve()` wires it (without the audit consumer), in this event loop."""
    parsed = parse_config({**config, "listen": {"host": "127.0.0.1", "port": free_port()}})
    instance = f"test-{uuid.uuid4().hex[:8]}"
    async with AsyncExitStack() as stack:
        opened = await open_event_log(parsed, instance, stack)
        ports = await open_gateway_ports(parsed, opened.local_log, None, stack)
        gateway = Gateway(parsed, opened.sink, instance, decision_log=ports.decision_log,
                          audit_query=ports.audit_query)
        runner = await start_runner(build_app(gateway))  # the decision rebuild happens here, before the site listens
        stack.push_async_callback(runner.cleanup)
        await web.TCPSite(runner, "127.0.0.1", parsed.listen.port).start()
        for upstream in gateway.upstreams.values():
            assert await upstream.wait_ready(30), gateway.readiness()
        yield DurableGateway(gateway, opened.sink, parsed, instance)


async def call(http: aiohttp.ClientSession, served: DurableGateway | GatewayProcess, who: dict[str, str],
               tag: str = "t") -> Any:
    return await modern_call(http, served.url, ECHO, {"tag": tag}, extra=who)


async def test_decisions_are_recorded_in_their_topic_and_a_restarted_gateway_enforces_them(tmp_path: Path) -> None:
    async with WitnessUpstream() as upstream, aiohttp.ClientSession() as http:
        config = with_keys(gateway_config(tmp_path, upstream.url))
        async with serving(config) as first:
            alice = await decide(http, base(first), scope="principal", subject="alice", reason="stolen key")
            brief = await decide(http, base(first), scope="principal", subject="bob", ttl_s=0.3, reason="brief")
            tool = await decide(http, base(first), scope="tool", subject=ECHO, tenant="globex", reason="not acme")
            assert_blocked_by(await call(http, first, ALICE), alice)
            listed = {d["decision_id"] for d in await active(http, base(first))}
            assert {alice["decision_id"], tool["decision_id"]} <= listed

        remaining_us = brief["expires_at"] - time.time_ns() // 1000
        if remaining_us > 0:
            await asyncio.sleep(remaining_us / 1e6)  # bob's block is over before the restart

        # The topic holds each decision under its compaction key, Avro-encoded.
        codec = DecisionCodec()
        async with EmbeddedLog(tmp_path / "log", read_only=True) as log:
            records = [r for p in await log.partitions(TOPIC_DECISIONS, create=False) for r in read_all(p, MAX_BODY)]
        stored = {r.key: codec.decode(r.value) for r in records}
        assert set(stored) == {b"principal:alice", b"principal:bob", f"tool:{ECHO}@globex".encode()}
        assert stored[b"principal:alice"].decision_id == alice["decision_id"]
        assert stored[b"principal:alice"].reason == "stolen key" and stored[b"principal:alice"].actor == "admin"

        async with serving(config) as second:
            # The very first call after the restart is refused: the rebuild ran before serving.
            assert_blocked_by(await call(http, second, ALICE), alice)
            assert_ok(await call(http, second, BOB))  # bob's block expired meanwhile
            assert {d["decision_id"] for d in await active(http, base(second))} == {alice["decision_id"],
                                                                                   tool["decision_id"]}
            await decide(http, base(second), action="unblock", scope="principal", subject="alice")
            assert_ok(await call(http, second, ALICE))

        async with serving(config) as third:
            assert_ok(await call(http, third, ALICE))  # the unblock is folded too
            assert [d["decision_id"] for d in await active(http, base(third))] == [tool["decision_id"]]

    events = [s.event for s in await read_embedded_events(tmp_path / "log")]
    rebuilds = [e for e in events if e.event_type is EventType.DECISION_APPLIED and e.method == "decisions/rebuild"]
    assert [r.detail.split(":")[1].strip() for r in rebuilds][:1] == ["0 decision(s) read; 0 block(s) in force"]
    assert "3 decision(s) read, 1 expired; 2 block(s) in force" in rebuilds[1].detail
    assert alice["decision_id"] in rebuilds[1].detail and tool["decision_id"] in rebuilds[1].detail
    assert "4 decision(s) read, 1 expired; 1 block(s) in force" in rebuilds[2].detail
    applied = [e for e in events if e.event_type is EventType.DECISION_APPLIED and e.method.startswith("decisions/")
               and e.method != "decisions/rebuild"]
    assert [(e.method, e.principal, e.tool) for e in applied] == [
        ("decisions/block", "alice", ""), ("decisions/block", "bob", ""), ("decisions/block", "gateway", ECHO),
        ("decisions/unblock", "alice", "")]
    assert brief["decision_id"] in applied[1].detail
    blocked = [e for e in events if e.outcome is Outcome.BLOCKED]
    assert len(blocked) == 2 and all(e.principal == "alice" and e.error_code == -32012 for e in blocked)


async def test_an_undecodable_decision_is_skipped_with_an_error_and_the_feed_goes_on(tmp_path: Path) -> None:
    async with EmbeddedLog(tmp_path / "log") as log:  # written before the gateway starts: a foreign producer
        await log.producer().append(TOPIC_DECISIONS, b"principal:alice", b"not an avro decision")
    async with WitnessUpstream() as upstream, aiohttp.ClientSession() as http, \
            serving(with_keys(gateway_config(tmp_path, upstream.url))) as served:
        assert_ok(await call(http, served, ALICE))
        decision_log = served.gateway.decisions.log
        assert decision_log is not None
        await decision_log.producer.append(TOPIC_DECISIONS, b"principal:bob", b"\xc3\x01garbage")
        decision = await decide(http, base(served), scope="principal", subject="bob")
        assert_blocked_by(await call(http, served, BOB), decision)  # applied after the bad record
    events = [s.event for s in await read_embedded_events(tmp_path / "log")]
    [rebuild] = [e for e in events if e.method == "decisions/rebuild"]
    assert rebuild.outcome is Outcome.ERROR and "0 decision(s) read, 1 undecodable skipped" in rebuild.detail
    skipped = [e for e in events if e.event_type is EventType.DECISION_APPLIED and "skipped an undecodable" in e.detail]
    assert len(skipped) == 2 and all(e.outcome is Outcome.ERROR for e in skipped)
    assert skipped[0].payload == b"not an avro decision" and "mcp.decisions[0]@0" in skipped[0].detail


async def test_kafka_replicas_all_follow_the_decisions_topic(tmp_path: Path) -> None:
    with running_tansu(require_tansu()) as broker:
        await _kafka_replicas(broker, tmp_path)


async def _kafka_replicas(broker: TansuBroker, tmp_path: Path) -> None:
    kafka = {"bootstrap_servers": broker.bootstrap, "enable_idempotence": False, "request_timeout_ms": 3000}
    async with WitnessUpstream() as upstream, aiohttp.ClientSession() as http:
        def replica(name: str) -> dict[str, Any]:
            return with_keys(gateway_config(tmp_path / name, upstream.url, event_log={"kafka": kafka}))

        async with serving(replica("a")) as a, serving(replica("b")) as b:
            assert_ok(await call(http, b, ALICE))
            decision = await decide(http, base(a), scope="principal", subject="alice", reason="seen on A")
            assert_blocked_by(await call(http, a, ALICE), decision)  # in force on A when A answered

            async def refused_on_b() -> bool:
                return "error" in (await call(http, b, ALICE)).body

            await wait_for(refused_on_b, 10, "replica B to apply A's decision", interval_s=0.05)
            assert_blocked_by(await call(http, b, ALICE), decision)
            assert_ok(await call(http, b, BOB))
        async with serving(replica("b")) as restarted:
            assert_blocked_by(await call(http, restarted, ALICE), decision)
            await decide(http, base(restarted), action="unblock", scope="principal", subject="alice")
            assert_ok(await call(http, restarted, ALICE))


async def test_mcpgw_up_answers_audit_queries_refuses_writes_and_enforces_after_a_restart(tmp_path: Path) -> None:
    config = with_keys({
        "listen": {"host": "127.0.0.1", "port": free_port()},
        "data_dir": str(tmp_path / "data"),
        "servers": {"time": time_server()},
    })
    process = GatewayProcess(config, tmp_path)
    process.start()
    try:
        await process.wait_ready(60)
        async with aiohttp.ClientSession() as http:
            tool = "time__get_current_time"
            decision = await decide(http, process.base, scope="principal", subject="alice", reason="audit test")
            refused = await modern_call(http, process.url, tool, {"timezone": "UTC"}, id="q-1", extra=ALICE)
            assert_blocked_by(refused, decision)

            async def query(sql: str) -> tuple[int, dict[str, Any]]:
                status, answer, _ = await admin(http, process.base, "POST", "/admin/audit/query", {"sql": sql})
                return status, answer

            async def stored() -> bool:
                status, answer = await query("SELECT count() FROM audit.events WHERE outcome = 'blocked'")
                assert status == 200, answer
                return bool(answer["rows"][0][0])

            await wait_for(stored, 30, "the refusal to reach the audit store")
            status, answer = await query(
                "SELECT ts, principal, error_code, payload, detail FROM audit.events "
                "WHERE outcome = 'blocked' AND jsonrpc_id = 'q-1' ORDER BY ts")
            assert status == 200, answer
            assert answer["columns"] == ["ts", "principal", "error_code", "payload", "detail"]
            assert answer["types"][0].startswith("DateTime64") and len(answer["rows"]) == 1
            ts, principal, code, payload, _ = answer["rows"][0]
            assert ts.endswith("Z") and "T" in ts and principal == "alice" and code == -32012
            assert decision["decision_id"].encode() in base64.b64decode(payload)

            for write in ("INSERT INTO audit.events (event_id) VALUES ('forged')", "DROP TABLE audit.events"):
                status, answer = await query(write)
                assert status == 400 and answer["error"], (write, answer)
            status, answer = await query("SELECT count() FROM audit.events WHERE event_id = 'forged'")
            assert answer["rows"] == [[0]]
            status, answer = await query("SELEC nonsense")
            assert status == 400 and "query failed" in answer["error"]

        assert process.terminate() == 0
        process.start()
        await process.wait_ready(60)
        async with aiohttp.ClientSession() as http:
            again = await modern_call(http, process.url, tool, {"timezone": "UTC"}, extra=ALICE)
            assert_blocked_by(again, decision)
            assert_ok(await modern_call(http, process.url, tool, {"timezone": "UTC"}, extra=BOB))
    finally:
        process.stop_quietly()


bound_module_tests(globals(), 240)
