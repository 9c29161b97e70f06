"""StreamableHttpUpstream against the real `mcp-server-everything` (a legacy-era, 2025-11-25 server).

The modern-era half of the connector is tested against an SDK server in
test_streamable_http_modern.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from ingress.config import HttpServerConfig
from ingress.upstreams.base import CallContext, JsonObject, UpstreamState
from ingress.upstreams.errors import UpstreamTimeout, UpstreamUnavailable
from ingress.upstreams.streamable_http import StreamableHttpUpstream
from tests.peers.everything import (
    EverythingServer,
    Observer,
    RecordingHandler,
    RecordingTap,
    eventually,
    everything_server,
    free_port,
    system_ctx,
)

pytestmark = [pytest.mark.integration, pytest.mark.node]

READY_S = 20.0


class Harness:
    def __init__(self, upstream: StreamableHttpUpstream, tap: RecordingTap, observer: Observer) -> None:
        self.upstream = upstream
        self.tap = tap
        self.observer = observer

    async def call(self, name: str, arguments: JsonObject, *, id: Any = 1, ctx: CallContext | None = None,
                   timeout: float = 10.0, meta: JsonObject | None = None) -> JsonObject:
        params: JsonObject = {"name": name, "arguments": arguments}
        if meta is not None:
            params["_meta"] = meta
        body = {"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": params}
        return await self.upstream.request(body, ctx or CallContext("call"), timeout)


def make_upstream(url: str, protocol: str = "auto") -> Harness:
    tap, observer = RecordingTap(), Observer()
    config = HttpServerConfig(url=url, protocol=protocol, connect_timeout_s=2.0)
    upstream = StreamableHttpUpstream(
        "ev", config, tap, observer.on_unsolicited, observer.on_status, system_ctx, 10.0
    )
    upstream.backoff_initial_s, upstream.backoff_max_s = 0.05, 0.5  # keep reconnect tests quick
    return Harness(upstream, tap, observer)


@contextlib.asynccontextmanager
async def connected(url: str, protocol: str = "auto") -> AsyncIterator[Harness]:
    harness = make_upstream(url, protocol)
    await harness.upstream.start()
    try:
        assert await harness.upstream.wait_ready(READY_S), harness.upstream.status
        yield harness
    finally:
        await harness.upstream.stop()


@pytest.fixture
async def everything() -> AsyncIterator[EverythingServer]:
    async with everything_server("streamableHttp") as server:
        yield server


def text_of(response: JsonObject) -> str:
    return str(response["result"]["content"][0]["text"])


async def test_auto_probes_discover_then_falls_back_to_initialize(everything: EverythingServer) -> None:
    async with connected(everything.url) as h:
        info = h.upstream.info
        assert info is not None
        assert (info.era, info.protocol_version) == ("legacy", "2025-11-25")
        assert info.server_info["name"] == "mcp-servers/everything"
        assert "tools" in info.capabilities
        assert h.tap.methods("sent")[:3] == ["server/discover", "initialize", "notifications/initialized"]
        assert h.observer.states[:2] == [UpstreamState.CONNECTING, UpstreamState.READY]
        assert h.upstream.status.state is UpstreamState.READY
        assert h.upstream._era == "legacy"  # cached for reconnects


async def test_legacy_mode_goes_straight_to_initialize(everything: EverythingServer) -> None:
    async with connected(everything.url, "legacy") as h:
        assert h.tap.methods("sent")[:2] == ["initialize", "notifications/initialized"]
        assert h.upstream.info is not None and h.upstream.info.era == "legacy"


async def test_modern_mode_refuses_a_legacy_only_server(everything: EverythingServer) -> None:
    h = make_upstream(everything.url, "modern")
    await h.upstream.start()
    try:
        await eventually(lambda: UpstreamState.DOWN in h.observer.states, what="DOWN")
        assert "initialize" not in h.tap.methods("sent")
    finally:
        await h.upstream.stop()


async def test_list_and_call_restore_the_agents_ids(everything: EverythingServer) -> None:
    async with connected(everything.url) as h:
        listed = await h.upstream.request({"jsonrpc": "2.0", "id": "list-1", "method": "tools/list"},
                                          CallContext("c"), 10)
        assert listed["id"] == "list-1"
        assert {"echo", "trigger-long-running-operation"} <= {t["name"] for t in listed["result"]["tools"]}
        response = await h.call("echo", {"message": "hi"}, id=42)
        assert response["id"] == 42 and text_of(response) == "Echo: hi"
        sent = h.tap.of("sent", "tools/call")[-1]
        assert isinstance(sent.body["id"], int) and sent.body["id"] != 42  # a gateway-unique upstream id
        received = [r for r in h.tap.of("received") if r.body.get("id") == sent.body["id"]]
        assert len(received) == 1 and "result" in received[0].body


async def test_concurrent_calls_with_the_same_agent_id(everything: EverythingServer) -> None:
    async with connected(everything.url) as h:
        slow, fast = await asyncio.gather(
            h.call("trigger-long-running-operation", {"duration": 0.4, "steps": 2}, id=7),
            h.call("echo", {"message": "same id"}, id=7),
        )
        assert slow["id"] == fast["id"] == 7
        assert "Long running operation completed" in text_of(slow)
        assert text_of(fast) == "Echo: same id"
        upstream_ids = [r.body["id"] for r in h.tap.of("sent", "tools/call")]
        assert len(set(upstream_ids)) == 2


async def test_progress_reaches_the_handler_before_the_response(everything: EverythingServer) -> None:
    async with connected(everything.url) as h:
        handler = RecordingHandler()
        response = await h.call("trigger-long-running-operation", {"duration": 0.6, "steps": 3},
                                ctx=CallContext("p", handler=handler), meta={"progressToken": "agent-token"})
        seen_at_return = list(handler.notifications)
        assert "result" in response
        progress = [n["params"] for n in seen_at_return if n["method"] == "notifications/progress"]
        assert [p["progress"] for p in progress] == [1, 2, 3]
        assert {p["progressToken"] for p in progress} == {"agent-token"}
        # upstream, the token was gateway-unique
        sent = h.tap.of("sent", "tools/call")[-1]
        assert sent.body["params"]["_meta"]["progressToken"] != "agent-token"


async def test_server_requests_are_answered_by_the_calls_handler(everything: EverythingServer) -> None:
    def answer(body: JsonObject) -> JsonObject:
        if body["method"] == "sampling/createMessage":
            return {"jsonrpc": "2.0", "id": "agent-side", "result": {
                "role": "assistant", "model": "test-model", "content": {"type": "text", "text": "sampled!"}}}
        return {"jsonrpc": "2.0", "id": "agent-side", "result": {"action": "decline"}}

    async with connected(everything.url) as h:
        handler = RecordingHandler(answer)
        ctx = CallContext("s", handler=handler)
        response = await h.call("trigger-sampling-request", {"prompt": "hello"}, ctx=ctx)
        assert "sampled!" in text_of(response)
        await h.call("trigger-elicitation-request", {}, ctx=ctx)
        assert [r["method"] for r in handler.requests] == ["sampling/createMessage", "elicitation/create"]
        asked = h.tap.of("received", "sampling/createMessage")[-1]
        assert asked.ctx is ctx
        answers = [r for r in h.tap.of("sent") if r.body.get("id") == asked.body["id"] and "result" in r.body]
        assert answers and answers[-1].body["result"]["model"] == "test-model"  # with the server's id


async def test_the_tap_sees_every_message_in_both_directions(everything: EverythingServer) -> None:
    async with connected(everything.url) as h:
        await h.call("trigger-long-running-operation", {"duration": 0.2, "steps": 2},
                     meta={"progressToken": 5})
        for record in h.tap.records:
            assert orjson.loads(record.wire) == record.body, record
        sent = h.tap.methods("sent")
        assert sent[:3] == ["server/discover", "initialize", "notifications/initialized"]
        assert "tools/call" in sent
        call_id = h.tap.of("sent", "tools/call")[-1].body["id"]
        kinds = [r.method or ("response" if r.body.get("id") == call_id else None)
                 for r in h.tap.of("received")]
        assert kinds.count("notifications/progress") == 2 and kinds[-1] == "response"
        final = h.tap.of("received")[-1]
        assert final.latency_us is not None and final.latency_us > 0


async def test_the_get_stream_carries_unsolicited_traffic(everything: EverythingServer) -> None:
    async with connected(everything.url) as h:
        # everything asks the client for roots ~350 ms after initialization, on the GET stream; with no
        # call in flight, the connector answers with an error itself
        await eventually(lambda: bool(h.tap.of("received", "roots/list")), what="roots/list")
        roots_id = h.tap.of("received", "roots/list")[0].body["id"]
        await eventually(lambda: any(r.body.get("id") == roots_id and "error" in r.body
                                     for r in h.tap.of("sent")), what="the error answer to roots/list")
        await h.call("toggle-simulated-logging", {})
        await eventually(lambda: any(m.get("method") == "notifications/message"
                                     for m in h.observer.unsolicited), what="a log message on the GET stream")


async def test_timeout_raises_and_cancels_upstream(everything: EverythingServer) -> None:
    async with connected(everything.url) as h:
        with pytest.raises(UpstreamTimeout):
            await h.call("trigger-long-running-operation", {"duration": 3, "steps": 3}, timeout=0.3)
        upstream_id = h.tap.of("sent", "tools/call")[-1].body["id"]
        await eventually(lambda: any(r.body["params"]["requestId"] == upstream_id
                                     for r in h.tap.of("sent", "notifications/cancelled")), what="cancel")
        assert text_of(await h.call("echo", {"message": "still fine"})) == "Echo: still fine"


async def test_cancelling_the_awaiting_task_cancels_upstream(everything: EverythingServer) -> None:
    async with connected(everything.url) as h:
        handler = RecordingHandler()
        task = asyncio.create_task(h.call("trigger-long-running-operation", {"duration": 5, "steps": 10},
                                          ctx=CallContext("x", handler=handler), meta={"progressToken": "t"}))
        await eventually(lambda: bool(handler.notifications), what="first progress")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        upstream_id = h.tap.of("sent", "tools/call")[-1].body["id"]
        await eventually(lambda: any(r.body["params"]["requestId"] == upstream_id
                                     for r in h.tap.of("sent", "notifications/cancelled")), what="cancel")


async def test_server_killed_then_restarted(everything: EverythingServer) -> None:
    async with connected(everything.url) as h:
        await everything.kill()
        with pytest.raises(UpstreamUnavailable) as caught:
            await h.call("echo", {"message": "anyone?"})
        assert caught.value.server == "ev"
        await eventually(lambda: h.upstream.status.state is not UpstreamState.READY, what="not ready")
        await eventually(lambda: UpstreamState.DOWN in h.observer.states, what="DOWN")
        with pytest.raises(UpstreamUnavailable):  # fails fast while down
            await h.call("echo", {"message": "anyone?"})
        handshakes = len(h.tap.of("sent", "initialize"))
        await everything.start()
        assert await h.upstream.wait_ready(READY_S)
        states = h.observer.states
        assert states[-1] is UpstreamState.READY
        assert UpstreamState.DOWN in states[states.index(UpstreamState.READY):]
        assert text_of(await h.call("echo", {"message": "back"})) == "Echo: back"
        assert len(h.tap.of("sent", "initialize")) > handshakes
        assert len(h.tap.of("sent", "server/discover")) == 1  # the era stayed cached


async def test_requests_while_down_fail_fast_and_the_server_is_picked_up_later() -> None:
    port = free_port()
    h = make_upstream(f"http://127.0.0.1:{port}/mcp")
    await h.upstream.start()
    try:
        await eventually(lambda: h.upstream.status.state is UpstreamState.DOWN, what="DOWN")
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(UpstreamUnavailable) as caught:
            await h.call("echo", {"message": "x"})
        assert loop.time() - started < 2.5 and caught.value.retryable
        async with everything_server("streamableHttp", port):
            assert await h.upstream.wait_ready(READY_S)
            assert text_of(await h.call("echo", {"message": "up"})) == "Echo: up"
    finally:
        await h.upstream.stop()


async def test_stop_leaves_no_tasks_behind(everything: EverythingServer) -> None:
    before = asyncio.all_tasks()
    h = make_upstream(everything.url)
    await h.upstream.start()
    assert await h.upstream.wait_ready(READY_S)
    await h.call("trigger-long-running-operation", {"duration": 0.2, "steps": 2}, meta={"progressToken": 1})
    await h.upstream.stop()
    await asyncio.sleep(0)
    assert asyncio.all_tasks() - before == set()
    assert h.upstream.status.state is UpstreamState.STOPPED
    with pytest.raises(UpstreamUnavailable):
        await h.call("echo", {"message": "x"})
