"""StreamableHttpUpstream in the modern era (2026-07-28), against a real server built with the `mcp` SDK.

The SDK's `streamable_http_app` is dual-era: it answers `server/discover` and also `initialize`,
so the same server checks `auto` (→ modern), `modern` and `legacy` negotiation. It runs under
uvicorn in a thread, on a free loopback port.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from typing import Annotated, Any

import aiohttp
import anyio
import orjson
import pytest
import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.streamable_http import EventCallback, EventMessage, EventStore
from mcp_types import CallToolResult, InputRequiredResult, JSONRPCMessage, TextContent
from pydantic import Field

from ingress.config import HttpServerConfig
from ingress.upstreams.base import CallContext, JsonObject, UpstreamState
from ingress.upstreams.errors import UpstreamTimeout, UpstreamUnavailable
from ingress.upstreams.mcp_headers import encode_value, param_headers, tool_param_headers
from ingress.upstreams.streamable_http import StreamableHttpUpstream
from tests.peers.everything import Observer, RecordingHandler, RecordingTap, eventually, free_port, system_ctx

READY_S = 20.0
PV = "io.modelcontextprotocol/protocolVersion"


class MemoryEventStore(EventStore):
    """Lets the legacy side of the SDK server close a POST stream early and be resumed."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, JSONRPCMessage | None]] = []

    async def store_event(self, stream_id: str, message: JSONRPCMessage | None) -> str:
        event_id = str(len(self.events) + 1)
        self.events.append((event_id, stream_id, message))
        return event_id

    async def replay_events_after(self, last_event_id: str, send_callback: EventCallback) -> str | None:
        stream = next((s for e, s, _ in self.events if e == last_event_id), None)
        if stream is None:
            return None
        after = int(last_event_id)
        for event_id, stream_id, message in self.events[after:]:
            if stream_id == stream and message is not None:
                await send_callback(EventMessage(message, event_id))
        return stream


class ModernServer:
    """A fresh SDK server per start, so a restart really is a new process-like instance."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}/mcp"
        self.cancelled = threading.Event()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def _build(self) -> MCPServer:
        mcp = MCPServer("modern-test", version="9.9.9", instructions="a test server")
        cancelled = self.cancelled

        @mcp.tool()
        async def echo(text: str) -> str:
            return text

        @mcp.tool()
        async def slow(steps: int, ctx: Context) -> str:
            for i in range(steps):
                await ctx.report_progress(i + 1, steps, f"step {i + 1}")
                await anyio.sleep(0.05)
            return "done"

        @mcp.tool()
        async def sleep(seconds: float) -> str:
            try:
                await anyio.sleep(seconds)
            finally:
                cancelled.set()
            return "slept"

        @mcp.tool()
        async def ask(ctx: Context) -> CallToolResult | InputRequiredResult:
            if ctx.input_responses:
                answer = ctx.input_responses["name"]
                return CallToolResult(content=[TextContent(type="text", text=f"hello {answer}")])
            return InputRequiredResult(result_type="input_required", request_state="round-1", input_requests={
                "name": {"method": "elicitation/create", "params": {
                    "mode": "form", "message": "Your name?",
                    "requestedSchema": {"type": "object", "properties": {"n": {"type": "string"}}},
                }},
            })

        @mcp.tool()
        async def polled(ctx: Context) -> str:
            await ctx.report_progress(1, 2)
            await ctx.close_sse_stream()  # the client must come back with Last-Event-ID
            await anyio.sleep(0.3)
            await ctx.report_progress(2, 2)
            return "polled"

        @mcp.tool()
        async def change(ctx: Context) -> str:
            await ctx.notify_tools_changed()
            return "changed"

        @mcp.tool()
        async def whoami(ctx: Context) -> str:
            caps = ctx.client_capabilities
            dumped = caps.model_dump(exclude_none=True, by_alias=True) if caps is not None else None
            return orjson.dumps({"caps": dumped, "version": ctx.protocol_version}).decode()

        @mcp.tool(name="grüße")
        async def greet(region: Annotated[str, Field(json_schema_extra={"x-mcp-header": "Region"})]) -> str:
            return f"hello from {region}"

        return mcp

    async def start(self) -> None:
        app = self._build().streamable_http_app(event_store=MemoryEventStore(), retry_interval=50)
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                timeout_graceful_shutdown=1)
        server = uvicorn.Server(config)
        self._server = server
        self._thread = threading.Thread(target=server.run, name=f"modern-mcp-{self.port}", daemon=True)
        self._thread.start()
        await eventually(lambda: server.started, timeout=READY_S, what="uvicorn start")

    async def stop(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None and thread is not None:
            server.should_exit = True
            await asyncio.to_thread(thread.join, 10)


@pytest.fixture
async def modern() -> AsyncIterator[ModernServer]:
    server = ModernServer(free_port())
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


class Harness:
    def __init__(self, url: str, protocol: str = "auto") -> None:
        self.tap, self.observer = RecordingTap(), Observer()
        config = HttpServerConfig(url=url, protocol=protocol, connect_timeout_s=2.0)
        self.upstream = StreamableHttpUpstream("modern", config, self.tap, self.observer.on_unsolicited,
                                               self.observer.on_status, system_ctx, 10.0)
        self.upstream.backoff_initial_s, self.upstream.backoff_max_s = 0.05, 0.5

    async def call(self, name: str, arguments: JsonObject, *, id: Any = 1, ctx: CallContext | None = None,
                   timeout: float = 10.0, extra: JsonObject | None = None) -> JsonObject:
        params: JsonObject = {"name": name, "arguments": arguments, **(extra or {})}
        body = {"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": params}
        return await self.upstream.request(body, ctx or CallContext("call"), timeout)


@contextlib.asynccontextmanager
async def connected(url: str, protocol: str = "auto") -> AsyncIterator[Harness]:
    harness = Harness(url, protocol)
    await harness.upstream.start()
    try:
        assert await harness.upstream.wait_ready(READY_S), harness.upstream.status
        yield harness
    finally:
        await harness.upstream.stop()


def text_of(response: JsonObject) -> str:
    return str(response["result"]["content"][0]["text"])


@pytest.mark.integration
async def test_auto_adopts_the_modern_era_from_discover(modern: ModernServer) -> None:
    async with connected(modern.url) as h:
        info = h.upstream.info
        assert info is not None
        assert (info.era, info.protocol_version) == ("modern", "2026-07-28")
        assert info.server_info == {"name": "modern-test", "version": "9.9.9"}
        assert info.instructions == "a test server"
        assert "2026-07-28" in info.supported_versions and info.capabilities["tools"]["listChanged"]
        assert h.tap.methods("sent")[0] == "server/discover"
        assert "initialize" not in h.tap.methods("sent")


@pytest.mark.integration
async def test_legacy_mode_initializes_the_dual_era_server(modern: ModernServer) -> None:
    async with connected(modern.url, "legacy") as h:
        assert h.upstream.info is not None and h.upstream.info.era == "legacy"
        assert h.upstream._session_id
        response = await h.call("echo", {"text": "old wire"}, id="x")
        assert response["id"] == "x" and text_of(response) == "old wire"


@pytest.mark.integration
async def test_legacy_stream_closed_early_is_resumed_with_last_event_id(modern: ModernServer) -> None:
    async with connected(modern.url, "legacy") as h:
        handler = RecordingHandler()
        response = await h.call("polled", {}, id="p", ctx=CallContext("r", handler=handler),
                                extra={"_meta": {"progressToken": "pt"}})
        assert response["id"] == "p" and text_of(response) == "polled"
        assert [n["params"]["progress"] for n in handler.notifications] == [1, 2]


@pytest.mark.integration
async def test_legacy_session_gone_is_reinitialized_once_and_the_call_retried(modern: ModernServer) -> None:
    async with connected(modern.url, "legacy") as h:
        stale = h.upstream._session_id
        assert stale is not None
        async with aiohttp.ClientSession() as http:  # the server forgets the session (404 from now on)
            headers = {"Mcp-Session-Id": stale, "MCP-Protocol-Version": "2025-11-25"}
            async with http.delete(modern.url, headers=headers) as resp:
                assert resp.status in (200, 204)
        response = await h.call("echo", {"text": "again"}, id="r")
        assert response["id"] == "r" and text_of(response) == "again"
        assert h.upstream._session_id not in (None, stale)
        assert len(h.tap.of("sent", "initialize")) >= 2


@pytest.mark.integration
async def test_call_carries_the_envelope_and_keeps_the_agents_id(modern: ModernServer) -> None:
    async with connected(modern.url, "modern") as h:
        response = await h.call("echo", {"text": "hi"}, id=42, extra={"_meta": {"trace": "t-1"}})
        assert response["id"] == 42 and text_of(response) == "hi"
        assert response["result"]["resultType"] == "complete"
        sent = h.tap.of("sent", "tools/call")[-1].body
        assert sent["id"] == 42
        meta = sent["params"]["_meta"]
        assert meta[PV] == "2026-07-28" and meta["trace"] == "t-1"
        assert "io.modelcontextprotocol/clientInfo" in meta
        # the agent's own capabilities when it is modern, the gateway's otherwise
        agent = CallContext("m", era="modern", client_capabilities={"sampling": {}})
        seen = orjson.loads(text_of(await h.call("whoami", {}, ctx=agent)))
        assert seen == {"caps": {"sampling": {}}, "version": "2026-07-28"}
        seen = orjson.loads(text_of(await h.call("whoami", {}, ctx=CallContext("l", era="legacy"))))
        assert set(seen["caps"]) == {"roots", "sampling", "elicitation"}


@pytest.mark.integration
async def test_concurrent_calls_with_the_same_agent_id(modern: ModernServer) -> None:
    async with connected(modern.url) as h:
        results = await asyncio.gather(*(h.call("echo", {"text": str(i)}, id=7) for i in range(5)))
        assert [r["id"] for r in results] == [7] * 5
        assert sorted(text_of(r) for r in results) == ["0", "1", "2", "3", "4"]


@pytest.mark.integration
async def test_progress_on_the_response_stream(modern: ModernServer) -> None:
    async with connected(modern.url) as h:
        handler = RecordingHandler()
        response = await h.call("slow", {"steps": 3}, ctx=CallContext("p", handler=handler),
                                extra={"_meta": {"progressToken": "tok"}})
        progress = [n["params"] for n in handler.notifications]
        assert [p["progress"] for p in progress] == [1, 2, 3]
        assert {p["progressToken"] for p in progress} == {"tok"}
        assert text_of(response) == "done"
        for record in h.tap.records:
            assert orjson.loads(record.wire) == record.body


@pytest.mark.integration
async def test_input_required_results_come_back_as_they_are(modern: ModernServer) -> None:
    async with connected(modern.url) as h:
        agent = CallContext("mrtr", era="modern", client_capabilities={"elicitation": {}})
        first = await h.call("ask", {}, id=1, ctx=agent)
        result = first["result"]
        assert result["resultType"] == "input_required"
        assert result["inputRequests"]["name"]["method"] == "elicitation/create"
        retry = {"inputResponses": {"name": {"action": "accept", "content": {"n": "bob"}}},
                 "requestState": result["requestState"]}
        second = await h.call("ask", {}, id=2, ctx=agent, extra=retry)
        assert second["id"] == 2 and second["result"]["resultType"] == "complete"
        assert "hello" in text_of(second)


@pytest.mark.integration
async def test_listen_stream_delivers_change_notifications(modern: ModernServer) -> None:
    async with connected(modern.url) as h:
        await eventually(lambda: bool(h.tap.of("received", "notifications/subscriptions/acknowledged")),
                         what="listen ack")
        listen = h.tap.of("sent", "subscriptions/listen")[0].body
        assert listen["params"]["notifications"] == {
            "toolsListChanged": True, "promptsListChanged": True, "resourcesListChanged": True}
        await h.call("change", {})
        await eventually(lambda: any(m["method"] == "notifications/tools/list_changed"
                                     for m in h.observer.unsolicited), what="tools/list_changed")
        assert all(m["method"] != "notifications/subscriptions/acknowledged" for m in h.observer.unsolicited)


@pytest.mark.integration
async def test_name_and_param_headers_survive_server_validation(modern: ModernServer) -> None:
    async with connected(modern.url) as h:
        await h.upstream.request({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, CallContext("l"), 10)
        # the SDK rejects with -32020 unless Mcp-Name and Mcp-Param-Region (base64 here) match the body
        response = await h.call("grüße", {"region": "Zürich"})
        assert text_of(response) == "hello from Zürich"


@pytest.mark.integration
async def test_unknown_method_error_is_returned_with_the_agents_id(modern: ModernServer) -> None:
    async with connected(modern.url) as h:
        response = await h.upstream.request({"jsonrpc": "2.0", "id": "q", "method": "nope/nothing"},
                                             CallContext("e"), 10)
        assert response["id"] == "q" and response["error"]["code"] == -32601


@pytest.mark.integration
async def test_timeout_closes_the_stream_and_the_server_stops_working(modern: ModernServer) -> None:
    async with connected(modern.url) as h:
        with pytest.raises(UpstreamTimeout):
            await h.call("sleep", {"seconds": 30}, timeout=0.5)
        await eventually(modern.cancelled.is_set, what="server-side cancellation")
        assert not h.tap.of("sent", "notifications/cancelled")  # on this wire the close is the signal


@pytest.mark.integration
async def test_server_stopped_then_restarted(modern: ModernServer) -> None:
    async with connected(modern.url) as h:
        await modern.stop()
        with pytest.raises(UpstreamUnavailable):
            await h.call("echo", {"text": "anyone?"})
        await eventually(lambda: UpstreamState.DOWN in h.observer.states, what="DOWN")
        await modern.start()
        assert await h.upstream.wait_ready(READY_S)
        assert text_of(await h.call("echo", {"text": "back"})) == "back"
        assert h.observer.states[-1] is UpstreamState.READY


@pytest.mark.integration
async def test_stop_leaves_no_tasks_behind(modern: ModernServer) -> None:
    before = asyncio.all_tasks()
    h = Harness(modern.url)
    await h.upstream.start()
    assert await h.upstream.wait_ready(READY_S)
    await eventually(lambda: bool(h.tap.of("received", "notifications/subscriptions/acknowledged")),
                     what="listen ack")
    await h.call("slow", {"steps": 2}, extra={"_meta": {"progressToken": 1}})
    await h.upstream.stop()
    await asyncio.sleep(0)
    assert asyncio.all_tasks() - before == set()


# -- request-metadata header encoding (spec table, Value Encoding) -------------------------


@pytest.mark.parametrize(("value", "header"), [
    ("us-west1", "us-west1"),
    ("Hello, 世界", "=?base64?SGVsbG8sIOS4lueVjA==?="),
    (" padded ", "=?base64?IHBhZGRlZCA=?="),
    ("line1\nline2", "=?base64?bGluZTEKbGluZTI=?="),
    ("=?base64?literal?=", "=?base64?PT9iYXNlNjQ/bGl0ZXJhbD89?="),
])
def test_header_values_use_the_base64_sentinel_when_needed(value: str, header: str) -> None:
    assert encode_value(value) == header


def test_param_headers_follow_x_mcp_header_annotations() -> None:
    tool = {"name": "t", "inputSchema": {"type": "object", "properties": {
        "region": {"type": "string", "x-mcp-header": "Region"},
        "opts": {"type": "object", "properties": {
            "dry": {"type": "boolean", "x-mcp-header": "Dry"},
            "n": {"type": "integer", "x-mcp-header": "N"},
        }},
        "note": {"type": "string"},
    }}}
    specs = tool_param_headers(tool)
    assert specs == [("Mcp-Param-Region", ("region",)), ("Mcp-Param-Dry", ("opts", "dry")),
                     ("Mcp-Param-N", ("opts", "n"))]
    assert param_headers({"region": "Zürich", "opts": {"dry": True, "n": None}}, specs) == [
        ("Mcp-Param-Region", "=?base64?WsO8cmljaA==?="), ("Mcp-Param-Dry", "true")]
    number = {"inputSchema": {"properties": {"x": {"type": "number", "x-mcp-header": "X"}}}}
    twice = {"inputSchema": {"properties": {"a": {"type": "string", "x-mcp-header": "A"},
                                            "b": {"type": "string", "x-mcp-header": "a"}}}}
    assert tool_param_headers(number) is None and tool_param_headers(twice) is None
