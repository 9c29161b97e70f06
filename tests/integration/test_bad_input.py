"""Bad input over raw HTTP, in both protocol eras: every refusal has the right status and JSON-RPC
error, is audited, and leaves the gateway serving the next normal call.

One gateway (with `mcp-server-time`) serves the protocol-level cases; the upstream failures
(a server that dies at once, one killed mid-call, one too slow) get gateways of their own.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from ingress.errors import UPSTREAM_TIMEOUT, UPSTREAM_UNAVAILABLE
from schemas.events import EventType, GatewayEvent, Outcome
from tests.integration.rawmcp import (
    ACCEPT_BOTH,
    CLIENT_INFO,
    LEGACY,
    META_CAPS,
    META_INFO,
    META_VERSION,
    MODERN,
    Answer,
    answered_with_error,
    bound_module_tests,
    child_pids,
    cmdline,
    initialize_body,
    modern,
    modern_body,
    modern_call,
    modern_headers,
    open_legacy,
    post,
    request,
)
from tests.support.gateway import RunningGateway, everything_stdio, running_gateway, time_server

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS = -32700, -32600, -32601, -32602
HEADER_MISMATCH, UNSUPPORTED_VERSION = -32020, -32022
MAX_BODY = 4096
ALLOWED_ORIGIN = "https://agents.example.com"
TIME_TOOL = "time__get_current_time"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gw() -> AsyncIterator[RunningGateway]:
    config = {
        "servers": {"time": time_server()},
        "limits": {"max_body_bytes": MAX_BODY, "page_size": 1},
        "listen": {"allowed_origins": [ALLOWED_ORIGIN]},
    }
    async with running_gateway(config) as gateway:
        yield gateway


@pytest_asyncio.fixture(loop_scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def new_events(gw: RunningGateway, mark: int) -> list[GatewayEvent]:
    return gw.sink.events[mark:]


def refusals(events: list[GatewayEvent], code: int | None = None) -> list[GatewayEvent]:
    return [e for e in events if e.event_type is EventType.MESSAGE_REFUSED and (code is None or e.error_code == code)]


async def assert_serves(http: aiohttp.ClientSession, url: str, tool: str = TIME_TOOL,
                        arguments: dict[str, Any] | None = None) -> None:
    """The gateway still answers a normal call, in both eras."""
    arguments = arguments if arguments is not None else {"timezone": "UTC"}
    answer = await modern_call(http, url, tool, arguments, id="after-modern")
    assert answer.status == 200, answer.raw[:500]
    assert answer.result.get("isError") is not True, answer.body
    session = await open_legacy(http, url)
    answer = await session.call(tool, arguments)
    assert answer.status == 200 and answer.result.get("isError") is not True, answer.raw[:500]
    assert await session.delete() == 200


def era_headers(era: str, method: str = "tools/list") -> dict[str, str]:
    return modern_headers(method) if era == "modern" else {}


# -- malformed and invalid JSON-RPC -------------------------------------------------------------


@pytest.mark.parametrize("era", ["legacy", "legacy-session", "modern"])
async def test_malformed_json_is_a_parse_error(gw: RunningGateway, http: aiohttp.ClientSession, era: str) -> None:
    headers = era_headers(era)
    if era == "legacy-session":
        session = await open_legacy(http, gw.url)
        headers = session.headers
    body = b'{"jsonrpc": "2.0", "id": 1, "method": "tools/list", '
    mark = len(gw.sink.events)
    answer = await post(http, gw.url, body, headers)
    assert answer.status == 400
    assert answer.error["code"] == PARSE_ERROR
    assert answer.body["id"] is None
    events = refusals(new_events(gw, mark), PARSE_ERROR)
    assert len(events) == 1 and events[0].payload == body and events[0].outcome is Outcome.REFUSED
    await assert_serves(http, gw.url)


INVALID_CASES: dict[str, Any] = {
    "missing-jsonrpc": {"id": 7, "method": "tools/list"},
    "wrong-jsonrpc-version": {"jsonrpc": "1.0", "id": 7, "method": "tools/list"},
    "float-id": {"jsonrpc": "2.0", "id": 1.5, "method": "tools/list"},
    "object-id": {"jsonrpc": "2.0", "id": {"a": 1}, "method": "tools/list"},
    "null-id": {"jsonrpc": "2.0", "id": None, "method": "tools/list"},
    "boolean-id": {"jsonrpc": "2.0", "id": True, "method": "tools/list"},
    "numeric-method": {"jsonrpc": "2.0", "id": 7, "method": 42},
    "array-params": {"jsonrpc": "2.0", "id": 7, "method": "tools/list", "params": [1, 2]},
    "batch": [{"jsonrpc": "2.0", "id": 7, "method": "tools/list"}, {"jsonrpc": "2.0", "id": 8, "method": "ping"}],
    "not-an-object": "tools/list",
    "result-and-error": {"jsonrpc": "2.0", "id": 7, "result": {}, "error": {"code": 1, "message": "x"}},
}


@pytest.mark.parametrize("era", ["legacy", "modern"])
@pytest.mark.parametrize("case", sorted(INVALID_CASES))
async def test_invalid_jsonrpc_is_an_invalid_request(gw: RunningGateway, http: aiohttp.ClientSession, case: str,
                                                     era: str) -> None:
    body = INVALID_CASES[case]
    if era == "modern" and isinstance(body, dict) and "method" in body:
        body = {**body, "params": {"_meta": {META_VERSION: MODERN, META_CAPS: {}}}} if case != "array-params" \
            else body
    mark = len(gw.sink.events)
    answer = await post(http, gw.url, body, era_headers(era))
    assert answer.status == 400, answer.raw[:300]
    assert answer.error["code"] == INVALID_REQUEST, answer.body
    if case in ("missing-jsonrpc", "wrong-jsonrpc-version", "numeric-method", "array-params", "result-and-error"):
        assert answer.body["id"] == 7, "an error about a request with a valid id carries that id"
    else:
        assert answer.body["id"] is None
    assert len(refusals(new_events(gw, mark), INVALID_REQUEST)) == 1
    await assert_serves(http, gw.url)


# -- methods --------------------------------------------------------------------------------------


@pytest.mark.parametrize("era", ["legacy", "modern"])
async def test_unknown_method(gw: RunningGateway, http: aiohttp.ClientSession, era: str) -> None:
    mark = len(gw.sink.events)
    if era == "modern":
        answer = await modern(http, gw.url, "tools/frobnicate", {}, id="m-1")
        assert answer.status == 404, "the modern era answers an unknown method with HTTP 404"
        assert answer.body["id"] == "m-1"
    else:
        session = await open_legacy(http, gw.url)
        answer = await session.request("tools/frobnicate", {})
        assert answer.status == 200
    assert answer.error["code"] == METHOD_NOT_FOUND
    assert "tools/frobnicate" in answer.error["message"]
    assert answered_with_error(gw.sink, METHOD_NOT_FOUND, lambda e: e in new_events(gw, mark)
                               and e.method == "tools/frobnicate")
    await assert_serves(http, gw.url)


REMOVED_IN_2026: dict[str, dict[str, Any]] = {
    "initialize": {"protocolVersion": LEGACY, "capabilities": {}, "clientInfo": CLIENT_INFO},
    "ping": {},
    "logging/setLevel": {"level": "info"},
    "resources/subscribe": {"uri": "test://watched-resource"},
    "resources/unsubscribe": {"uri": "test://watched-resource"},
}


@pytest.mark.parametrize("method", sorted(REMOVED_IN_2026))
async def test_methods_removed_in_2026_are_unknown_to_modern_agents(gw: RunningGateway,
                                                                     http: aiohttp.ClientSession,
                                                                     method: str) -> None:
    """2026-07-28 removed these; a modern request for one gets 404 + -32601 (conformance suite,
    sep-2575-http-server-method-not-found-404-*), even with a valid envelope and headers."""
    answer = await modern(http, gw.url, method, REMOVED_IN_2026[method], id="removed-1")
    assert (answer.status, answer.body.get("error", {}).get("code")) == (404, METHOD_NOT_FOUND), answer.raw[:300]
    assert answer.body["id"] == "removed-1"
    await assert_serves(http, gw.url)


@pytest.mark.parametrize("era", ["legacy", "modern"])
@pytest.mark.parametrize("kind", ["tool", "prompt", "resource"])
async def test_unknown_tool_prompt_or_resource_names_it_and_the_servers_searched(
    gw: RunningGateway, http: aiohttp.ClientSession, kind: str, era: str
) -> None:
    method, params, name = {
        "tool": ("tools/call", {"name": "time__no_such_tool", "arguments": {}}, "time__no_such_tool"),
        "prompt": ("prompts/get", {"name": "no_such_prompt"}, "no_such_prompt"),
        "resource": ("resources/read", {"uri": "file:///no/such/resource"}, "file:///no/such/resource"),
    }[kind]
    mark = len(gw.sink.events)
    if era == "modern":
        answer = await modern(http, gw.url, method, params, id="u-1")
        assert answer.body["id"] == "u-1"
    else:
        session = await open_legacy(http, gw.url)
        answer = await session.request(method, params)
    error = answer.error
    expected = -32002 if kind == "resource" and era == "legacy" else INVALID_PARAMS
    assert error["code"] == expected
    assert name in error["message"] and "time" in error["message"], error
    assert error["data"]["searched"] == ["time"]
    if kind == "resource":
        assert error["data"]["uri"] == name
    assert answered_with_error(gw.sink, expected, lambda e: e in new_events(gw, mark) and e.method == method)
    await assert_serves(http, gw.url)


async def test_unknown_server_endpoint_is_404_and_audited(gw: RunningGateway, http: aiohttp.ClientSession) -> None:
    """`/servers/nosuch/mcp` is refused with 404; like every refusal, it becomes an event."""
    mark = len(gw.sink.events)
    answer = await post(http, f"{gw.base}/servers/nosuch/mcp", initialize_body())
    assert answer.status == 404
    assert "nosuch" in answer.error["message"]
    assert refusals(new_events(gw, mark)), "the refusal of an unknown server endpoint was not recorded"
    await assert_serves(http, gw.url)



@pytest.mark.parametrize("era", ["legacy", "modern"])
async def test_pagination_walks_every_page_and_a_forged_cursor_is_refused(gw: RunningGateway,
                                                                          http: aiohttp.ClientSession,
                                                                          era: str) -> None:
    session = await open_legacy(http, gw.url) if era == "legacy" else None

    async def tools_list(params: dict[str, Any]) -> Answer:
        if session is not None:
            return await session.request("tools/list", params)
        return await modern(http, gw.url, "tools/list", params, id="page")

    names: list[str] = []
    cursor: str | None = None
    for _ in range(10):
        answer = await tools_list({"cursor": cursor} if cursor else {})
        names += [t["name"] for t in answer.result["tools"]]
        cursor = answer.result.get("nextCursor")
        if not cursor:
            break
    assert names == [TIME_TOOL, "time__convert_time"]
    mark = len(gw.sink.events)
    answer = await tools_list({"cursor": base64.urlsafe_b64encode(b"g1:forged:0").decode()})
    assert answer.error["code"] == INVALID_PARAMS
    assert answered_with_error(gw.sink, INVALID_PARAMS, lambda e: e in new_events(gw, mark))
    await assert_serves(http, gw.url)


# -- size ------------------------------------------------------------------------------------------


def padded_call(size: int, id: Any = 1, era: str = "legacy") -> bytes:
    """A tools/call of exactly `size` bytes (the padding rides in an ignored argument)."""
    body = modern_body("tools/call", {"name": TIME_TOOL, "arguments": {"timezone": "UTC", "pad": ""}}, id) \
        if era == "modern" else request("tools/call", {"name": TIME_TOOL, "arguments": {"timezone": "UTC", "pad": ""}},
                                        id)
    raw = json.dumps(body, separators=(",", ":")).encode()
    assert len(raw) <= size
    return raw.replace(b'"pad":""', b'"pad":"' + b"x" * (size - len(raw)) + b'"')


@pytest.mark.parametrize("era", ["legacy", "modern"])
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_body_over_the_limit_is_413(gw: RunningGateway, http: aiohttp.ClientSession, framing: str,
                                          era: str) -> None:
    body = padded_call(MAX_BODY + 1, era=era)
    assert len(body) == MAX_BODY + 1
    headers = {"Content-Type": "application/json", "Accept": ACCEPT_BOTH,
               **(modern_headers("tools/call", TIME_TOOL) if era == "modern" else {})}
    if era == "legacy":
        session = await open_legacy(http, gw.url)
        headers.update(session.headers)

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 1000):
            yield body[i:i + 1000]

    mark = len(gw.sink.events)
    data: Any = body if framing == "content-length" else chunks()
    async with http.post(gw.url, data=data, headers=headers) as resp:
        raw = await resp.read()
        status = resp.status
    assert status == 413
    error = json.loads(raw)["error"]
    assert error["code"] == INVALID_REQUEST and "limits.max_body_bytes" in error["message"]
    assert refusals(new_events(gw, mark), INVALID_REQUEST)
    await assert_serves(http, gw.url)


@pytest.mark.parametrize("era", ["legacy", "modern"])
async def test_body_exactly_at_the_limit_is_served(gw: RunningGateway, http: aiohttp.ClientSession, era: str) -> None:
    body = padded_call(MAX_BODY, id="at-limit", era=era)
    if era == "modern":
        answer = await post(http, gw.url, body, modern_headers("tools/call", TIME_TOOL))
    else:
        session = await open_legacy(http, gw.url)
        answer = await session.send(body)
    assert answer.status == 200, answer.raw[:300]
    assert answer.result.get("isError") is not True


# -- origin, sessions, verbs ------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["post-initialize", "post-modern", "get-session", "delete-session", "get-sse"])
async def test_foreign_origin_is_forbidden(gw: RunningGateway, http: aiohttp.ClientSession, where: str) -> None:
    evil = {"Origin": "http://evil.example.com"}
    mark = len(gw.sink.events)
    if where == "post-initialize":
        answer = await post(http, gw.url, initialize_body(), evil)
        status = answer.status
        assert "Mcp-Session-Id" not in answer.headers
    elif where == "post-modern":
        answer = await modern(http, gw.url, "tools/list", {}, extra=evil)
        status = answer.status
    elif where == "get-sse":
        async with http.get(f"{gw.base}/sse", headers=evil) as resp:
            status = resp.status
    else:
        session = await open_legacy(http, gw.url)
        mark = len(gw.sink.events)
        call = http.get if where == "get-session" else http.delete
        async with call(gw.url, headers={**session.headers, **evil}) as resp:
            status = resp.status
        assert (await session.call(TIME_TOOL, {"timezone": "UTC"})).status == 200, "the session must survive"
    assert status == 403
    events = [e for e in refusals(new_events(gw, mark)) if e.outcome is Outcome.FORBIDDEN]
    assert len(events) == 1
    await assert_serves(http, gw.url)


@pytest.mark.parametrize("origin", ["allowed", "loopback"])
async def test_allowed_and_loopback_origins_are_served(gw: RunningGateway, http: aiohttp.ClientSession,
                                                       origin: str) -> None:
    value = ALLOWED_ORIGIN if origin == "allowed" else f"http://localhost:{gw.port}"
    answer = await modern_call(http, gw.url, TIME_TOOL, {"timezone": "UTC"}, extra={"Origin": value})
    assert answer.status == 200 and answer.result.get("isError") is not True


@pytest.mark.parametrize("verb", ["POST", "GET", "DELETE"])
async def test_unknown_session_is_404(gw: RunningGateway, http: aiohttp.ClientSession, verb: str) -> None:
    headers = {"Mcp-Session-Id": "0123456789abcdef0123456789abcdef", "MCP-Protocol-Version": LEGACY}
    mark = len(gw.sink.events)
    if verb == "POST":
        answer = await post(http, gw.url, request("tools/list", id=3), headers)
        status, code = answer.status, answer.error["code"]
    else:
        async with http.request(verb, gw.url, headers={**headers, "Accept": "text/event-stream"}) as resp:
            status = resp.status
            code = (await resp.json())["error"]["code"]
    assert status == 404
    assert code == INVALID_REQUEST
    assert len(refusals(new_events(gw, mark), INVALID_REQUEST)) == 1
    await assert_serves(http, gw.url)


@pytest.mark.parametrize("headers", ["none", "modern"])
@pytest.mark.parametrize("verb", ["GET", "DELETE"])
async def test_get_and_delete_without_a_session_are_405(gw: RunningGateway, http: aiohttp.ClientSession, verb: str,
                                                        headers: str) -> None:
    sent = {"Accept": "text/event-stream"}
    if headers == "modern":
        sent["MCP-Protocol-Version"] = MODERN
    mark = len(gw.sink.events)
    async with http.request(verb, gw.url, headers=sent) as resp:
        assert resp.status == 405
        assert "POST" in resp.headers.get("Allow", "")
    assert len(refusals(new_events(gw, mark))) == 1
    await assert_serves(http, gw.url)


# -- the modern envelope ---------------------------------------------------------------------------

def b64(value: str) -> str:
    return "=?base64?" + base64.b64encode(value.encode()).decode() + "?="


MISMATCHES: dict[str, tuple[dict[str, Any], dict[str, str]]] = {
    "method-header-differs": (modern_body("tools/list", {}, 11), modern_headers("prompts/list")),
    "method-header-missing": (modern_body("tools/list", {}, 11), {"MCP-Protocol-Version": MODERN}),
    "name-header-differs": (modern_body("tools/call", {"name": TIME_TOOL, "arguments": {"timezone": "UTC"}}, 11),
                            modern_headers("tools/call", "time__convert_time")),
    "name-header-missing": (modern_body("tools/call", {"name": TIME_TOOL, "arguments": {"timezone": "UTC"}}, 11),
                            modern_headers("tools/call")),
    "name-header-broken-base64": (modern_body("tools/call", {"name": TIME_TOOL, "arguments": {}}, 11),
                                  modern_headers("tools/call", "=?base64?%%%not-base64%%%?=")),
    "uri-header-differs": (modern_body("resources/read", {"uri": "file:///a"}, 11),
                           modern_headers("resources/read", "file:///b")),
    "version-header-differs-from-body": (modern_body("tools/list", {}, 11, version="v999.0.0"),
                                         modern_headers("tools/list")),
    "version-header-missing": (modern_body("tools/list", {}, 11), {"Mcp-Method": "tools/list"}),
}


@pytest.mark.parametrize("case", sorted(MISMATCHES))
async def test_modern_header_mismatch_is_32020(gw: RunningGateway, http: aiohttp.ClientSession, case: str) -> None:
    body, headers = MISMATCHES[case]
    mark = len(gw.sink.events)
    answer = await post(http, gw.url, body, headers)
    assert answer.status == 400, answer.raw[:300]
    assert answer.error["code"] == HEADER_MISMATCH, answer.body
    if case != "version-header-missing":
        assert answer.body["id"] == 11
    assert len(refusals(new_events(gw, mark), HEADER_MISMATCH)) == 1
    await assert_serves(http, gw.url)


async def test_base64_encoded_name_header_is_accepted(gw: RunningGateway, http: aiohttp.ClientSession) -> None:
    body = modern_body("tools/call", {"name": TIME_TOOL, "arguments": {"timezone": "UTC"}}, 12)
    answer = await post(http, gw.url, body, modern_headers("tools/call", b64(TIME_TOOL)))
    assert answer.status == 200 and answer.result.get("isError") is not True


async def test_unsupported_version_is_32022_with_supported_and_requested(gw: RunningGateway,
                                                                         http: aiohttp.ClientSession) -> None:
    discover = await modern(http, gw.url, "server/discover", {}, id="d")
    supported = discover.result["supportedVersions"]
    mark = len(gw.sink.events)
    body = modern_body("tools/list", {}, 21, version="v999.0.0")
    answer = await post(http, gw.url, body, modern_headers("tools/list", version="v999.0.0"))
    assert answer.status == 400
    error = answer.error
    assert error["code"] == UNSUPPORTED_VERSION
    assert error["data"]["requested"] == "v999.0.0"
    assert MODERN in error["data"]["supported"]
    assert set(error["data"]["supported"]) <= set(supported)
    assert answer.body["id"] == 21
    assert len(refusals(new_events(gw, mark), UNSUPPORTED_VERSION)) == 1
    await assert_serves(http, gw.url)


@pytest.mark.parametrize("missing", ["_meta", META_VERSION, META_CAPS])
async def test_missing_envelope_keys_are_32602(gw: RunningGateway, http: aiohttp.ClientSession, missing: str) -> None:
    body = modern_body("tools/list", {}, 31)
    if missing == "_meta":
        del body["params"]["_meta"]
    else:
        del body["params"]["_meta"][missing]
    mark = len(gw.sink.events)
    answer = await post(http, gw.url, body, modern_headers("tools/list"))
    assert answer.status == 400
    assert answer.error["code"] == INVALID_PARAMS
    if missing != "_meta":
        assert missing in answer.error["message"]
    assert answer.body["id"] == 31
    assert len(refusals(new_events(gw, mark), INVALID_PARAMS)) == 1
    await assert_serves(http, gw.url)


async def test_client_info_is_optional(gw: RunningGateway, http: aiohttp.ClientSession) -> None:
    body = modern_body("tools/list", {}, 32)
    del body["params"]["_meta"][META_INFO]
    answer = await post(http, gw.url, body, modern_headers("tools/list"))
    assert answer.status == 200 and answer.result["tools"]


# -- upstream failures -----------------------------------------------------------------------------

DEAD_SERVER = {"command": sys.executable, "args": ["-c", "import sys; sys.exit(3)"],
               "restart": {"max_restarts": 0}, "startup_timeout_s": 2}


@pytest.mark.parametrize("endpoint", ["aggregate", "single"])
@pytest.mark.parametrize("era", ["legacy", "modern"])
async def test_upstream_that_exits_at_once_is_named_in_the_error(era: str, endpoint: str) -> None:
    async with running_gateway({"servers": {"time": time_server(), "dead": DEAD_SERVER}}, wait_ready_s=0) as gw, \
            aiohttp.ClientSession() as http:
        assert await gw.gateway.upstreams["time"].wait_ready(30)
        await gw.sink.wait_for(lambda e: e.event_type is EventType.UPSTREAM_LOST and e.server == "dead", 30)
        url = gw.url if endpoint == "aggregate" else gw.server_url("dead")
        tool = "dead__anything" if endpoint == "aggregate" else "anything"
        mark = len(gw.sink.events)
        if era == "modern":
            answer = await modern_call(http, url, tool, {}, id="dead-1")
        else:
            session = await open_legacy(http, url)
            answer = await session.call(tool, {})
        error = answer.error
        assert error["code"] == UPSTREAM_UNAVAILABLE
        assert "'dead'" in error["message"]
        assert error["data"]["server"] == "dead"
        assert [e for e in gw.sink.events[mark:] if e.event_type is EventType.AGENT_MESSAGE_SENT
                and e.outcome is Outcome.UPSTREAM_ERROR and e.server == "dead"]
        await assert_serves(http, gw.url)


def everything_pid() -> int:
    pids = [p for p in child_pids() if "server-everything" in cmdline(p) or "mcp-server-everything" in cmdline(p)]
    assert len(pids) == 1, [(p, cmdline(p)) for p in child_pids()]
    return pids[0]


@pytest.mark.node
@pytest.mark.parametrize("era", ["legacy", "modern"])
async def test_upstream_killed_mid_call_fails_the_call_naming_the_server(era: str) -> None:
    config = {"servers": {"ev": {**everything_stdio(), "restart": {"initial_delay_s": 0.2, "max_delay_s": 0.5}}}}
    async with running_gateway(config) as gw, aiohttp.ClientSession() as http:
        pid = everything_pid()
        arguments = {"duration": 60, "steps": 2}
        if era == "modern":
            call = asyncio.ensure_future(modern_call(http, gw.url, "ev__trigger-long-running-operation", arguments))
        else:
            session = await open_legacy(http, gw.url)
            call = asyncio.ensure_future(session.call("ev__trigger-long-running-operation", arguments))
        await gw.sink.wait_for(lambda e: e.event_type is EventType.UPSTREAM_MESSAGE_SENT
                               and e.tool == "trigger-long-running-operation", 15)
        os.kill(pid, signal.SIGKILL)
        answer: Answer = await asyncio.wait_for(call, 15)
        error = answer.error
        assert error["code"] == UPSTREAM_UNAVAILABLE
        assert "'ev'" in error["message"] and error["data"]["server"] == "ev"
        await gw.sink.wait_for(lambda e: e.event_type is EventType.UPSTREAM_LOST and e.server == "ev", 10)
        # The supervisor restarts the server; calls flow again once it is back.
        assert await gw.gateway.upstreams["ev"].wait_ready(30)
        assert everything_pid() != pid
        await assert_serves(http, gw.url, "ev__echo", {"message": "back again"})


@pytest.mark.node
@pytest.mark.parametrize("era", ["legacy", "modern"])
async def test_slow_upstream_times_out_naming_the_server(era: str) -> None:
    config = {"servers": {"ev": everything_stdio()}, "limits": {"request_timeout_s": 1.0}}
    async with running_gateway(config) as gw, aiohttp.ClientSession() as http:
        arguments = {"duration": 30, "steps": 3}
        mark = len(gw.sink.events)
        if era == "modern":
            answer = await modern_call(http, gw.url, "ev__trigger-long-running-operation", arguments, id="slow")
        else:
            session = await open_legacy(http, gw.url)
            answer = await session.call("ev__trigger-long-running-operation", arguments)
        error = answer.error
        assert error["code"] == UPSTREAM_TIMEOUT
        assert "'ev'" in error["message"] and error["data"]["server"] == "ev"
        events = gw.sink.events[mark:]
        assert [e for e in events if e.event_type is EventType.AGENT_MESSAGE_SENT and e.outcome is Outcome.TIMEOUT]
        # The abandoned call was cancelled upstream, and that too is on the record.
        assert [e for e in events if e.event_type is EventType.UPSTREAM_MESSAGE_SENT
                and e.method == "notifications/cancelled" and e.server == "ev"]
        await assert_serves(http, gw.url, "ev__echo", {"message": "still here"})


bound_module_tests(globals(), 60)
