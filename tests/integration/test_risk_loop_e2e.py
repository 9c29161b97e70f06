"""The risk → decision → enforcement loop end to end under `mcpgw up` (a subprocess, the embedded log
and store, a real MCP upstream), from the agents' side and from the audit trail's:

- a burst of calls from one principal blocks it on its next call while another keeps working; the
  block, the principal's scores and every refusal are in the store while the gateway runs; an
  operator's unblock restores it, and the engine does not block it again for the burst it forgave;
- a block the risk engine made outlives a restart, which publishes no second block for it;
- one of Grafana's own alert payloads, signed, blocks the principal it names; its resolved
  counterpart lifts the block.

The injection trigger under `mcpgw up` and on Kafka is in test_risk_loop.py, whose helpers these share.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from eventlog.base import TOPIC_DECISIONS
from eventlog.embedded import EmbeddedLog
from eventlog.embedded.reader import read_all
from ingress.grafana_alerts import sign
from schemas.codec import DecisionCodec
from schemas.decisions import Decision, DecisionSource
from tests.integration.rawmcp import bound_module_tests
from tests.integration.test_risk_loop import (
    Bystander,
    active_decisions,
    admin_query,
    call,
    injected_then_refused,
    loop_config,
    operator,
    risk_refusal,
    rows_when,
)
from tests.support.admin import BLOCKED
from tests.support.durable import MAX_BODY, GatewayProcess, WitnessUpstream

pytestmark = pytest.mark.integration

# The request-rate signal, made quick to arm: a principal's baseline counts from its first call,
# and after `warmup_s` a rate of 15/s well over that baseline is a block on its own (weight 90 at
# full strength, threshold 80). The bystander (~3 calls/s) and the ordinary calls stay under 6/s.
BURST_RISK = {"request_rate": {"warmup_s": 2.0, "min_rate_per_s": 6.0, "full_rate_per_s": 15.0}}
BASELINE_S = BURST_RISK["request_rate"]["warmup_s"] + 1.5
GRAFANA_SECRET = "grafana-secret-for-the-risk-loop"
GRAFANA_FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "grafana"


async def baseline(http: aiohttp.ClientSession, gateway: GatewayProcess, who: str, seconds: float) -> int:
    """Ordinary use: one call at a time, a pause between, for `seconds`; every call answered."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    n = 0
    while loop.time() - start < seconds:
        n += 1
        body = await call(http, gateway, who, {"n": n}, f"{who}-ordinary-{n}")
        assert "result" in body, body
        await asyncio.sleep(0.3)
    return n


async def burst_until_refused(http: aiohttp.ClientSession, gateway: GatewayProcess, who: str, at_least: int,
                              concurrency: int = 8, max_calls: int = 20_000) -> tuple[int, dict[str, Any]]:
    """`who` calls as fast as `concurrency` callers can, `at_least` calls and then until one is refused
    (a runaway client goes on a little after its block): (calls made, the first refusal)."""
    refusal: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
    made = 0

    async def caller() -> None:
        nonlocal made
        while (made < at_least or not refusal.done()) and made < max_calls:
            made += 1
            body = await call(http, gateway, who, {"n": made}, f"{who}-burst-{made}")
            if "result" not in body and not refusal.done():
                refusal.set_result(body)

    callers = [asyncio.create_task(caller()) for _ in range(concurrency)]
    await asyncio.gather(*callers)  # each stops at the refusal (or the budget), its call in flight answered
    assert refusal.done(), f"{made} calls from {who} and no refusal:\n{gateway.output_of_last_start()[-4000:]}"
    return made, refusal.result()


async def decisions_in_log(log_dir: Path) -> list[Decision]:
    """Every record of `mcp.decisions` in a stopped gateway's embedded log, in log order."""
    codec = DecisionCodec()
    async with EmbeddedLog(log_dir, read_only=True) as log:
        partitions = await log.partitions(TOPIC_DECISIONS, create=False)
        return [codec.decode(r.value) for p in partitions for r in read_all(p, MAX_BODY)]


async def test_a_burst_blocks_its_principal_until_an_operator_unblocks_it(tmp_path: Path) -> None:
    async with WitnessUpstream() as upstream, aiohttp.ClientSession() as http:
        gateway = GatewayProcess(loop_config(tmp_path / "data", upstream.url, risk=BURST_RISK), tmp_path)
        gateway.start()
        try:
            await gateway.wait_ready()
            async with Bystander(http, gateway, "bob") as bob:
                bob.phase = "baseline"
                await baseline(http, gateway, "alice", BASELINE_S)
                await bob.answered_in("baseline")

                bob.phase = "burst"
                # 200 calls, as fast as they go (most are refused once the block is out): the
                # principal's current rate stays high for seconds after.
                _, refusal = await burst_until_refused(http, gateway, "alice", at_least=200)
                blocked = risk_refusal(refusal)
                decision_id = blocked["decision_id"]
                assert decision_id.startswith("risk-") and blocked["subject"] == "alice", blocked
                assert "request_rate" in refusal["error"]["message"], refusal
                assert risk_refusal(await call(http, gateway, "alice", {"n": 0}, "alice-next")) == blocked

                bob.phase = "alice blocked"
                await bob.answered_in("alice blocked")
                [listed] = await active_decisions(http, gateway)
                assert (listed["decision_id"], listed["subject"], listed["tenant"]) == (decision_id, "alice", "acme")

                # At once, while the burst is still fresh in the engine's rate: forgiven with the score.
                # The block is confined to alice's tenant (the engine blocks a principal within its
                # tenant); an unblock naming no tenant lifts it there too, as its own decision.
                operator(gateway.config_path, "unblock", "--scope", "principal", "--subject", "alice",
                         "--reason", "burst reviewed")
                bob.phase = "alice unblocked"
                await baseline(http, gateway, "alice", 2.0)  # every call answered: restored, and not re-blocked
                # carol's own block is published only after everything recorded before her poisoned
                # result was assessed: had alice's ordinary calls re-blocked her, it would be out by now.
                await injected_then_refused(http, gateway, 15, who="carol")
                assert "result" in await call(http, gateway, "alice", {"n": 0}, "alice-last"), "alice re-blocked"
                assert [d["subject"] for d in await active_decisions(http, gateway)] == ["carol"]
                await bob.answered_in("alice unblocked")
            assert bob.refused() == [], bob.refused()[:3]

            # The audit trail, read through the running gateway's admin API.
            decisions = await rows_when(
                lambda: admin_query(http, gateway, "SELECT decision_id, action, tenant, source, actor, risk_score "
                                    "FROM audit.decisions WHERE subject = 'alice' ORDER BY ts, decision_id"),
                lambda rows: len(rows) == 3, 30, "alice's block and unblocks in audit.decisions")
            block, unblock_all, unblock = decisions
            assert (unblock_all["action"], unblock_all["tenant"]) == ("unblock", None)
            assert block == {"decision_id": decision_id, "action": "block", "tenant": "acme", "source": "risk_engine",
                             "actor": "rule:score_over_threshold", "risk_score": block["risk_score"]}
            assert block["risk_score"] >= 80
            assert (unblock["action"], unblock["tenant"], unblock["source"]) == ("unblock", "acme", "operator")
            scores = await admin_query(http, gateway, "SELECT score, reasons, signals FROM audit.risk_scores "
                                       "WHERE tenant = 'acme' AND principal = 'alice' ORDER BY ts")
            assert any(s["score"] == block["risk_score"] and "request_rate" in s["reasons"] for s in scores), scores
            assert await admin_query(http, gateway, "SELECT score FROM audit.risk_scores WHERE principal = 'bob' "
                                     "AND score >= 80") == []
            refusals = await rows_when(
                lambda: admin_query(http, gateway, "SELECT principal, kind, direction, error_code FROM audit.events "
                                    f"WHERE outcome = 'blocked' AND position(payload, '{decision_id}') > 0"),
                lambda rows: len(rows) >= 2, 30, "alice's refusals in audit.events")
            assert {(r["principal"], r["kind"], r["direction"], r["error_code"]) for r in refusals} == {
                ("alice", "error", "gateway_to_agent", BLOCKED)}
            assert await admin_query(http, gateway, "SELECT event_id FROM audit.events WHERE principal = 'bob' "
                                     "AND outcome != 'ok'") == []
        finally:
            gateway.stop_quietly()


async def test_a_restarted_gateway_enforces_the_engines_block_and_publishes_it_once(tmp_path: Path) -> None:
    async with WitnessUpstream() as upstream, aiohttp.ClientSession() as http:
        gateway = GatewayProcess(loop_config(tmp_path / "data", upstream.url), tmp_path)
        gateway.start()
        try:
            await gateway.wait_ready()
            message = await injected_then_refused(http, gateway, 15)
            assert "injection_marker" in message
            blocked = risk_refusal(await call(http, gateway, "alice", {"n": 0}, "alice-before-restart"))
            assert "result" in await call(http, gateway, "bob", {"n": 0}, "bob-before-restart")

            assert gateway.terminate() == 0, gateway.output_of_last_start()[-4000:]
            gateway.start()
            await gateway.wait_ready()
            # The first call after the restart: the ingress rebuilt its blocklist before serving.
            assert risk_refusal(await call(http, gateway, "alice", {"n": 1}, "alice-after-restart")) == blocked
            assert "result" in await call(http, gateway, "bob", {"n": 1}, "bob-after-restart")
            # The rebuilt engine has seen alice's poisoned result again; carol's block shows it has
            # assessed everything before hers, so a second block for alice would be out by now.
            await injected_then_refused(http, gateway, 15, who="carol")
            assert sorted(d["subject"] for d in await active_decisions(http, gateway)) == ["alice", "carol"]
            assert gateway.terminate() == 0, gateway.output_of_last_start()[-4000:]
        finally:
            gateway.stop_quietly()

    published = await decisions_in_log(tmp_path / "data" / "log")
    by_engine = [(d.subject, d.decision_id) for d in published if d.source is DecisionSource.RISK_ENGINE]
    assert [subject for subject, _ in by_engine] == ["alice", "carol"], by_engine
    assert by_engine[0][1] == blocked["decision_id"]


def grafana_payload(fixture: str) -> bytes:
    return (GRAFANA_FIXTURES / fixture).read_bytes()


async def post_alert(http: aiohttp.ClientSession, gateway: GatewayProcess, body: bytes) -> dict[str, Any]:
    headers = {"Content-Type": "application/json", **sign(GRAFANA_SECRET, body, int(time.time()))}
    async with http.post(f"{gateway.base}/admin/alerts/grafana", data=body, headers=headers) as r:
        answer: dict[str, Any] = await r.json()
        assert r.status == 200, answer
    return answer


async def test_a_grafana_alert_blocks_the_principal_it_names_until_it_resolves(tmp_path: Path) -> None:
    async with WitnessUpstream() as upstream, aiohttp.ClientSession() as http:
        config = loop_config(tmp_path / "data", upstream.url)
        config["admin"]["grafana"] = {"secret": GRAFANA_SECRET}
        gateway = GatewayProcess(config, tmp_path)
        gateway.start()
        try:
            await gateway.wait_ready()
            assert "result" in await call(http, gateway, "mallory", {"n": 0}, "mallory-before")
            firing = grafana_payload("firing-block-principal.json")
            assert json.loads(firing)["alerts"][0]["labels"]["principal"] == "mallory"  # the sample, as Grafana sent it

            answer = await post_alert(http, gateway, firing)
            [decision] = answer["decisions"]
            assert (decision["action"], decision["subject"], decision["tenant"], decision["source"]) == (
                "block", "mallory", "acme", "grafana_alert")
            refused = (await call(http, gateway, "mallory", {"n": 1}, "mallory-blocked"))["error"]
            assert refused["code"] == BLOCKED and refused["data"]["decision_id"] == decision["decision_id"], refused
            assert "result" in await call(http, gateway, "alice", {"n": 1}, "alice-meanwhile")

            resolved = await post_alert(http, gateway, grafana_payload("resolved-block-principal.json"))
            assert [(d["action"], d["subject"]) for d in resolved["decisions"]] == [("unblock", "mallory")], resolved
            assert "result" in await call(http, gateway, "mallory", {"n": 2}, "mallory-after")

            rows = await rows_when(
                lambda: admin_query(http, gateway, "SELECT decision_id, action, scope, tenant, source FROM "
                                    "audit.decisions WHERE subject = 'mallory' ORDER BY ts"),
                lambda rows: len(rows) == 2, 30, "the alert's block and unblock in audit.decisions")
            assert rows == [
                {"decision_id": decision["decision_id"], "action": "block", "scope": "principal", "tenant": "acme",
                 "source": "grafana_alert"},
                {"decision_id": resolved["decisions"][0]["decision_id"], "action": "unblock", "scope": "principal",
                 "tenant": "acme", "source": "grafana_alert"},
            ]
        finally:
            gateway.stop_quietly()


bound_module_tests(globals(), 240)
