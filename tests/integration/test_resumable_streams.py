"""2025-11-25 SSE resumability: a dropped POST stream is not a cancellation; GET + Last-Event-ID resumes it."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from aiohttp import ClientSession

from tests.support.gateway import reference_server_stdio, running_gateway

pytestmark = pytest.mark.integration

LEGACY = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


async def _initialize(http: ClientSession, url: str) -> dict[str, str]:
    body = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
    async with http.post(url, data=orjson.dumps(body), headers=LEGACY) as resp:
        session = resp.headers["Mcp-Session-Id"]
        await resp.read()
    headers = {**LEGACY, "Mcp-Session-Id": session, "MCP-Protocol-Version": "2025-11-25"}
    note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    async with http.post(url, data=orjson.dumps(note), headers=headers) as resp:
        assert resp.status == 202
    return headers


def _events(text: str) -> list[dict[str, str]]:
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            key, _, value = line.partition(":")
            if key and not line.startswith(":"):
                fields[key] = value.lstrip(" ")
        if fields:
            events.append(fields)
    return events


async def test_dropped_stream_resumes_with_last_event_id() -> None:
    async with running_gateway({"servers": {"ref": reference_server_stdio()}}) as gw, ClientSession() as http:
        url = gw.server_url("ref")
        headers = await _initialize(http, url)
        call = {"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                "params": {"name": "slow_compute", "arguments": {"seconds": 0.5, "label": "resumed"}}}
        resp = await http.post(url, data=orjson.dumps(call), headers=headers)
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        priming = await resp.content.readuntil(b"\n\n")
        first = _events(priming.decode())[0]
        assert first["data"] == "" and first["retry"] and first["id"]
        resp.close()  # the agent's connection drops mid-call

        get_headers = {**headers, "Accept": "text/event-stream", "Last-Event-ID": first["id"]}
        async with http.get(url, headers=get_headers) as resumed:
            assert resumed.status == 200
            text = (await asyncio.wait_for(resumed.read(), 30)).decode()
        payloads = [orjson.loads(e["data"]) for e in _events(text) if e.get("data")]
        assert payloads[-1]["id"] == 7
        assert "resumed: done" in payloads[-1]["result"]["content"][0]["text"]
        # The call reached the upstream and back even though nobody was listening at the time.
        assert any(e.method == "tools/call" and e.direction == "upstream_to_gateway" for e in gw.sink.events)

        async with http.get(url, headers={**get_headers, "Last-Event-ID": "999-0"}) as unknown:
            assert unknown.status == 404
