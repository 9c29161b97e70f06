"""SseUpstream (the deprecated 2024-11-05 HTTP+SSE transport) against the real `mcp-server-everything sse`,
and the SSE codec it and the Streamable HTTP connector share."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from ingress.config import HttpServerConfig
from ingress.sse_codec import SseError, SseEvent, SseParser, format_event
from ingress.upstreams.base import CallContext, JsonObject, UpstreamState
from ingress.upstreams.errors import UpstreamTimeout, UpstreamUnavailable
from ingress.upstreams.sse import SseUpstream
from tests.peers.everything import (
    EverythingServer,
    Observer,
    RecordingHandler,
    RecordingTap,
    eventually,
    everything_server,
    system_ctx,
)

READY_S = 20.0


class Harness:
    def __init__(self, url: str, protocol: str = "auto") -> None:
        self.tap, self.observer = RecordingTap(), Observer()
        config = HttpServerConfig(url=url, protocol=protocol, connect_timeout_s=2.0)
        self.upstream = SseUpstream("ev-sse", config, self.tap, self.observer.on_unsolicited,
                                    self.observer.on_status, system_ctx, 10.0)
        self.upstream.backoff_initial_s, self.upstream.backoff_max_s = 0.05, 0.5

    async def call(self, name: str, arguments: JsonObject, *, id: Any = 1, ctx: CallContext | None = None,
                   timeout: float = 10.0, meta: JsonObject | None = None) -> JsonObject:
        params: JsonObject = {"name": name, "arguments": arguments}
        if meta is not None:
            params["_meta"] = meta
        body = {"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": params}
        return await self.upstream.request(body, ctx or CallContext("call"), timeout)


@contextlib.asynccontextmanager
async def connected(url: str) -> AsyncIterator[Harness]:
    harness = Harness(url)
    await harness.upstream.start()
    try:
        assert await harness.upstream.wait_ready(READY_S), harness.upstream.status
        yield harness
    finally:
        await harness.upstream.stop()


@pytest.fixture
async def everything() -> AsyncIterator[EverythingServer]:
    async with everything_server("sse") as server:
        yield server


def text_of(response: JsonObject) -> str:
    return str(response["result"]["content"][0]["text"])


@pytest.mark.integration
@pytest.mark.node
async def test_connects_through_the_endpoint_event_and_initializes(everything: EverythingServer) -> None:
    async with connected(everything.url) as h:
        info = h.upstream.info
        assert info is not None and info.era == "legacy"
        assert info.server_info["name"] == "mcp-servers/everything"
        assert h.upstream.transport == "sse"
        assert h.tap.methods("sent")[:2] == ["initialize", "notifications/initialized"]
        assert h.observer.states[:2] == [UpstreamState.CONNECTING, UpstreamState.READY]


@pytest.mark.integration
async def test_modern_protocol_is_refused() -> None:
    h = Harness("http://127.0.0.1:9/sse", "modern")
    await h.upstream.start()
    try:
        await eventually(lambda: h.upstream.status.state is UpstreamState.DOWN, what="DOWN")
        assert "initialize era" in h.upstream.status.detail
    finally:
        await h.upstream.stop()


@pytest.mark.integration
@pytest.mark.node
async def test_list_and_concurrent_calls_restore_ids(everything: EverythingServer) -> None:
    async with connected(everything.url) as h:
        body = {"jsonrpc": "2.0", "id": "l", "method": "tools/list"}
        listed = await h.upstream.request(body, CallContext("c"), 10)
        assert listed["id"] == "l" and any(t["name"] == "echo" for t in listed["result"]["tools"])
        slow, fast = await asyncio.gather(
            h.call("trigger-long-running-operation", {"duration": 0.3, "steps": 2}, id=7),
            h.call("echo", {"message": "same id"}, id=7),
        )
        assert slow["id"] == fast["id"] == 7 and text_of(fast) == "Echo: same id"
        assert len({r.body["id"] for r in h.tap.of("sent", "tools/call")}) == 2


@pytest.mark.integration
@pytest.mark.node
async def test_progress_and_server_requests_reach_the_call(everything: EverythingServer) -> None:
    def answer(body: JsonObject) -> JsonObject:
        return {"jsonrpc": "2.0", "id": None, "result": {
            "role": "assistant", "model": "m", "content": {"type": "text", "text": "from the agent"}}}

    async with connected(everything.url) as h:
        handler = RecordingHandler(answer)
        ctx = CallContext("s", handler=handler)
        response = await h.call("trigger-long-running-operation", {"duration": 0.4, "steps": 2}, ctx=ctx,
                                meta={"progressToken": "mine"})
        assert "result" in response
        assert [n["params"]["progressToken"] for n in handler.notifications] == ["mine", "mine"]
        response = await h.call("trigger-sampling-request", {"prompt": "p"}, ctx=ctx)
        assert "from the agent" in text_of(response)
        assert handler.requests[-1]["method"] == "sampling/createMessage"
        for record in h.tap.records:
            # JsonRpcPeer restores ids/tokens in the dicts it tapped, so compare what survives that
            assert orjson.loads(record.wire).get("method") == record.method
        assert "sampling/createMessage" in h.tap.methods("received")


@pytest.mark.integration
@pytest.mark.node
async def test_timeout_cancels_upstream(everything: EverythingServer) -> None:
    async with connected(everything.url) as h:
        with pytest.raises(UpstreamTimeout):
            await h.call("trigger-long-running-operation", {"duration": 3, "steps": 3}, timeout=0.3)
        upstream_id = h.tap.of("sent", "tools/call")[-1].body["id"]
        cancels = h.tap.of("sent", "notifications/cancelled")
        assert [c.body["params"]["requestId"] for c in cancels] == [upstream_id]


@pytest.mark.integration
@pytest.mark.node
async def test_stream_drop_fails_calls_then_reconnects(everything: EverythingServer) -> None:
    async with connected(everything.url) as h:
        pending = asyncio.create_task(h.call("trigger-long-running-operation", {"duration": 5, "steps": 5}))
        await eventually(lambda: bool(h.tap.of("sent", "tools/call")), what="call sent")
        await everything.kill()
        with pytest.raises(UpstreamUnavailable):
            await pending
        await eventually(lambda: UpstreamState.DOWN in h.observer.states, what="DOWN")
        with pytest.raises(UpstreamUnavailable):
            await h.call("echo", {"message": "x"})
        await everything.start()
        assert await h.upstream.wait_ready(READY_S)
        assert text_of(await h.call("echo", {"message": "back"})) == "Echo: back"
        assert len(h.tap.of("sent", "initialize")) == 2


@pytest.mark.integration
@pytest.mark.node
async def test_stop_leaves_no_tasks_behind(everything: EverythingServer) -> None:
    before = asyncio.all_tasks()
    h = Harness(everything.url)
    await h.upstream.start()
    assert await h.upstream.wait_ready(READY_S)
    await h.call("echo", {"message": "x"})
    await h.upstream.stop()
    await asyncio.sleep(0)
    assert asyncio.all_tasks() - before == set()
    assert h.upstream.status.state is UpstreamState.STOPPED


# -- the SSE codec ------------------------------------------------------------------------

STREAM = (
    b": keepalive\r\n\r\n"
    b"event: endpoint\r\ndata: /message?sessionId=1\r\n\r\n"
    b"id: 7\nretry: 250\ndata: \n\n"  # a priming event: id and retry, empty data
    b"data: {\"a\":\ndata: 1}\n\n"
    b"event: message\ndata:no-space\nid: 8\n\n"
    b"data: never finished"
)
EXPECTED = [
    SseEvent("endpoint", b"/message?sessionId=1"),
    SseEvent("message", b"", "7", 250),
    SseEvent("message", b'{"a":\n1}'),
    SseEvent("message", b"no-space", "8"),
]


def test_parser_handles_crlf_comments_fields_and_an_unfinished_tail() -> None:
    assert SseParser().feed(STREAM) == EXPECTED


def test_parser_is_incremental_at_every_byte_boundary() -> None:
    parser = SseParser()
    events = [event for i in range(len(STREAM)) for event in parser.feed(STREAM[i:i + 1])]
    assert events == EXPECTED


def test_parser_bounds_event_size() -> None:
    with pytest.raises(SseError):
        SseParser(max_event_bytes=16).feed(b"data: " + b"x" * 64 + b"\n\n")
    with pytest.raises(SseError):  # an endless line without a terminator
        SseParser(max_event_bytes=16).feed(b"data: " + b"x" * 64)


def test_format_event_round_trips() -> None:
    framed = format_event(b'{"jsonrpc":"2.0"}', "message", "e-1") + format_event(b"two\nlines")
    assert framed.startswith(b"event: message\nid: e-1\ndata: ")
    assert SseParser().feed(framed) == [
        SseEvent("message", b'{"jsonrpc":"2.0"}', "e-1"),
        SseEvent("message", b"two\nlines"),
    ]
    with pytest.raises(ValueError):
        format_event(b"x", "bad\nname")
