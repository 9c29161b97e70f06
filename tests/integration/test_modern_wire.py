"""The 2026-07-28 wire as a modern agent sees it through the gateway, in front of the repository's
reference server (a legacy upstream over stdio): result envelopes and cache hints, per-request
log opt-in, progress on the response stream, resource errors, and `Mcp-Param-*` validation."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from tests.integration.rawmcp import (
    Answer,
    bound_module_tests,
    modern,
    modern_body,
    modern_headers,
    open_legacy,
    post,
)
from tests.support.gateway import RunningGateway, reference_server_stdio, running_gateway

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

SERVER_INFO = "io.modelcontextprotocol/serverInfo"
LOG_LEVEL = "io.modelcontextprotocol/logLevel"
HEADER_TOOL = "ref__test_x_mcp_header"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gw() -> AsyncIterator[RunningGateway]:
    async with running_gateway({"servers": {"ref": reference_server_stdio()}}) as gateway:
        yield gateway


@pytest_asyncio.fixture(loop_scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


CACHEABLE = {
    "tools/list": {},
    "prompts/list": {},
    "resources/list": {},
    "resources/templates/list": {},
    "resources/read": {"uri": "test://static-text"},
    "server/discover": {},
}


@pytest.mark.parametrize("method", sorted(CACHEABLE))
async def test_cacheable_results_carry_result_type_and_cache_hints(gw: RunningGateway, http: aiohttp.ClientSession,
                                                                   method: str) -> None:
    answer = await modern(http, gw.url, method, CACHEABLE[method], id=f"c-{method}")
    assert answer.status == 200, answer.raw[:300]
    result = answer.result
    assert result["resultType"] == "complete"
    assert isinstance(result["ttlMs"], int) and result["ttlMs"] >= 0
    assert result["cacheScope"] in ("public", "private")
    assert answer.body["id"] == f"c-{method}"


@pytest.mark.parametrize("single", [False, True])
async def test_results_identify_the_server(gw: RunningGateway, http: aiohttp.ClientSession, single: bool) -> None:
    """Servers SHOULD put `_meta.io.modelcontextprotocol/serverInfo` on every modern result."""
    url = gw.server_url("ref") if single else gw.url
    name = "ref__test_simple_text" if not single else "test_simple_text"
    answer = await modern(http, url, "tools/call", {"name": name, "arguments": {}})
    assert answer.status == 200
    info = answer.result["_meta"][SERVER_INFO]
    assert info["name"] and info["version"]


def log_messages(answer: Answer) -> list[dict[str, Any]]:
    return [m for m in answer.messages if m.get("method") == "notifications/message"]


async def logging_call(http: aiohttp.ClientSession, url: str, level: str | None) -> Answer:
    params: dict[str, Any] = {"name": "ref__test_logging_tool", "arguments": {}}
    if level is not None:
        params["_meta"] = {LOG_LEVEL: level}
    return await post(http, url, modern_body("tools/call", params, "log"),
                      modern_headers("tools/call", "ref__test_logging_tool"))


async def test_no_log_messages_without_a_log_level(gw: RunningGateway, http: aiohttp.ClientSession) -> None:
    answer = await logging_call(http, gw.url, None)
    assert answer.status == 200 and answer.result.get("isError") is not True
    assert log_messages(answer) == []


async def test_log_messages_at_or_above_the_requested_level(gw: RunningGateway, http: aiohttp.ClientSession) -> None:
    chatty = await logging_call(http, gw.url, "debug")
    assert len(log_messages(chatty)) >= 3, chatty.messages
    assert all(m["params"]["level"] == "info" for m in log_messages(chatty))
    quiet = await logging_call(http, gw.url, "error")
    assert quiet.status == 200 and log_messages(quiet) == []


async def test_logs_of_a_modern_call_never_reach_a_legacy_sessions_stream(gw: RunningGateway,
                                                                          http: aiohttp.ClientSession) -> None:
    session = await open_legacy(http, gw.url)
    set_level = await session.request("logging/setLevel", {"level": "debug"})
    assert set_level.status == 200
    async with http.get(gw.url, headers={**session.headers, "Accept": "text/event-stream"},
                        timeout=aiohttp.ClientTimeout(total=None, sock_read=None)) as stream:
        assert stream.status == 200
        answer = await logging_call(http, gw.url, "debug")
        assert len(log_messages(answer)) >= 3
        # The session's own call: its logs arrive on its POST, and nothing leaked onto the GET stream.
        own = await session.call("ref__test_tool_with_logging")
        assert len(log_messages(own)) >= 3
        assert await session.delete() == 200
        rest = await stream.content.read()
    assert b"notifications/message" not in rest


async def test_progress_arrives_on_the_response_stream(gw: RunningGateway, http: aiohttp.ClientSession) -> None:
    params = {"name": "ref__test_tool_with_progress", "arguments": {}, "_meta": {"progressToken": "progress-test-1"}}
    answer = await post(http, gw.url, modern_body("tools/call", params, "p"),
                        modern_headers("tools/call", "ref__test_tool_with_progress"))
    progress = [m for m in answer.messages if m.get("method") == "notifications/progress"]
    assert [p["params"]["progress"] for p in progress] == [0, 50, 100]
    assert all(p["params"]["progressToken"] == "progress-test-1" for p in progress)
    assert answer.messages[-1]["id"] == "p" and "result" in answer.messages[-1]


@pytest.mark.parametrize("endpoint", ["aggregate", "single"])
async def test_unknown_resource_is_32602_with_the_uri(gw: RunningGateway, http: aiohttp.ClientSession,
                                                      endpoint: str) -> None:
    uri = "test://nonexistent-resource-for-conformance-testing"
    url = gw.url if endpoint == "aggregate" else gw.server_url("ref")
    answer = await modern(http, url, "resources/read", {"uri": uri}, id="nf")
    assert answer.body["id"] == "nf"
    assert answer.error["code"] == -32602, answer.body
    assert answer.error["data"]["uri"] == uri


async def test_template_resource_is_routed_by_its_template(gw: RunningGateway, http: aiohttp.ClientSession) -> None:
    answer = await modern(http, gw.url, "resources/read", {"uri": "test://template/123/data"})
    assert answer.status == 200
    assert "123" in answer.result["contents"][0]["text"]


def b64(value: str) -> str:
    return "=?base64?" + base64.b64encode(value.encode()).decode() + "?="


HEADER_CASES: dict[str, tuple[dict[str, Any], dict[str, str], int]] = {
    "matching": ({"region": "eu-west1"}, {"Mcp-Param-Region": "eu-west1"}, 200),
    "matching-lowercase-name": ({"region": "eu-west1"}, {"mcp-param-region": "eu-west1"}, 200),
    "matching-base64": ({"region": "Zürich ü"}, {"Mcp-Param-Region": b64("Zürich ü")}, 200),
    "differs": ({"region": "eu-west1"}, {"Mcp-Param-Region": "us-east1"}, 400),
    "case-differs": ({"region": "eu-west1"}, {"Mcp-Param-Region": "EU-WEST1"}, 400),
    "missing": ({"region": "eu-west1"}, {}, 400),
    "sent-without-value": ({}, {"Mcp-Param-Region": "eu-west1"}, 400),
    "absent-both": ({}, {}, 200),
}


@pytest.mark.parametrize("case", sorted(HEADER_CASES))
async def test_param_headers_are_validated_against_the_body(gw: RunningGateway, http: aiohttp.ClientSession,
                                                            case: str) -> None:
    arguments, headers, status = HEADER_CASES[case]
    body = modern_body("tools/call", {"name": HEADER_TOOL, "arguments": arguments}, "h")
    answer = await post(http, gw.url, body, modern_headers("tools/call", HEADER_TOOL, extra=headers))
    assert answer.status == status, answer.raw[:300]
    if status == 400:
        assert answer.error["code"] == -32020
    else:
        assert f"region={arguments.get('region', '<none>')}" in answer.result["content"][0]["text"]


bound_module_tests(globals(), 60)
