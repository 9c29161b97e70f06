"""`mcpgw block|unblock|decisions` and `mcpgw audit query` as subprocesses against a running `mcpgw up`.

One gateway process (embedded log and store, api keys for two agents, an admin token) in front of
`bench.fast_upstream`'s server. Blocks are seen from the agents' side (the next call is refused),
from the admin API's side (`mcpgw decisions`), and in the audit store (`audit.decisions`, read with
`mcpgw audit query` while the gateway holds the store). Errors a person meets are checked for what
they tell them: no gateway running, a wrong token, no token, a rejected request.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.integration.rawmcp import modern_call
from tests.support.durable import GatewayProcess, WitnessUpstream, gateway_config, mcpgw_argv
from tests.support.gateway import REPO, free_port

pytestmark = pytest.mark.integration

ADMIN_TOKEN = "operator-cli-test-admin-token"
KEYS = {"alice": "alice-key-0123456789", "bob": "bob-key-0123456789"}


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class Run:
    code: int
    out: str
    err: str


def mcpgw(*args: str, token: str | None = ADMIN_TOKEN, timeout_s: float = 60) -> Run:
    env = {k: v for k, v in os.environ.items() if k != "MCPGW_ADMIN_TOKEN"}
    if token is not None:
        env["MCPGW_ADMIN_TOKEN"] = token
    done = subprocess.run([*mcpgw_argv(), "--log-level", "WARNING", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
    return Run(done.returncode, done.stdout, done.stderr)


async def in_thread(*args: str, token: str | None = ADMIN_TOKEN) -> Run:
    return await asyncio.to_thread(mcpgw, *args, token=token)


def operator_config(tmp_path: Path, upstream_url: str) -> dict[str, Any]:
    config = gateway_config(tmp_path / "data", upstream_url)
    config["auth"] = {"api_keys": [{"key_sha256": sha256(key), "principal": name, "tenant": "acme"}
                                   for name, key in KEYS.items()]}
    config["admin"] = {"token_sha256": sha256(ADMIN_TOKEN)}
    return config


Call = Callable[[str, str], Awaitable[dict[str, Any]]]


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[tuple[GatewayProcess, Call]]:
    async with WitnessUpstream() as upstream:
        gateway = GatewayProcess(operator_config(tmp_path, upstream.url), tmp_path)
        gateway.start()
        try:
            await gateway.wait_ready()
            async with aiohttp.ClientSession() as http:

                async def call(principal: str, tag: str) -> dict[str, Any]:
                    answer = await modern_call(http, gateway.url, "fast__echo", {"tag": tag}, id=tag,
                                               extra={"Authorization": f"Bearer {KEYS[principal]}"})
                    return answer.body

                yield gateway, call
        finally:
            gateway.stop_quietly()


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 20.0, what: str = "") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


async def test_block_refuses_the_principal_and_unblock_lets_it_back(running: tuple[GatewayProcess, Call]) -> None:
    gateway, call = running
    config = str(gateway.config_path)
    assert "result" in await call("alice", "before")

    blocked = await in_thread("block", "--scope", "principal", "--subject", "alice", "--ttl", "600",
                              "--reason", "exfiltration suspected", "-c", config)
    assert blocked.code == 0, blocked.err
    assert "principal alice" in blocked.out and "decision" in blocked.out

    refused = await call("alice", "while-blocked")
    assert "error" in refused and "exfiltration suspected" in json.dumps(refused["error"])
    assert "result" in await call("bob", "bob-unaffected")

    listed = await in_thread("decisions", "--format", "json", "-c", config)
    assert listed.code == 0, listed.err
    active = json.loads(listed.out)
    assert [(d["scope"], d["subject"], d["reason"]) for d in active] == [
        ("principal", "alice", "exfiltration suspected")]

    lifted = await in_thread("unblock", "--scope", "principal", "--subject", "alice", "--reason", "cleared", "-c",
                             config)
    assert lifted.code == 0, lifted.err
    assert "unblock" in lifted.out
    assert "result" in await call("alice", "after")
    assert json.loads((await in_thread("decisions", "--format", "json", "-c", config)).out) == []

    # The store is held by the running gateway: the query goes through its admin API, and sees the
    # decisions the projection wrote.
    async def both_projected() -> bool:
        run = await in_thread("audit", "query", "SELECT action, subject, source FROM audit.decisions ORDER BY ts",
                              "--format", "json", "-c", config)
        assert run.code == 0, run.err
        return bool([(r["action"], r["subject"], r["source"]) for r in json.loads(run.out)] == [
            ("block", "alice", "operator"), ("unblock", "alice", "operator")])

    await eventually(both_projected, what="both decisions in audit.decisions")
    table = await in_thread("audit", "query", "SELECT count() AS n FROM audit.events WHERE principal = 'alice'", "-c",
                            config)
    assert table.code == 0 and table.out.splitlines()[0].strip() == "n", table.err


async def test_errors_say_what_to_do(running: tuple[GatewayProcess, Call], tmp_path: Path) -> None:
    gateway, _ = running
    config = str(gateway.config_path)
    block = ("block", "--scope", "principal", "--subject", "alice", "--reason", "r", "-c", config)

    wrong = await in_thread(*block, token="not-the-token")
    assert wrong.code == 1 and "admin.token_sha256" in wrong.err and config in wrong.err

    missing = await in_thread(*block, token=None)
    assert missing.code == 2 and "MCPGW_ADMIN_TOKEN" in missing.err

    usage = await in_thread("block", "--scope", "planet", "--subject", "x", "--reason", "r", "-c", config)
    assert usage.code == 2 and "--scope" in usage.err

    bad = await in_thread("block", "--scope", "principal", "--subject", "alice", "--ttl", "-5", "--reason", "r",
                          "-c", config)
    assert bad.code == 2 and "--ttl" in bad.err

    write = await in_thread("audit", "query", "DROP TABLE audit.events", "-c", config)
    assert write.code == 1 and "admin API" in write.err, write.err

    nobody = await in_thread(*block[:-2], "--url", f"http://127.0.0.1:{free_port()}")
    assert nobody.code == 1 and "mcpgw up" in nobody.err and "connection refused" in nobody.err

    query_locked_no_token = await in_thread("audit", "query", "SELECT 1", "-c", config, token=None)
    assert query_locked_no_token.code == 2 and "MCPGW_ADMIN_TOKEN" in query_locked_no_token.err


async def test_audit_query_opens_the_store_itself_once_the_gateway_stopped(
        running: tuple[GatewayProcess, Call]) -> None:
    gateway, call = running
    assert "result" in await call("bob", "one")
    assert gateway.terminate() == 0
    run = await in_thread("audit", "query", "SELECT principal, count() AS calls FROM audit.events "
                          "WHERE principal = 'bob' AND method = 'tools/call' GROUP BY principal", "--format", "csv",
                          "-c", str(gateway.config_path), token=None)
    assert run.code == 0, run.err
    assert run.out.splitlines()[0] == "principal,calls" and run.out.splitlines()[1].startswith("bob,")
