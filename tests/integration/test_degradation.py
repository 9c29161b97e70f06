"""One failing upstream must not take the gateway down: the aggregate keeps serving the healthy
servers, readiness names the failing one, and the loss is on the audit record."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Any

import aiohttp
import pytest
from mcp.client.client import Client

from schemas.events import EventType, Outcome
from tests.integration.rawmcp import bound_module_tests, child_pids, cmdline, modern, modern_call, open_legacy
from tests.support.gateway import free_port, running_gateway, time_server

pytestmark = pytest.mark.integration

TIME_TOOLS = ["time__get_current_time", "time__convert_time"]


def exits_at_once() -> dict[str, Any]:
    return {"command": sys.executable, "args": ["-c", "import sys; sys.exit(7)"], "restart": {"max_restarts": 0}}


def never_answers() -> dict[str, Any]:
    return {"command": sys.executable, "args": ["-c", "import time; time.sleep(3600)"], "startup_timeout_s": 1}


async def readyz(http: aiohttp.ClientSession, base: str) -> tuple[int, dict[str, Any]]:
    async with http.get(f"{base}/readyz") as resp:
        return resp.status, await resp.json()


async def aggregate_tool_names(http: aiohttp.ClientSession, url: str) -> tuple[list[str], list[str]]:
    modern_answer = await asyncio.wait_for(modern(http, url, "tools/list", {}), 15)
    session = await open_legacy(http, url)
    legacy_answer = await asyncio.wait_for(session.request("tools/list"), 15)
    await session.delete()
    return ([t["name"] for t in modern_answer.result["tools"]], [t["name"] for t in legacy_answer.result["tools"]])


@pytest.mark.parametrize("failing", ["exits-at-once", "never-answers", "http-nothing-listening"])
async def test_failing_upstream_beside_a_healthy_one(failing: str) -> None:
    broken = {"exits-at-once": exits_at_once, "never-answers": never_answers,
              "http-nothing-listening": lambda: {"url": f"http://127.0.0.1:{free_port()}/mcp",
                                                 "connect_timeout_s": 1}}[failing]()
    config = {"servers": {"time": time_server(), "broken": broken}}
    async with running_gateway(config, wait_ready_s=0) as gw, aiohttp.ClientSession() as http:
        assert await gw.gateway.upstreams["time"].wait_ready(30)
        lost = await gw.sink.wait_for(lambda e: e.event_type is EventType.UPSTREAM_LOST and e.server == "broken", 20)
        assert lost.outcome is Outcome.UPSTREAM_ERROR and lost.detail

        modern_names, legacy_names = await aggregate_tool_names(http, gw.url)
        assert modern_names == TIME_TOOLS and legacy_names == TIME_TOOLS

        status, state = await readyz(http, gw.base)
        assert status == 503 and state["ready"] is False
        assert state["servers"]["time"]["state"] == "ready"
        assert state["servers"]["broken"]["state"] in ("down", "connecting")
        assert state["servers"]["broken"]["detail"]
        async with http.get(f"{gw.base}/healthz") as resp:
            assert resp.status == 200

        answer = await modern_call(http, gw.url, "time__get_current_time", {"timezone": "UTC"})
        assert answer.status == 200 and answer.result.get("isError") is not True
        answer = await modern_call(http, gw.url, "broken__anything", {}, id="b")
        assert "'broken'" in answer.error["message"]

        async with Client(gw.url, mode="legacy") as client:
            assert [t.name for t in (await client.list_tools()).tools] == TIME_TOOLS


async def test_healthy_upstream_that_dies_keeps_its_last_good_list_and_readiness_flips() -> None:
    other = time_server()
    other["args"] = [*other["args"][:-1], "Europe/Paris"]
    config = {"servers": {"time": time_server(), "other": {**other, "restart": {"max_restarts": 0}}}}
    async with running_gateway(config) as gw, aiohttp.ClientSession() as http:
        status, _ = await readyz(http, gw.base)
        assert status == 200
        modern_names, _ = await aggregate_tool_names(http, gw.url)
        assert modern_names == [*TIME_TOOLS, "other__get_current_time", "other__convert_time"]

        others = [p for p in child_pids() if "mcp_server_time" in cmdline(p) and "Europe/Paris" in cmdline(p)]
        assert len(others) == 1
        os.kill(others[0], signal.SIGKILL)
        await gw.sink.wait_for(lambda e: e.event_type is EventType.UPSTREAM_LOST and e.server == "other", 15)

        status, state = await readyz(http, gw.base)
        assert status == 503 and state["servers"]["other"]["state"] == "down"
        assert state["servers_ready"] == 1 and state["servers_total"] == 2
        answer = await modern_call(http, gw.url, "other__get_current_time", {"timezone": "UTC"}, id="o")
        assert "'other'" in answer.error["message"]
        answer = await modern_call(http, gw.url, "time__get_current_time", {"timezone": "UTC"})
        assert answer.status == 200 and answer.result.get("isError") is not True
        modern_names, legacy_names = await aggregate_tool_names(http, gw.url)
        assert modern_names == legacy_names == [*TIME_TOOLS, "other__get_current_time", "other__convert_time"]


SLOW_FIRST_START = """
import os, runpy, sys, time
marker = sys.argv[1]
if not os.path.exists(marker):
    open(marker, "w").close()
    time.sleep(4)  # the first start is slower than startup_timeout_s; later ones are not
sys.argv = ["mcp_server_time", "--local-timezone", "UTC"]
runpy.run_module("mcp_server_time", run_name="__main__")
"""


async def test_upstream_whose_first_handshake_times_out_recovers(tmp_path: Any) -> None:
    """A server that misses its first `initialize` deadline (slow disk, cold cache) must not stay
    down for good while its process runs: the gateway retries (handshake or restart)."""
    slow = {"command": sys.executable, "args": ["-c", SLOW_FIRST_START, str(tmp_path / "started-once")],
            "startup_timeout_s": 2, "restart": {"initial_delay_s": 0.2, "max_delay_s": 1}}
    async with running_gateway({"servers": {"slow": slow}}, wait_ready_s=0) as gw, aiohttp.ClientSession() as http:
        await gw.sink.wait_for(lambda e: e.event_type is EventType.UPSTREAM_LOST and e.server == "slow", 15)
        assert await gw.gateway.upstreams["slow"].wait_ready(15), (
            f"still {gw.gateway.upstreams['slow'].status} after 15 s")
        answer = await modern_call(http, gw.url, "slow__get_current_time", {"timezone": "UTC"})
        assert answer.status == 200 and answer.result.get("isError") is not True


bound_module_tests(globals(), 60)
