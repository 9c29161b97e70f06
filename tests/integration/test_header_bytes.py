"""Request headers whose bytes are not UTF-8 are answered and recorded, never a 500 or a lost record.

aiohttp decodes header bytes with surrogateescape, so such a header reaches the gateway as a string
with lone surrogates, which Avro (strict UTF-8) refuses: nothing copied from a header into an event
may carry them (traceparent is taken only when it parses; others are quoted with repr), or the
call's record fails and the call with it.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import make_mocked_request

from ingress.http.admission import base_context
from schemas.events import Outcome
from tests.integration.rawmcp import CLIENT_INFO, META_CAPS, META_INFO, META_VERSION, MODERN, modern_call
from tests.support.durable import WitnessUpstream, durable_gateway, gateway_config, read_embedded_events, verify_chain

BASE = {
    b"Content-Type": b"application/json",
    b"Accept": b"application/json, text/event-stream",
    b"Mcp-Method": b"tools/call",
    b"Mcp-Name": b"fast__echo",
    b"Mcp-Protocol-Version": b"2026-07-28",
}


async def raw_post(port: int, path: str, headers: dict[bytes, bytes], body: bytes) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = b"".join(b"%s: %s\r\n" % (k, v) for k, v in headers.items())
    writer.write(b"POST %s HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n%sContent-Length: %d\r\n\r\n"
                 % (path.encode(), head, len(body)) + body)
    await writer.drain()
    status = int((await reader.read()).split(b" ", 2)[1])
    writer.close()
    return status


@pytest.mark.parametrize("header", [b"traceparent", b"Mcp-Protocol-Version", b"Mcp-Name", b"Mcp-Method",
                                    b"Mcp-Session-Id", b"Origin", b"Authorization", b"User-Agent",
                                    b"Mcp-Param-Tag", b"Accept"])
async def test_a_header_that_is_not_utf8_is_answered_and_recorded(tmp_path: Path, header: bytes) -> None:
    config = gateway_config(tmp_path, "")
    async with WitnessUpstream() as upstream:
        config["servers"]["fast"]["url"] = upstream.url
        async with durable_gateway(config) as gw, aiohttp.ClientSession() as http:
            body = json.dumps({"jsonrpc": "2.0", "id": "bad", "method": "tools/call", "params": {
                "name": "fast__echo", "arguments": {"tag": "bad"},
                "_meta": {META_VERSION: MODERN, META_CAPS: {}, META_INFO: CLIENT_INFO}}}).encode()
            headers = dict(BASE)
            headers[header] = b"00-\xff\xfe-\xfd-01"
            status = await raw_post(gw.port, "/mcp", headers, body)
            assert status != 500
            assert (await modern_call(http, gw.url, "fast__echo", {"tag": "after"}, id="after")).status == 200
    events = [s.event for s in await read_embedded_events(tmp_path / "log")]
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    report = verify_chain(events)
    assert report.problems == [] and not report.explained_gaps, report.problems
    if header == b"Origin":  # refused before the body is read: the refusal is the record
        assert status == 403 and any(e.outcome == Outcome.FORBIDDEN for e in events)
    else:
        assert any(e.jsonrpc_id == "bad" for e in events), f"the request with a bad {header!r} was not recorded"
    if header == b"traceparent":  # a traceparent that does not parse is ignored: the call is made
        assert status == 200 and sorted(upstream.tags()) == ["after", "bad"]
        assert all(e.trace_id == "" for e in events if e.jsonrpc_id == "bad")


TRACE, SPAN = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"


@pytest.mark.parametrize(("value", "ids"), [
    (f"00-{TRACE}-{SPAN}-01", (TRACE, SPAN)),
    (f"01-{TRACE}-{SPAN}-01-later", (TRACE, SPAN)),
    ("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", ("", "")),
    ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", ("", "")),
    ("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", ("", "")),
    ("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", ("", "")),
    ("00-abc-def-01", ("", "")),
])
def test_traceparent_is_taken_only_when_it_parses(value: str, ids: tuple[str, str]) -> None:
    request = make_mocked_request("POST", "/mcp", headers={"traceparent": value})
    ctx = base_context(request, "streamable_http")
    assert (ctx.trace_id, ctx.span_id) == ids
