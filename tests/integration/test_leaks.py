"""Nothing leaks under sustained load: 10,000 tool calls through the gateway, across legacy sessions
that are opened and closed and stateless modern calls, leave no extra child processes, no extra
open descriptors, no sessions and no calls in flight behind them, and every call is on the record.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

import aiohttp
import pytest

from schemas.events import EventType, Outcome
from tests.integration.rawmcp import (
    ACCEPT_BOTH,
    LEGACY,
    bound_module_tests,
    initialize_body,
    living_child_pids,
    modern_body,
    modern_headers,
    open_fds,
    read_answer,
    request,
    wait_until,
)
from tests.support.gateway import RunningGateway, everything_stdio, running_gateway, time_server

pytestmark = pytest.mark.integration

TOTAL_CALLS = 10_000
CONCURRENCY = 16
CALLS_PER_SESSION = 25
FD_SLACK = 8
TOOL = "time__get_current_time"


class Load:
    """A minimal raw agent: exact bytes out, status and JSON-RPC result checked on the way back."""

    def __init__(self, http: aiohttp.ClientSession, url: str, tool: str, arguments: dict[str, Any]) -> None:
        self.http = http
        self.url = url
        self.tool = tool
        self.arguments = arguments
        self.ids = itertools.count(1)
        self.calls = 0
        self.sessions = 0
        self.failures: list[str] = []

    async def _post(self, body: dict[str, Any], headers: dict[str, str]) -> tuple[int, dict[str, str], Any]:
        data = json.dumps(body).encode()
        async with self.http.post(self.url, data=data, headers={"Content-Type": "application/json",
                                                                 "Accept": ACCEPT_BOTH, **headers}) as resp:
            answer = await read_answer(resp)
            return resp.status, dict(resp.headers), answer.messages[-1] if answer.messages else answer.raw

    def _check(self, status: int, answer: Any) -> None:
        self.calls += 1
        if status != 200 or not isinstance(answer, dict) or "result" not in answer or answer["result"].get("isError"):
            self.failures.append(f"{status}: {str(answer)[:200]}")

    async def modern_call(self) -> None:
        body = modern_body("tools/call", {"name": self.tool, "arguments": self.arguments}, next(self.ids))
        status, _, answer = await self._post(body, modern_headers("tools/call", self.tool))
        self._check(status, answer)

    async def legacy_session(self, calls: int) -> None:
        status, headers, answer = await self._post(initialize_body(next(self.ids)), {})
        session_id = headers.get("Mcp-Session-Id")
        if status != 200 or not session_id:
            self.failures.append(f"initialize: {status} {answer}")
            return
        self.sessions += 1
        session_headers = {"Mcp-Session-Id": session_id, "MCP-Protocol-Version": LEGACY}
        status, _, _ = await self._post({"jsonrpc": "2.0", "method": "notifications/initialized"}, session_headers)
        assert status == 202
        for _ in range(calls):
            body = request("tools/call", {"name": self.tool, "arguments": self.arguments}, next(self.ids))
            status, _, answer = await self._post(body, session_headers)
            self._check(status, answer)
        async with self.http.delete(self.url, headers=session_headers) as resp:
            if resp.status != 200:
                self.failures.append(f"DELETE: {resp.status}")

    async def worker(self, quota: int, legacy_first: bool) -> None:
        done = 0
        legacy = legacy_first
        while done < quota:
            n = min(CALLS_PER_SESSION, quota - done)
            if legacy:
                await self.legacy_session(n)
            else:
                for _ in range(n):
                    await self.modern_call()
            done += n
            legacy = not legacy

    async def run(self, total: int, concurrency: int) -> None:
        quotas = [total // concurrency + (1 if i < total % concurrency else 0) for i in range(concurrency)]
        await asyncio.gather(*(self.worker(q, i % 2 == 0) for i, q in enumerate(quotas)))


def assert_quiescent(gw: RunningGateway) -> None:
    assert len(gw.gateway.sessions) == 0, "every legacy session was DELETEd"
    assert not gw.gateway.listeners
    state = gw.gateway.readiness()
    assert state["sessions"] == 0 and state["ready"]


async def test_ten_thousand_calls_leave_no_processes_descriptors_or_sessions_behind() -> None:
    children_before = set(living_child_pids())
    fds_before = open_fds()
    config = {"servers": {"time": time_server()}}
    async with running_gateway(config) as gw:
        connector = aiohttp.TCPConnector(limit=CONCURRENCY * 2)
        async with aiohttp.ClientSession(connector=connector) as http:
            load = Load(http, gw.url, TOOL, {"timezone": "UTC"})
            await load.run(CONCURRENCY * 4, CONCURRENCY)  # warm-up: connections, catalog, caches
            await wait_until(lambda: len(gw.gateway.sessions) == 0, 10, what="warm-up sessions closed")
            fds_warm = open_fds()
            children_warm = set(living_child_pids()) - children_before
            assert len(children_warm) == len(config["servers"])

            load = Load(http, gw.url, TOOL, {"timezone": "UTC"})
            await asyncio.wait_for(load.run(TOTAL_CALLS, CONCURRENCY), 300)
            assert not load.failures, f"{len(load.failures)} failures, e.g. {load.failures[:3]}"
            assert load.calls == TOTAL_CALLS and load.sessions > 100

            await wait_until(lambda: len(gw.gateway.sessions) == 0, 10, what="all sessions closed")
            assert_quiescent(gw)
            assert set(living_child_pids()) - children_before == children_warm, "the upstream process was reused"
            fds_loaded = open_fds()
            assert fds_loaded <= fds_warm + FD_SLACK, (fds_warm, fds_loaded)

            answered = [e for e in gw.sink.events if e.event_type is EventType.AGENT_MESSAGE_SENT
                        and e.method == "tools/call"]
            assert len(answered) >= TOTAL_CALLS + CONCURRENCY * 4
            assert all(e.outcome is Outcome.OK for e in answered)
            closed = [e for e in gw.sink.events if e.event_type is EventType.SESSION_CLOSED and e.session_id]
            opened = [e for e in gw.sink.events if e.event_type is EventType.SESSION_OPENED and e.session_id]
            assert len(opened) == len(closed) > 100
    await wait_until(lambda: set(living_child_pids()) <= children_before, 10, what="upstream processes gone")
    await wait_until(lambda: open_fds() <= fds_before + FD_SLACK, 10,
                     what=f"descriptors back near the baseline of {fds_before}")


@pytest.mark.node
async def test_per_session_upstream_processes_are_reaped_when_sessions_end() -> None:
    """`isolation: session` gives each legacy session its own process; closing the session (or the
    gateway) must end that process, so the count of children stays bounded by `max_processes`."""
    children_before = set(living_child_pids())
    fds_before = open_fds()
    max_processes = 6
    config = {"servers": {"ev": {**everything_stdio(), "isolation": "session", "max_processes": max_processes}}}
    async with running_gateway(config) as gw, aiohttp.ClientSession() as http:
        peak = 0

        async def sample_children() -> None:
            nonlocal peak
            while True:
                peak = max(peak, len(set(living_child_pids()) - children_before))
                await asyncio.sleep(0.05)

        sampler = asyncio.ensure_future(sample_children())
        load = Load(http, gw.url, "ev__echo", {"message": "isolated"})
        try:
            for _ in range(4):  # rounds of sessions: each round opens and closes 4 sessions
                await asyncio.wait_for(asyncio.gather(*(load.legacy_session(5) for _ in range(4))), 120)
        finally:
            sampler.cancel()
        assert not load.failures, load.failures[:3]
        assert load.sessions == 16
        assert 1 < peak <= max_processes
        await wait_until(lambda: len(set(living_child_pids()) - children_before) == 1, 20,
                         what="per-session processes reaped; only the shared one left")
        assert_quiescent(gw)
    await wait_until(lambda: set(living_child_pids()) <= children_before, 10, what="all upstream processes gone")
    await wait_until(lambda: open_fds() <= fds_before + FD_SLACK, 10, what="descriptors back near the baseline")


bound_module_tests(globals(), 240)
