"""`mcp-server-everything` over stdio behind the gateway, driven by the official SDK client.

Legacy mode (initialize + session): progress before the result, sampling / elicitation / roots
requests from the upstream answered by the agent's callbacks, logging/setLevel and log delivery,
resources, prompts, completions. Modern mode (2026-07-28): the same features over the stateless
wire, server-to-client requests arriving as `input_required` rounds.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import mcp_types as types
import pytest
import pytest_asyncio
from mcp.client.client import Client
from mcp.client.session import ClientRequestContext

from schemas.events import Direction, EventType
from tests.integration.rawmcp import bound_module_tests
from tests.support.gateway import RunningGateway, everything_stdio, running_gateway

pytestmark = [
    pytest.mark.integration,
    pytest.mark.node,
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning"),
]

STATIC_DOC = "demo://resource/static/document/instructions.md"
MODES = ["legacy", "auto"]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gw() -> AsyncIterator[RunningGateway]:
    async with running_gateway({"servers": {"ev": everything_stdio()}}) as gateway:
        yield gateway


def text_of(result: types.CallToolResult | types.GetPromptResult) -> str:
    if isinstance(result, types.CallToolResult):
        return "\n".join(c.text for c in result.content if isinstance(c, types.TextContent))
    return "\n".join(m.content.text for m in result.messages if isinstance(m.content, types.TextContent))


async def test_tools_list_has_the_capability_dependent_tools(gw: RunningGateway) -> None:
    async with Client(gw.url, mode="legacy") as client:
        names = {t.name for t in (await client.list_tools()).tools}
    assert {"ev__echo", "ev__trigger-long-running-operation", "ev__trigger-sampling-request",
            "ev__trigger-elicitation-request", "ev__get-roots-list"} <= names


@pytest.mark.parametrize("mode", MODES)
async def test_progress_arrives_before_the_result(gw: RunningGateway, mode: str) -> None:
    seen: list[tuple[str, float]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append(("progress", progress))

    async with Client(gw.url, mode=mode) as client:
        result = await client.call_tool("ev__trigger-long-running-operation", {"duration": 0.5, "steps": 5},
                                        progress_callback=on_progress)
        seen.append(("result", 0))
    assert not result.is_error
    assert "Steps: 5" in text_of(result)
    assert seen == [("progress", float(i)) for i in range(1, 6)] + [("result", 0)]


async def sample(context: ClientRequestContext, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
    prompt = params.messages[0].content
    assert isinstance(prompt, types.TextContent)
    return types.CreateMessageResult(role="assistant", model="test-model",
                                     content=types.TextContent(type="text", text=f"sampled<{prompt.text}>"))


async def elicit(context: ClientRequestContext, params: types.ElicitRequestParams) -> types.ElicitResult:
    return types.ElicitResult(action="accept", content={"name": "Ada Lovelace", "check": True, "integer": 7})


@pytest.mark.parametrize("mode", MODES)
async def test_sampling_request_reaches_the_agent_and_the_answer_gets_back(gw: RunningGateway, mode: str) -> None:
    mark = len(gw.sink.events)
    async with Client(gw.url, mode=mode, sampling_callback=sample) as client:
        result = await asyncio.wait_for(
            client.call_tool("ev__trigger-sampling-request", {"prompt": "what is 6x7", "maxTokens": 16}), 30)
    assert not result.is_error, text_of(result)
    assert "sampled<Resource trigger-sampling-request context: what is 6x7>" in text_of(result)
    asked = [e for e in gw.sink.events[mark:] if e.event_type is EventType.UPSTREAM_MESSAGE_RECEIVED
             and e.method == "sampling/createMessage"]
    assert asked, "the upstream's sampling request is on the record"
    answered = [e for e in gw.sink.events[mark:] if e.event_type is EventType.UPSTREAM_MESSAGE_SENT
                and e.correlation_id == asked[0].correlation_id and b"sampled<" in e.payload]
    assert answered, "the agent's answer, as sent back upstream, is on the record"


@pytest.mark.parametrize("mode", MODES)
async def test_elicitation_request_reaches_the_agent_and_the_answer_gets_back(gw: RunningGateway, mode: str) -> None:
    asked: list[types.ElicitRequestParams] = []

    async def on_elicit(context: ClientRequestContext, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params)
        return await elicit(context, params)

    async with Client(gw.url, mode=mode, elicitation_callback=on_elicit) as client:
        result = await asyncio.wait_for(client.call_tool("ev__trigger-elicitation-request", {}), 30)
    assert not result.is_error, text_of(result)
    assert "Name: Ada Lovelace" in text_of(result)
    assert len(asked) == 1
    schema = asked[0].requested_schema  # type: ignore[union-attr]
    assert "titledMultipleSelectEnum" in schema["properties"], "the schema is relayed unchanged"


async def test_elicitation_declined_by_the_agent(gw: RunningGateway) -> None:
    async def decline(context: ClientRequestContext, params: types.ElicitRequestParams) -> types.ElicitResult:
        return types.ElicitResult(action="decline")

    async with Client(gw.url, mode="legacy", elicitation_callback=decline) as client:
        result = await asyncio.wait_for(client.call_tool("ev__trigger-elicitation-request", {}), 30)
    assert "declined" in text_of(result)


async def test_agent_without_the_capability_is_not_asked(gw: RunningGateway) -> None:
    """The gateway offers sampling upstream on every agent's behalf; an agent that did not declare it
    gets no request, and the upstream gets an error instead of waiting forever."""
    async with Client(gw.url, mode="legacy") as client:
        result = await asyncio.wait_for(
            client.call_tool("ev__trigger-sampling-request", {"prompt": "x", "maxTokens": 4}), 30)
    assert result.is_error


async def test_roots_request_reaches_the_agent(gw: RunningGateway) -> None:
    async def roots(context: ClientRequestContext) -> types.ListRootsResult:
        return types.ListRootsResult(roots=[types.Root(uri="file:///srv/project-alpha", name="alpha")])

    async with Client(gw.url, mode="legacy", list_roots_callback=roots) as client:
        result = await asyncio.wait_for(client.call_tool("ev__get-roots-list", {}), 30)
    assert "file:///srv/project-alpha" in text_of(result), text_of(result)


async def test_set_level_and_log_messages_reach_the_agent(gw: RunningGateway) -> None:
    logs: list[types.LoggingMessageNotificationParams] = []
    arrived = asyncio.Event()

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        logs.append(params)
        arrived.set()

    mark = len(gw.sink.events)
    async with Client(gw.url, mode="legacy", logging_callback=on_log) as client:
        assert isinstance(await client.set_logging_level("debug"), types.EmptyResult)
        started = await client.call_tool("ev__toggle-simulated-logging", {})
        assert "Started simulated" in text_of(started)
        try:
            await asyncio.wait_for(arrived.wait(), 15)
        finally:
            stopped = await client.call_tool("ev__toggle-simulated-logging", {})
            assert "Stopped simulated" in text_of(stopped)
    assert logs and "message" in str(logs[0].data)
    forwarded = [e for e in gw.sink.events[mark:] if e.event_type is EventType.UPSTREAM_MESSAGE_SENT
                 and e.method == "logging/setLevel" and e.server == "ev"]
    assert forwarded, "logging/setLevel was forwarded to the upstream that has the logging capability"


@pytest.mark.parametrize("mode", MODES)
async def test_resources_list_and_read_a_static_resource(gw: RunningGateway, mode: str) -> None:
    async with Client(gw.url, mode=mode) as client:
        listed = await client.list_resources()
        assert STATIC_DOC in {str(r.uri) for r in listed.resources}
        templates = await client.list_resource_templates()
        assert "demo://resource/dynamic/text/{resourceId}" in {t.uri_template for t in templates.resource_templates}
        read = await client.read_resource(STATIC_DOC)
        assert read.contents and isinstance(read.contents[0], types.TextResourceContents)
        assert read.contents[0].text.strip()
        dynamic = await client.read_resource("demo://resource/dynamic/text/42")
        assert "Resource 42" in dynamic.contents[0].text  # type: ignore[union-attr]


@pytest.mark.parametrize("mode", MODES)
async def test_prompts_list_and_get(gw: RunningGateway, mode: str) -> None:
    async with Client(gw.url, mode=mode) as client:
        names = {p.name for p in (await client.list_prompts()).prompts}
        assert {"ev__simple-prompt", "ev__args-prompt", "ev__completable-prompt"} <= names
        simple = await client.get_prompt("ev__simple-prompt")
        assert "simple prompt without arguments" in text_of(simple)
        with_args = await client.get_prompt("ev__args-prompt", {"city": "Paris", "state": "IDF"})
        assert "What's weather in Paris, IDF?" in text_of(with_args)


@pytest.mark.parametrize("mode", MODES)
async def test_completion_for_prompt_and_resource_template(gw: RunningGateway, mode: str) -> None:
    async with Client(gw.url, mode=mode) as client:
        prompt = await client.complete(types.PromptReference(type="ref/prompt", name="ev__completable-prompt"),
                                       {"name": "department", "value": "Eng"})
        assert prompt.completion.values == ["Engineering"]
        narrowed = await client.complete(types.PromptReference(type="ref/prompt", name="ev__completable-prompt"),
                                         {"name": "name", "value": ""}, {"department": "Sales"})
        assert narrowed.completion.values == ["David", "Eve", "Frank"]
        template = await client.complete(
            types.ResourceTemplateReference(type="ref/resource", uri="demo://resource/dynamic/text/{resourceId}"),
            {"name": "resourceId", "value": "7"})
        assert template.completion.values == ["7"]


@pytest.mark.parametrize("mode", MODES)
async def test_tool_calls_with_structured_and_image_content(gw: RunningGateway, mode: str) -> None:
    async with Client(gw.url, mode=mode) as client:
        echo = await client.call_tool("ev__echo", {"message": "héllo, 世界"})
        assert "héllo, 世界" in text_of(echo)
        total = await client.call_tool("ev__get-sum", {"a": 19, "b": 23})
        assert "42" in text_of(total)
        image = await client.call_tool("ev__get-tiny-image", {})
        assert any(isinstance(c, types.ImageContent) and c.data for c in image.content)
        structured = await client.call_tool("ev__get-structured-content", {"location": "New York"})
        assert structured.structured_content, structured


async def test_audit_trail_of_one_legacy_call_is_complete(gw: RunningGateway) -> None:
    mark = len(gw.sink.events)
    async with Client(gw.url, mode="legacy") as client:
        await client.call_tool("ev__echo", {"message": "audit me"})
    calls = [e for e in gw.sink.events[mark:] if e.method == "tools/call"]
    assert [e.direction for e in calls] == [Direction.AGENT_TO_GATEWAY, Direction.GATEWAY_TO_UPSTREAM,
                                           Direction.UPSTREAM_TO_GATEWAY, Direction.GATEWAY_TO_AGENT]
    assert all(e.tool == "echo" and e.server == "ev" and e.session_id for e in calls)
    assert len({e.correlation_id for e in calls}) == 1
    assert b"audit me" in calls[0].payload and b"audit me" in calls[-1].payload



bound_module_tests(globals(), 60)
