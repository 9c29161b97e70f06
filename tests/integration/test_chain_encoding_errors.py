"""A request whose `traceparent` header is not UTF-8 leaves the audit chain whole.

aiohttp decodes header bytes with surrogateescape, so such a header reaches the event as a string
with lone surrogates, which Avro (strict UTF-8) refuses. The record fails and the call is not
made; the numbers its events took must not become a hole that `mcpgw audit verify` reports as
missing rows.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp

from tests.integration.rawmcp import modern_call
from tests.support.durable import WitnessUpstream, durable_gateway, gateway_config, read_embedded_events, verify_chain


async def test_a_header_that_is_not_utf8_leaves_no_hole_in_the_chain(tmp_path: Path) -> None:
    config = gateway_config(tmp_path, "")
    async with WitnessUpstream() as upstream:
        config["servers"]["fast"]["url"] = upstream.url
        async with durable_gateway(config) as gw, aiohttp.ClientSession() as http:
            assert (await modern_call(http, gw.url, "fast__echo", {"tag": "before"}, id="before")).status == 200
            body = json.dumps({"jsonrpc": "2.0", "id": "bad", "method": "tools/call", "params": {
                "name": "fast__echo", "arguments": {"tag": "bad"},
                "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}}}).encode()
            reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
            writer.write(
                b"POST /mcp HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
                b"Accept: application/json, text/event-stream\r\nMcp-Method: tools/call\r\nMcp-Name: fast__echo\r\n"
                b"Mcp-Protocol-Version: 2026-07-28\r\nConnection: close\r\n"
                b"traceparent: 00-\xff\xfe-\xfd-01\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            await writer.drain()
            status = (await reader.read()).split(b" ", 2)[1]
            writer.close()
            assert status != b"200", "a call that could not be recorded was answered"
            assert (await modern_call(http, gw.url, "fast__echo", {"tag": "after"}, id="after")).status == 200
    assert sorted(upstream.tags()) == ["after", "before"], "the call that could not be recorded was not made"
    events = [s.event for s in await read_embedded_events(tmp_path / "log")]
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    report = verify_chain(events)
    assert report.problems == [] and not report.explained_gaps, report.problems
