"""Reference MCP server: every conformance-suite server fixture, both protocol eras, stdio or HTTP.

Built on the official SDK's high-level `MCPServer`. One process answers both protocol eras:

* 2025-11-25 and earlier (initialize handshake, `Mcp-Session-Id`, server-to-client requests
  mid-call, `logging/setLevel`, `resources/subscribe`, SSE resumability);
* 2026-07-28 (stateless, `server/discover`, per-request `_meta`, `InputRequiredResult`
  multi-round trips, `subscriptions/listen`, caching hints, and the `io.modelcontextprotocol/tasks`
  extension from `examples.tasks_extension`).

Over Streamable HTTP the SDK's session manager routes each request by its
`MCP-Protocol-Version` header; over stdio the first message decides the era.

It implements the fixtures the `@modelcontextprotocol/conformance` *server* scenarios look
for (`test_simple_text`, `test://static-text`, `test_simple_prompt`, `slow_compute`, ...) and a
few plain demo tools (`echo`, `add`, `list_client_roots`, `update_watched_resource`), and doubles
as the "server of our own" in the README's example gateway config. Run it with::

    python -m examples.reference_server                                 # stdio
    python -m examples.reference_server --transport http --port 8765    # http://127.0.0.1:8765/mcp

HTTP always binds 127.0.0.1 unless `--host` says otherwise. In-process users can call
`create_server()` (a fresh `MCPServer`) or `build_http_app()` (its ASGI app).
"""

import argparse
import base64
import json
import logging
import sys
import warnings
from collections import deque
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, get_args

import anyio
from mcp.server import InitializationOptions, NotificationOptions, ServerRequestContext
from mcp.server.caching import CacheHint
from mcp.server.mcpserver import (
    Context,
    Elicit,
    ElicitationResult,
    ListRoots,
    MCPServer,
    Resolve,
    Sample,
    UserMessage,
)
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.prompts.base import Prompt
from mcp.server.mcpserver.tools import Tool
from mcp.server.streamable_http import EventCallback, EventMessage, EventStore
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError
from mcp_types import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    MISSING_REQUIRED_CLIENT_CAPABILITY,
    AudioContent,
    Completion,
    CompletionArgument,
    CompletionContext,
    CreateMessageRequest,
    CreateMessageRequestParams,
    CreateMessageResult,
    ElicitRequest,
    ElicitRequestFormParams,
    ElicitResult,
    EmbeddedResource,
    EmptyResult,
    ImageContent,
    InputRequest,
    InputRequiredResult,
    JSONRPCMessage,
    ListRootsRequest,
    ListRootsResult,
    LoggingLevel,
    PromptReference,
    ResourceTemplateReference,
    SamplingMessage,
    SetLevelRequestParams,
    SubscribeRequestParams,
    TextContent,
    TextResourceContents,
    ToolAnnotations,
    UnsubscribeRequestParams,
)
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import BaseModel, Field
from starlette.applications import Starlette

from .tasks_extension import TasksExtension, TaskToolPolicy

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PATH",
    "DEFAULT_PORT",
    "BoundedEventStore",
    "ReferenceState",
    "build_http_app",
    "create_server",
    "main",
]

SERVER_NAME = "mcp-audit-gateway-reference"
SERVER_VERSION = "0.1.0"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
DEFAULT_PATH = "/mcp"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")

# Tiny but valid payloads: the conformance suite only checks shape and MIME type.
TEST_IMAGE_BASE64 = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
)
TEST_AUDIO_BASE64 = "UklGRiYAAABXQVZFZm10IBAAAAABAAEAQB8AAAB9AAACABAAZGF0YQIAAAA="

WATCHED_RESOURCE_URI = "test://watched-resource"
TEMPLATE_URI = "test://template/{id}/data"

logger = logging.getLogger(__name__)

_LOG_LEVELS: tuple[LoggingLevel, ...] = get_args(LoggingLevel)


# --------------------------------------------------------------------------------------------
# Server state and SSE resumability
# --------------------------------------------------------------------------------------------


@dataclass
class ReferenceState:
    """Mutable state shared by one server instance's handlers.

    Server-wide rather than per connection: the SDK gives request handlers no public
    per-connection handle, and the fixtures only need one observer at a time.
    """

    watched_content: str = "Watched resource content"
    subscribed_uris: set[str] = field(default_factory=set)
    min_log_level: LoggingLevel = "debug"

    def log_enabled(self, level: LoggingLevel) -> bool:
        return _LOG_LEVELS.index(level) >= _LOG_LEVELS.index(self.min_log_level)


class BoundedEventStore(EventStore):
    """In-memory SSE event log for `Last-Event-ID` replay (SEP-1699 polling).

    Capped, oldest first out, so a long benchmark run cannot grow it without bound; a
    client that falls further behind than the cap simply gets no replay.
    """

    def __init__(self, max_events: int = 1024) -> None:
        if max_events <= 0:
            raise ValueError("max_events must be positive")
        self._events: deque[tuple[str, int, JSONRPCMessage | None]] = deque(maxlen=max_events)
        self._last_id = 0

    async def store_event(self, stream_id: str, message: JSONRPCMessage | None) -> str:
        self._last_id += 1
        self._events.append((stream_id, self._last_id, message))
        return str(self._last_id)

    async def replay_events_after(self, last_event_id: str, send_callback: EventCallback) -> str | None:
        try:
            after = int(last_event_id)
        except ValueError:
            return None
        # Snapshot: the callback awaits, and new events may be stored meanwhile.
        events = list(self._events)
        stream_id = next((sid for sid, eid, _ in events if eid == after), None)
        if stream_id is None:
            return None
        for sid, eid, message in events:
            # `None` marks a priming event, which carries nothing to replay.
            if sid == stream_id and eid > after and message is not None:
                await send_callback(EventMessage(message, str(eid)))
        return stream_id


def _is_modern(ctx: Context) -> bool:
    return ctx.protocol_version in MODERN_PROTOCOL_VERSIONS


async def _log(ctx: Context, state: ReferenceState, level: LoggingLevel, message: str) -> None:
    # Legacy era: `logging/setLevel` filtering is the application's job. Modern era: the SDK
    # drops anything the request's `_meta` log level did not opt into.
    if _is_modern(ctx) or state.log_enabled(level):
        await ctx.log(level, message, logger_name=SERVER_NAME)


# --------------------------------------------------------------------------------------------
# Resolvers: era-agnostic server-to-client requests
#
# A resolver returning `Elicit`/`Sample`/`ListRoots` is sent as a server-to-client request on
# the POST stream at 2025-11-25 and batched into an `InputRequiredResult` at 2026-07-28; the
# tool body is the same on both.
# --------------------------------------------------------------------------------------------


class UserInfo(BaseModel):
    username: str = Field(description="User's response")
    email: str = Field(description="User's email address")


class Sep1034Defaults(BaseModel):
    """Every primitive type with a default (SEP-1034)."""

    name: str = Field(default="John Doe", description="User name")
    age: int = Field(default=30, description="User age")
    score: float = Field(default=95.5, description="User score")
    status: str = Field(
        default="active",
        description="User status",
        json_schema_extra={"enum": ["active", "inactive", "pending"]},
    )
    verified: bool = Field(default=True, description="Verification status")


class Sep1330Enums(BaseModel):
    """The enum schema variants of SEP-1330."""

    untitledSingle: str = Field(
        description="Simple enum without titles",
        json_schema_extra={"enum": ["active", "inactive", "pending"]},
    )
    titledSingle: str = Field(
        description="Enum with titled options (oneOf)",
        json_schema_extra={
            "oneOf": [
                {"const": "low", "title": "Low Priority"},
                {"const": "medium", "title": "Medium Priority"},
                {"const": "high", "title": "High Priority"},
            ]
        },
    )
    untitledMulti: list[str] = Field(
        description="Multi-select without titles",
        json_schema_extra={"items": {"type": "string", "enum": ["read", "write", "execute"]}},
    )
    titledMulti: list[str] = Field(
        description="Multi-select with titled options",
        json_schema_extra={
            "items": {
                "anyOf": [
                    {"const": "feature", "title": "New Feature"},
                    {"const": "bug", "title": "Bug Fix"},
                    {"const": "docs", "title": "Documentation"},
                ]
            }
        },
    )
    legacyEnum: str = Field(
        description="Legacy enum with enumNames",
        json_schema_extra={
            "enum": ["small", "medium", "large"],
            "enumNames": ["Small Size", "Medium Size", "Large Size"],
        },
    )


class Confirmation(BaseModel):
    confirm: bool = Field(description="Go ahead?")


def ask_user_info(message: str) -> Elicit[UserInfo]:
    return Elicit(message, UserInfo)


def ask_sep1034_defaults() -> Elicit[Sep1034Defaults]:
    return Elicit("Please provide user information", Sep1034Defaults)


def ask_sep1330_enums() -> Elicit[Sep1330Enums]:
    return Elicit("Please select values using different enum schema types", Sep1330Enums)


def ask_confirmation() -> Elicit[Confirmation]:
    return Elicit("Please confirm", Confirmation)


def sample_prompt(prompt: str) -> Sample:
    return Sample(
        [SamplingMessage(role="user", content=TextContent(type="text", text=prompt))],
        max_tokens=100,
    )


def fetch_roots() -> ListRoots:
    return ListRoots()


def _describe_elicitation(outcome: ElicitationResult[Any]) -> str:
    content = outcome.data.model_dump_json() if outcome.action == "accept" else "{}"
    return f"action={outcome.action}, content={content}"


# --------------------------------------------------------------------------------------------
# InputRequiredResult fixtures (2026-07-28 multi-round trips, SEP-2322)
#
# The conformance scenarios pin the `inputRequests` keys and `requestState` values, so these
# build the results by hand instead of going through resolvers.
# --------------------------------------------------------------------------------------------

NAME_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"name": {"type": "string"}},
    "required": ["name"],
}
CONFIRM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}},
    "required": ["ok"],
}
COLOR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"color": {"type": "string"}},
    "required": ["color"],
}
CONTEXT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"context": {"type": "string"}},
    "required": ["context"],
}


def _elicit_request(message: str, schema: dict[str, Any]) -> ElicitRequest:
    return ElicitRequest(params=ElicitRequestFormParams(message=message, requested_schema=schema))


def _sampling_request(text: str, max_tokens: int) -> CreateMessageRequest:
    return CreateMessageRequest(
        params=CreateMessageRequestParams(
            messages=[SamplingMessage(role="user", content=TextContent(type="text", text=text))],
            max_tokens=max_tokens,
        )
    )


def _elicited(answer: object, key: str) -> Any:
    if isinstance(answer, ElicitResult) and answer.content:
        return answer.content.get(key)
    return None


def _require_input_required(ctx: Context) -> None:
    # A handshake-era connection has no InputRequiredResult; answer with a readable tool error
    # instead of letting the SDK reject the result shape as an internal error.
    if not _is_modern(ctx):
        raise ToolError(
            f"This fixture needs protocol 2026-07-28; this connection speaks {ctx.protocol_version}"
        )


async def test_input_required_result_elicitation(ctx: Context) -> str | InputRequiredResult:
    """Tests InputRequiredResult with a single elicitation request"""
    _require_input_required(ctx)
    responses = ctx.input_responses or {}
    if "user_name" in responses:
        return f"Hello, {_elicited(responses['user_name'], 'name') or 'stranger'}!"
    return InputRequiredResult(
        input_requests={"user_name": _elicit_request("What is your name?", NAME_SCHEMA)}
    )


async def test_input_required_result_sampling(ctx: Context) -> str | InputRequiredResult:
    """Tests InputRequiredResult with a single sampling request"""
    _require_input_required(ctx)
    responses = ctx.input_responses or {}
    if "capital_question" in responses:
        answer = responses["capital_question"]
        content = answer.content if isinstance(answer, CreateMessageResult) else None
        return f"Model said: {content.text if isinstance(content, TextContent) else '?'}"
    return InputRequiredResult(
        input_requests={"capital_question": _sampling_request("What is the capital of France?", 100)}
    )


async def test_input_required_result_list_roots(ctx: Context) -> str | InputRequiredResult:
    """Tests InputRequiredResult with a single roots/list request"""
    _require_input_required(ctx)
    responses = ctx.input_responses or {}
    if "client_roots" in responses:
        answer = responses["client_roots"]
        count = len(answer.roots) if isinstance(answer, ListRootsResult) else 0
        return f"Client exposed {count} root(s)."
    return InputRequiredResult(input_requests={"client_roots": ListRootsRequest()})


async def test_input_required_result_request_state(ctx: Context) -> str | InputRequiredResult:
    """Tests requestState round-tripping in the InputRequiredResult flow"""
    _require_input_required(ctx)
    responses = ctx.input_responses or {}
    if "confirm" in responses and ctx.request_state == "request-state-nonce":
        return "state-ok: confirmation received"
    return InputRequiredResult(
        input_requests={"confirm": _elicit_request("Please confirm", CONFIRM_SCHEMA)},
        request_state="request-state-nonce",
    )


async def test_input_required_result_multiple_inputs(ctx: Context) -> str | InputRequiredResult:
    """Tests InputRequiredResult carrying elicitation, sampling and roots requests together"""
    _require_input_required(ctx)
    responses = ctx.input_responses or {}
    if {"user_name", "greeting", "client_roots"} <= responses.keys():
        return "All inputs received."
    return InputRequiredResult(
        input_requests={
            "user_name": _elicit_request("What is your name?", NAME_SCHEMA),
            "greeting": _sampling_request("Generate a greeting", 50),
            "client_roots": ListRootsRequest(),
        },
        request_state="multiple-inputs",
    )


async def test_input_required_result_multi_round(ctx: Context) -> str | InputRequiredResult:
    """Tests a three-round InputRequiredResult flow with evolving requestState"""
    _require_input_required(ctx)
    state: dict[str, Any] = json.loads(ctx.request_state) if ctx.request_state else {"round": 0}
    responses = ctx.input_responses or {}
    if state.get("round") == 1 and "step1" in responses:
        return InputRequiredResult(
            input_requests={"step2": _elicit_request("Step 2: What is your favorite color?", COLOR_SCHEMA)},
            request_state=json.dumps({"round": 2, "name": _elicited(responses["step1"], "name")}),
        )
    if state.get("round") == 2 and "step2" in responses:
        return f"{state.get('name')} likes {_elicited(responses['step2'], 'color')}."
    # First round, or a missing/out-of-order answer: (re)start from step one.
    return InputRequiredResult(
        input_requests={"step1": _elicit_request("Step 1: What is your name?", NAME_SCHEMA)},
        request_state=json.dumps({"round": 1}),
    )


async def test_input_required_result_tampered_state(ctx: Context) -> str | InputRequiredResult:
    """Tests that the server rejects a tampered requestState echo"""
    _require_input_required(ctx)
    # Plaintext here on purpose: the SDK seals requestState on the way out and rejects a
    # tampered echo at its request-state boundary before this handler ever runs.
    if ctx.request_state is None:
        return InputRequiredResult(
            input_requests={"confirm": _elicit_request("Please confirm", CONFIRM_SCHEMA)},
            request_state="round-1",
        )
    return f"state-ok: {ctx.request_state}"


async def test_input_required_result_capabilities(ctx: Context) -> InputRequiredResult:
    """Tests that inputRequests only include methods the client declared support for"""
    _require_input_required(ctx)
    caps = ctx.client_capabilities
    requests: dict[str, InputRequest] = {}
    if caps is None or caps.sampling is not None:
        requests["sample"] = _sampling_request("Say hello", 50)
    if caps is None or caps.elicitation is not None:
        requests["ask"] = _elicit_request("What is your name?", NAME_SCHEMA)
    return InputRequiredResult(input_requests=requests, request_state="capability-gated")


async def test_input_required_result_prompt(ctx: Context) -> list[UserMessage] | InputRequiredResult:
    """Tests InputRequiredResult from prompts/get (SEP-2322 non-tool request)"""
    if not _is_modern(ctx):
        raise MCPError(code=INVALID_PARAMS, message="This prompt needs protocol 2026-07-28")
    responses = ctx.input_responses or {}
    if "user_context" in responses:
        text = _elicited(responses["user_context"], "context") or "?"
        return [
            UserMessage(
                role="user", content=TextContent(type="text", text=f"Use the following context: {text}")
            )
        ]
    return InputRequiredResult(
        input_requests={
            "user_context": _elicit_request("What context should the prompt use?", CONTEXT_SCHEMA)
        }
    )


# --------------------------------------------------------------------------------------------
# Content and behaviour fixtures (both eras)
# --------------------------------------------------------------------------------------------


def echo(text: str) -> str:
    """Echo the given text back unchanged."""
    return text


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def test_simple_text() -> str:
    """Tests simple text content response"""
    return "This is a simple text response for testing."


def test_image_content() -> list[ImageContent]:
    """Tests image content response"""
    return [ImageContent(type="image", data=TEST_IMAGE_BASE64, mime_type="image/png")]


def test_audio_content() -> list[AudioContent]:
    """Tests audio content response"""
    return [AudioContent(type="audio", data=TEST_AUDIO_BASE64, mime_type="audio/wav")]


def test_embedded_resource() -> list[EmbeddedResource]:
    """Tests embedded resource content response"""
    resource = TextResourceContents(
        uri="test://embedded-resource", mime_type="text/plain", text="This is an embedded resource content."
    )
    return [EmbeddedResource(type="resource", resource=resource)]


def test_multiple_content_types() -> list[TextContent | ImageContent | EmbeddedResource]:
    """Tests response with multiple content types (text, image, resource)"""
    resource = TextResourceContents(
        uri="test://mixed-content-resource",
        mime_type="application/json",
        text='{"test": "data", "value": 123}',
    )
    return [
        TextContent(type="text", text="Multiple content types test:"),
        ImageContent(type="image", data=TEST_IMAGE_BASE64, mime_type="image/png"),
        EmbeddedResource(type="resource", resource=resource),
    ]


async def test_tool_with_progress(ctx: Context) -> str:
    """Tests tool that reports progress notifications"""
    for step in (0, 50, 100):
        # A no-op when the caller sent no progress token.
        await ctx.report_progress(progress=step, total=100, message=f"Completed step {step} of 100")
        if step < 100:
            await anyio.sleep(0.05)
    meta = ctx.request_context.meta or {}
    return str(meta.get("progress_token", 0))


def test_error_handling() -> str:
    """Tests error response handling"""
    raise ToolError("This tool intentionally returns an error for testing")


async def test_missing_capability(ctx: Context) -> str:
    """Tests that a handler-raised MISSING_REQUIRED_CLIENT_CAPABILITY surfaces as a JSON-RPC error"""
    caps = ctx.client_capabilities
    if caps is None or caps.sampling is None:
        # MCPError escapes the tool wrapper, so this is a protocol error, not an isError result.
        raise MCPError(
            code=MISSING_REQUIRED_CLIENT_CAPABILITY,
            message="This tool requires the client 'sampling' capability",
            data={"requiredCapabilities": {"sampling": {}}},
        )
    return "Client declared sampling capability; proceeding."


def test_x_mcp_header(
    region: Annotated[
        str,
        Field(
            description="Mirrored into the Mcp-Param-Region header",
            json_schema_extra={"x-mcp-header": "Region"},
        ),
    ] = "<none>",
) -> str:
    """Tests SEP-2243 Mcp-Param-* server-side validation"""
    return f"region={region}"


async def test_sampling(
    prompt: str, completion: Annotated[CreateMessageResult, Resolve(sample_prompt)]
) -> str:
    """Tests server-initiated sampling (LLM completion request)"""
    text = completion.content.text if completion.content.type == "text" else "No response"
    return f"LLM response: {text}"


async def test_elicitation(
    message: str, outcome: Annotated[ElicitationResult[UserInfo], Resolve(ask_user_info)]
) -> str:
    """Tests server-initiated elicitation (user input request)"""
    return f"User response: {_describe_elicitation(outcome)}"


async def test_elicitation_sep1034_defaults(
    outcome: Annotated[ElicitationResult[Sep1034Defaults], Resolve(ask_sep1034_defaults)],
) -> str:
    """Tests elicitation with default values for all primitive types (SEP-1034)"""
    return f"Elicitation result: {_describe_elicitation(outcome)}"


async def test_elicitation_sep1330_enums(
    outcome: Annotated[ElicitationResult[Sep1330Enums], Resolve(ask_sep1330_enums)],
) -> str:
    """Tests elicitation with enum schema variations per SEP-1330"""
    return f"Elicitation completed: {_describe_elicitation(outcome)}"


async def test_streaming_elicitation(
    outcome: Annotated[ElicitationResult[Confirmation], Resolve(ask_confirmation)],
) -> str:
    """Tests that an elicitation never rides the response stream as an independent request (SEP-2575)"""
    return f"Elicitation completed: {_describe_elicitation(outcome)}"


async def list_client_roots(roots: Annotated[ListRootsResult, Resolve(fetch_roots)]) -> str:
    """List the client's roots (roots/list on 2025-11-25, an input request on 2026-07-28)."""
    return "\n".join(str(root.uri) for root in roots.roots) or "The client exposes no roots."


async def test_reconnection(ctx: Context) -> str:
    """Tests SSE polling by closing stream mid-call (SEP-1699)"""
    await ctx.log("info", "Before disconnect")
    # The client reconnects with Last-Event-ID; the event store replays what it missed.
    await ctx.close_sse_stream()
    await anyio.sleep(0.2)
    await ctx.log("info", "After reconnect")
    return "Reconnection test completed"


# --------------------------------------------------------------------------------------------
# Tasks extension fixtures (io.modelcontextprotocol/tasks, SEP-2663; 2026-07-28 only)
#
# Plain tools on every other path: without the extension (or on 2025-11-25) they just run
# synchronously, asking their questions through resolvers like any other tool.
# --------------------------------------------------------------------------------------------


class NameAnswer(BaseModel):
    name: str = Field(description="Your name")


class DeleteConfirmation(BaseModel):
    confirm: bool = Field(description="Really delete the file?")


def ask_name() -> Elicit[NameAnswer]:
    return Elicit("What is your name?", NameAnswer)


def ask_delete_confirmation(filename: str) -> Elicit[DeleteConfirmation]:
    return Elicit(f"Delete {filename}?", DeleteConfirmation)


def greet(name: str) -> str:
    """Greet someone (never runs as a task)."""
    return f"Hello, {name}!"


async def slow_compute(seconds: float = 1.0, label: str = "") -> str:
    """Sleep for `seconds` (capped at 300) and report back; runs as a task when the client allows."""
    seconds = min(max(seconds, 0.0), 300.0)
    await anyio.sleep(seconds)
    return f"{label or 'slow_compute'}: done after {seconds:g}s"


async def failing_job() -> str:
    """Always ends in a tool execution error; must run as a task."""
    await anyio.sleep(0.5)
    raise ToolError("failing_job always fails")


async def protocol_error_job() -> str:
    """Always ends in a protocol-level error; runs as a task when the client allows."""
    raise MCPError(code=INTERNAL_ERROR, message="protocol_error_job always fails at the protocol level")


async def confirm_delete(
    filename: str, answer: Annotated[ElicitationResult[DeleteConfirmation], Resolve(ask_delete_confirmation)]
) -> str:
    """Pretend to delete a file after asking for confirmation; the question parks the task."""
    if answer.action == "accept" and answer.data.confirm:
        return f"Deleted {filename} (simulated)."
    return f"Kept {filename}."


async def multi_input(
    name: Annotated[NameAnswer, Resolve(ask_name)], go: Annotated[Confirmation, Resolve(ask_confirmation)]
) -> str:
    """Ask two questions at once (two pending input requests on the parked task)."""
    return f"{name.name} said {'yes' if go.confirm else 'no'}."


async def test_tool_with_task(name: Annotated[NameAnswer, Resolve(ask_name)]) -> str:
    """Gathers input over MRTR on tools/call, then finishes as a task (SEP-2663 + SEP-2322)"""
    return f"Hello, {name.name}! (finished as a task)"


TASK_POLICIES: dict[str, TaskToolPolicy] = {
    "slow_compute": TaskToolPolicy(),
    "failing_job": TaskToolPolicy(support="required"),
    "protocol_error_job": TaskToolPolicy(),
    "confirm_delete": TaskToolPolicy(),
    "multi_input": TaskToolPolicy(),
    "test_tool_with_task": TaskToolPolicy(support="required", inline_input=True),
}


# JSON Schema 2020-12 keywords tools/list must pass through untouched (SEP-1613 / SEP-2106).
JSON_SCHEMA_2020_12_INPUT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "$defs": {
        "address": {
            "$anchor": "addressDef",
            "type": "object",
            "properties": {"street": {"type": "string"}, "city": {"type": "string"}},
        }
    },
    "properties": {
        "name": {"type": "string"},
        "address": {"$ref": "#/$defs/address"},
        "contactMethod": {"type": "string", "enum": ["phone", "email"]},
        "phone": {"type": "string"},
        "email": {"type": "string"},
    },
    "allOf": [{"anyOf": [{"required": ["phone"]}, {"required": ["email"]}]}],
    "if": {"properties": {"contactMethod": {"const": "phone"}}, "required": ["contactMethod"]},
    "then": {"required": ["phone"]},
    "else": {"required": ["email"]},
    "additionalProperties": False,
}


def json_schema_2020_12_tool(
    name: str | None = None,
    address: dict[str, Any] | None = None,
    contactMethod: str | None = None,
    phone: str | None = None,
    email: str | None = None,
) -> str:
    """Tests JSON Schema 2020-12 keyword preservation in tools/list"""
    contact = phone if contactMethod == "phone" else email
    return f"json_schema_2020_12_tool: name={name}, contact={contact}"


def _json_schema_2020_12_tool() -> Tool:
    tool = Tool.from_function(json_schema_2020_12_tool)
    # MCPServer derives the schema from the signature, which cannot express $defs/if/then/else;
    # publish the hand-written one instead (arguments are still validated by the signature).
    tool.parameters = JSON_SCHEMA_2020_12_INPUT_SCHEMA
    return tool


def _dynamic_tool() -> str:
    """A tool registered and removed again by test_trigger_tool_change."""
    return "dynamic"


def _dynamic_prompt() -> str:
    """A prompt registered and removed again by test_trigger_prompt_change."""
    return "dynamic"


# --------------------------------------------------------------------------------------------
# Registration
# --------------------------------------------------------------------------------------------

_READ_ONLY = ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False)

_STATELESS_TOOLS: Sequence[Any] = (
    test_simple_text,
    test_image_content,
    test_audio_content,
    test_embedded_resource,
    test_multiple_content_types,
    test_tool_with_progress,
    test_error_handling,
    test_missing_capability,
    test_x_mcp_header,
    test_sampling,
    test_elicitation,
    test_elicitation_sep1034_defaults,
    test_elicitation_sep1330_enums,
    test_streaming_elicitation,
    test_reconnection,
    test_input_required_result_elicitation,
    test_input_required_result_sampling,
    test_input_required_result_list_roots,
    test_input_required_result_request_state,
    test_input_required_result_multiple_inputs,
    test_input_required_result_multi_round,
    test_input_required_result_tampered_state,
    test_input_required_result_capabilities,
    list_client_roots,
    greet,
    slow_compute,
    failing_job,
    protocol_error_job,
    confirm_delete,
    multi_input,
    test_tool_with_task,
)


def _add_stateful_tools(server: MCPServer, state: ReferenceState) -> None:
    async def log_three_times(ctx: Context) -> str:
        """Tests tool that emits log messages during execution"""
        await _log(ctx, state, "info", "Tool execution started")
        await anyio.sleep(0.05)
        await _log(ctx, state, "info", "Tool processing data")
        await anyio.sleep(0.05)
        await _log(ctx, state, "info", "Tool execution completed")
        return "Tool with logging executed successfully"

    # Two names, one body: 2025-11-25 scenarios call the first, 2026-07-28 ones the second.
    server.add_tool(log_three_times, name="test_tool_with_logging")
    server.add_tool(log_three_times, name="test_logging_tool")

    @server.tool()
    async def test_trigger_tool_change(ctx: Context) -> str:
        """Mutates the tool list and announces it (tools list_changed)"""
        server.add_tool(_dynamic_tool, name="test_dynamic_tool")
        server.remove_tool("test_dynamic_tool")
        if _is_modern(ctx):
            await ctx.notify_tools_changed()
        else:
            await ctx.session.send_tool_list_changed()
        return "tool list changed"

    @server.tool()
    async def test_trigger_prompt_change(ctx: Context) -> str:
        """Mutates the prompt list and announces it (prompts list_changed)"""
        server.add_prompt(
            Prompt.from_function(_dynamic_prompt, name="test_dynamic_prompt", description="dynamic")
        )
        server.remove_prompt("test_dynamic_prompt")
        if _is_modern(ctx):
            await ctx.notify_prompts_changed()
        else:
            await ctx.session.send_prompt_list_changed()
        return "prompt list changed"

    @server.tool()
    async def update_watched_resource(content: str, ctx: Context) -> str:
        """Replace the content of test://watched-resource and notify its subscribers."""
        state.watched_content = content
        if _is_modern(ctx):
            await ctx.notify_resource_updated(WATCHED_RESOURCE_URI)
        elif WATCHED_RESOURCE_URI in state.subscribed_uris:
            await ctx.session.send_resource_updated(WATCHED_RESOURCE_URI)
        return f"{WATCHED_RESOURCE_URI} updated"


def _add_resources(server: MCPServer, state: ReferenceState) -> None:
    @server.resource("test://static-text", mime_type="text/plain")
    def static_text_resource() -> str:
        """A static text resource for testing"""
        return "This is the content of the static text resource."

    @server.resource("test://static-binary", mime_type="image/png")
    def static_binary_resource() -> bytes:
        """A static binary resource (image) for testing"""
        return base64.b64decode(TEST_IMAGE_BASE64)

    @server.resource(TEMPLATE_URI, mime_type="application/json")
    def template_resource(id: str) -> str:
        """A resource template with parameter substitution"""
        return json.dumps({"id": id, "templateTest": True, "data": f"Data for ID: {id}"})

    @server.resource(WATCHED_RESOURCE_URI, mime_type="text/plain")
    def watched_resource() -> str:
        """A resource that can be subscribed to for updates"""
        return state.watched_content


def _add_prompts(server: MCPServer) -> None:
    @server.prompt()
    def test_simple_prompt() -> list[UserMessage]:
        """A simple prompt without arguments"""
        return [
            UserMessage(
                role="user", content=TextContent(type="text", text="This is a simple prompt for testing.")
            )
        ]

    @server.prompt()
    def test_prompt_with_arguments(arg1: str, arg2: str) -> list[UserMessage]:
        """A prompt with required arguments"""
        text = f"Prompt with arguments: arg1='{arg1}', arg2='{arg2}'"
        return [UserMessage(role="user", content=TextContent(type="text", text=text))]

    @server.prompt()
    def test_prompt_with_embedded_resource(resourceUri: str) -> list[UserMessage]:
        """A prompt that includes an embedded resource"""
        resource = TextResourceContents(
            uri=resourceUri, mime_type="text/plain", text="Embedded resource content for testing."
        )
        return [
            UserMessage(role="user", content=EmbeddedResource(type="resource", resource=resource)),
            UserMessage(
                role="user",
                content=TextContent(type="text", text="Please process the embedded resource above."),
            ),
        ]

    @server.prompt()
    def test_prompt_with_image() -> list[UserMessage]:
        """A prompt that includes image content"""
        return [
            UserMessage(
                role="user", content=ImageContent(type="image", data=TEST_IMAGE_BASE64, mime_type="image/png")
            ),
            UserMessage(
                role="user", content=TextContent(type="text", text="Please analyze the image above.")
            ),
        ]

    server.prompt()(test_input_required_result_prompt)


_PROMPT_ARGUMENT_SUGGESTIONS = ("paris", "park", "party", "test", "testing", "tested")
_TEMPLATE_ID_SUGGESTIONS = ("1", "2", "42", "123", "456")


def _add_completions(server: MCPServer) -> None:
    @server.completion()  # type: ignore[no-untyped-call, untyped-decorator]
    async def complete(
        ref: PromptReference | ResourceTemplateReference,
        argument: CompletionArgument,
        context: CompletionContext | None,
    ) -> Completion:
        if isinstance(ref, PromptReference) and ref.name == "test_prompt_with_arguments":
            pool: Sequence[str] = _PROMPT_ARGUMENT_SUGGESTIONS
        elif isinstance(ref, ResourceTemplateReference) and ref.uri == TEMPLATE_URI and argument.name == "id":
            pool = _TEMPLATE_ID_SUGGESTIONS
        else:
            pool = ()
        values = [value for value in pool if value.startswith(argument.value)]
        return Completion(values=values, total=len(values), has_more=False)


def _add_legacy_surface(server: MCPServer, state: ReferenceState) -> None:
    """Serve the 2025-11-25 methods MCPServer has no public API for.

    `logging/setLevel` and `resources/subscribe`/`unsubscribe` only exist on the handshake era
    (the SDK answers them with 404/-32601 at 2026-07-28), so they are registered on the
    lowlevel server, the way the SDK's own conformance server does it.
    """
    lowlevel = server._lowlevel_server

    async def set_level(ctx: ServerRequestContext[Any], params: SetLevelRequestParams) -> EmptyResult:
        state.min_log_level = params.level
        return EmptyResult()

    async def subscribe(ctx: ServerRequestContext[Any], params: SubscribeRequestParams) -> EmptyResult:
        state.subscribed_uris.add(str(params.uri))
        return EmptyResult()

    async def unsubscribe(ctx: ServerRequestContext[Any], params: UnsubscribeRequestParams) -> EmptyResult:
        state.subscribed_uris.discard(str(params.uri))
        return EmptyResult()

    lowlevel.add_request_handler("logging/setLevel", SetLevelRequestParams, set_level)
    lowlevel.add_request_handler("resources/subscribe", SubscribeRequestParams, subscribe)
    lowlevel.add_request_handler("resources/unsubscribe", UnsubscribeRequestParams, unsubscribe)

    # Handshake-era capabilities come from `create_initialization_options()`, which every
    # transport calls with default (all-false) NotificationOptions; the test_trigger_* tools do
    # send list_changed on that era, so advertise it. (2026-07-28 derives listChanged itself
    # from `subscriptions/listen` being served.)
    build_options = lowlevel.create_initialization_options
    legacy_notifications = NotificationOptions(prompts_changed=True, tools_changed=True)

    def create_initialization_options(
        notification_options: NotificationOptions | None = None,
        experimental_capabilities: dict[str, dict[str, Any]] | None = None,
        extensions: dict[str, dict[str, Any]] | None = None,
    ) -> InitializationOptions:
        return build_options(
            notification_options or legacy_notifications, experimental_capabilities, extensions
        )

    lowlevel.create_initialization_options = create_initialization_options  # type: ignore[method-assign]


def create_server() -> MCPServer:
    """Build a fresh reference server (each call gets its own state and task store)."""
    state = ReferenceState()
    tasks = TasksExtension(TASK_POLICIES)

    @asynccontextmanager
    async def lifespan(_: MCPServer) -> AsyncIterator[dict[str, Any]]:
        # Tasks outlive the request that created them, so they run in the server's lifespan.
        async with tasks.running():
            yield {}

    server: MCPServer = MCPServer(
        SERVER_NAME,
        version=SERVER_VERSION,
        title="MCP Audit Gateway reference server",
        instructions=(
            "Reference MCP server for mcp-audit-gateway: conformance fixtures (test_* and the tasks "
            "fixtures) plus demo tools echo, add, list_client_roots and update_watched_resource."
        ),
        tools=[_json_schema_2020_12_tool()],
        extensions=[tasks],
        lifespan=lifespan,
        # The template list never changes at runtime, unlike the tool and prompt lists the
        # test_trigger_* tools mutate (those keep the SDK default: ttl 0, private).
        cache_hints={"resources/templates/list": CacheHint(ttl_ms=60_000, scope="public")},
    )
    tasks.attach(server)
    server.add_tool(echo, annotations=_READ_ONLY)
    server.add_tool(add, annotations=_READ_ONLY)
    for fn in _STATELESS_TOOLS:
        server.add_tool(fn)
    _add_stateful_tools(server, state)
    _add_resources(server, state)
    _add_prompts(server)
    _add_completions(server)
    _add_legacy_surface(server, state)
    return server


# --------------------------------------------------------------------------------------------
# Transports and CLI
# --------------------------------------------------------------------------------------------


def _transport_security(host: str) -> TransportSecuritySettings:
    # DNS-rebinding protection stays on whatever the bind address; a non-loopback bind only
    # adds that one host to the allow-list.
    hosts = ["127.0.0.1:*", "localhost:*", "[::1]:*"]
    origins = ["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"]
    if host not in LOOPBACK_HOSTS:
        authority = f"[{host}]" if ":" in host else host
        hosts.append(f"{authority}:*")
        origins.append(f"http://{authority}:*")
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True, allowed_hosts=hosts, allowed_origins=origins
    )


def build_http_app(
    server: MCPServer | None = None,
    *,
    host: str = DEFAULT_HOST,
    path: str = DEFAULT_PATH,
    json_response: bool = False,
    max_stored_events: int = 1024,
) -> Starlette:
    """The Streamable HTTP ASGI app; serves both protocol eras on `path`.

    Run it under any ASGI server; its lifespan must run (it owns the session manager).
    `max_stored_events=0` disables SSE resumability.
    """
    server = server if server is not None else create_server()
    return server.streamable_http_app(
        streamable_http_path=path,
        json_response=json_response,
        event_store=BoundedEventStore(max_stored_events) if max_stored_events > 0 else None,
        # Short reconnect hint so SSE polling (test_reconnection) resumes quickly.
        retry_interval=100,
        transport_security=_transport_security(host),
        host=host,
    )


async def _serve_http(app: Starlette, host: str, port: int, log_level: str) -> None:
    import uvicorn

    # Access logs only when debugging: under benchmark load they cost more than the requests.
    config = uvicorn.Config(
        app, host=host, port=port, log_level=log_level.lower(), lifespan="on", access_log=log_level == "DEBUG"
    )
    await uvicorn.Server(config).serve()


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m examples.reference_server",
        description="Reference MCP server (both protocol eras) for mcp-audit-gateway.",
    )
    parser.add_argument("--transport", choices=("stdio", "http"), default="stdio")
    parser.add_argument("--host", default=DEFAULT_HOST, help="HTTP bind address (default: %(default)s)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="HTTP port (default: %(default)s)")
    parser.add_argument("--path", default=DEFAULT_PATH, help="HTTP endpoint path (default: %(default)s)")
    parser.add_argument(
        "--json-response", action="store_true", help="answer POSTs with JSON bodies instead of SSE streams"
    )
    parser.add_argument(
        "--max-stored-events",
        type=int,
        default=1024,
        help="SSE events kept for Last-Event-ID replay; 0 disables resumability (default: %(default)s)",
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
    )
    args = parser.parse_args(argv)
    if not args.path.startswith("/"):
        parser.error("--path must start with '/'")
    if args.max_stored_events < 0:
        parser.error("--max-stored-events must be >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    transport: Literal["stdio", "http"] = args.transport
    # Serving the 2025-11-25 era means calling the logging/sampling APIs that 2026-07-28
    # deprecates (SEP-2577) on purpose; the warning would only repeat that on stderr.
    warnings.filterwarnings("ignore", category=MCPDeprecationWarning)
    # Before create_server(): MCPServer configures logging itself unless the root logger is set.
    # stderr keeps stdout clean for the stdio transport.
    logging.basicConfig(
        level=args.log_level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    server = create_server()
    try:
        if transport == "stdio":
            anyio.run(server.run_stdio_async)
        else:
            app = build_http_app(
                server,
                host=args.host,
                path=args.path,
                json_response=args.json_response,
                max_stored_events=args.max_stored_events,
            )
            if args.host not in LOOPBACK_HOSTS:
                logger.warning("Binding %s: the server is reachable beyond this machine", args.host)
            logger.info("Serving both protocol eras on http://%s:%d%s", args.host, args.port, args.path)
            anyio.run(_serve_http, app, args.host, args.port, args.log_level)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
