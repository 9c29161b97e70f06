"""`mcpgw replay` rebuilds the store's projections from the embedded log: `audit.events` from
`mcp.events`, and `audit.risk_scores` and `audit.decisions` from `mcp.risk` and `mcp.decisions`.
Idempotent (a replay over a complete store writes nothing), and complete (a store deleted outright
comes back row for row).

The log is made by a real `mcpgw up` in front of a real MCP upstream: ordinary calls, a hidden
directive that gets its principal blocked by the risk engine, and an operator's block and unblock.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.integration.rawmcp import bound_module_tests
from tests.integration.test_risk_loop import (
    admin_query,
    audit_query,
    call,
    injected_then_refused,
    loop_config,
    operator,
    rows_when,
)
from tests.support.durable import GatewayProcess, WitnessUpstream, mcpgw_argv
from tests.support.gateway import REPO

pytestmark = pytest.mark.integration

PROJECTIONS = ("audit.risk_scores", "audit.decisions")
# Every column, in an order that does not depend on how the rows were inserted.
SNAPSHOT = {
    "audit.events": "SELECT event_id, stream_id, seq, hash, kind, outcome, principal FROM audit.events "
                    "ORDER BY stream_id, seq",
    "audit.risk_scores": "SELECT * FROM audit.risk_scores ORDER BY score_id",
    "audit.decisions": "SELECT * FROM audit.decisions ORDER BY decision_id",
}


def snapshot(config_path: Path) -> dict[str, list[dict[str, Any]]]:
    """Every table `mcpgw replay` rebuilds, read with the gateway stopped (`mcpgw audit query`)."""
    return {table: audit_query(config_path, sql) for table, sql in SNAPSHOT.items()}


def replay(config_path: Path) -> dict[str, Any]:
    done = subprocess.run([*mcpgw_argv(), "--log-level", "WARNING", "replay", "-c", str(config_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)  # fmt: skip
    assert done.returncode == 0, (done.stdout, done.stderr)
    summary: dict[str, Any] = json.loads(done.stdout)
    assert summary["complete"] is True, summary
    return summary


def written(summary: dict[str, Any]) -> dict[str, int]:
    """Rows each table got from one replay."""
    return {"audit.events": summary["inserted"],
            **{table: summary["projections"][table]["inserted"] for table in PROJECTIONS}}


async def record_a_risk_loop(tmp_path: Path) -> GatewayProcess:
    """Run `mcpgw up` until the store holds a risk block and an operator's block and unblock; stop it."""
    async with WitnessUpstream() as upstream, aiohttp.ClientSession() as http:
        gateway = GatewayProcess(loop_config(tmp_path / "data", upstream.url), tmp_path)
        gateway.start()
        try:
            await gateway.wait_ready()
            for n in range(3):
                for who in ("alice", "bob"):
                    assert "result" in await call(http, gateway, who, {"n": n}, f"{who}-{n}")
            assert "injection_marker" in await injected_then_refused(http, gateway, 15)
            for action in ("block", "unblock"):
                await asyncio.to_thread(operator, gateway.config_path, action, "--scope", "principal", "--subject",
                                        "bob", "--reason", "replay test")
            await rows_when(lambda: admin_query(http, gateway, "SELECT source, action FROM audit.decisions"),
                            lambda rows: len(rows) == 3, 30, "the three decisions in audit.decisions")
            await rows_when(lambda: admin_query(http, gateway, "SELECT score FROM audit.risk_scores "
                                                "WHERE principal = 'alice' AND score >= 80"),
                            bool, 30, "alice's blocking score in audit.risk_scores")
            assert gateway.terminate() == 0, gateway.output_of_last_start()[-4000:]
        finally:
            gateway.stop_quietly()
    return gateway


async def test_replay_rebuilds_the_risk_and_decision_projections_idempotently(tmp_path: Path) -> None:
    gateway = await record_a_risk_loop(tmp_path)
    config = gateway.config_path
    live = await asyncio.to_thread(snapshot, config)
    assert [(d["source"], d["action"], d["subject"]) for d in live["audit.decisions"]
            if d["source"] == "risk_engine"] == [("risk_engine", "block", "alice")]
    assert len(live["audit.decisions"]) == 3 and live["audit.risk_scores"]

    # Over the store the gateway left: nothing to write, twice.
    for _ in range(2):
        summary = await asyncio.to_thread(replay, config)
        assert written(summary) == dict.fromkeys(SNAPSHOT, 0), summary
        for table in PROJECTIONS:
            assert summary["projections"][table]["already_stored"] == len(live[table]), summary
        assert await asyncio.to_thread(snapshot, config) == live

    # From nothing: every row back, the same rows.
    shutil.rmtree(tmp_path / "data" / "clickhouse")
    summary = await asyncio.to_thread(replay, config)
    assert written(summary) == {table: len(rows) for table, rows in live.items()}, summary
    assert await asyncio.to_thread(snapshot, config) == live


bound_module_tests(globals(), 300)
