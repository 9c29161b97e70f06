"""The `io.modelcontextprotocol/tasks` extension (SEP-2663) on top of `MCPServer`.

The SDK ships the extension *mechanism* (`Extension`, `MethodBinding`, the `tools/call`
interceptor, pass-through of extension `resultType`s) but no tasks implementation, so the
reference server brings its own, kept deliberately small:

* task creation is server-directed and opt-in per tool (`TaskToolPolicy`), and only happens
  when the request declares the extension in its (per-request) client capabilities;
* a task runs the tool in rounds: a round that returns an `InputRequiredResult` parks the
  task in `input_required` with that result's `inputRequests`; `tasks/update` collects the
  answers and, once every pending request is answered, runs the next round with them (and
  the round's `requestState`, which never leaves the server);
* tool errors complete the task with `result.isError`; protocol errors and crashes fail it;
* state is in memory, bounded by a TTL and a task cap.

Only the 2026-07-28 era has the extension; on older protocol versions task tools run
synchronously and `tasks/*` answer -32601.
"""

import logging
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import anyio
import anyio.abc
from mcp.server import ServerRequestContext
from mcp.server.context import CallNext, HandlerResult
from mcp.server.mcpserver import Context, Extension, MCPServer, MethodBinding, require_client_extension
from mcp.server.mcpserver.exceptions import ToolError, UnexpectedToolError
from mcp.shared.exceptions import MCPError
from mcp.shared.inbound import MCP_NAME_HEADER, decode_header_value
from mcp_types import (
    HEADER_MISMATCH,
    INTERNAL_ERROR,
    INVALID_PARAMS,
    CallToolRequestParams,
    CallToolResult,
    CreateMessageResult,
    CreateMessageResultWithTools,
    ElicitResult,
    ErrorData,
    InputRequiredResult,
    InputResponse,
    ListRootsResult,
    RequestParams,
    TextContent,
)
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import BaseModel, Field, ValidationError

__all__ = ["TASKS_EXTENSION_ID", "TaskToolPolicy", "TasksExtension"]

TASKS_EXTENSION_ID = "io.modelcontextprotocol/tasks"

TaskStatus = Literal["working", "input_required", "completed", "failed", "cancelled"]
_TERMINAL: frozenset[TaskStatus] = frozenset({"completed", "failed", "cancelled"})

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskToolPolicy:
    """How one tool takes part in the tasks extension.

    `support="required"` refuses callers that did not declare the extension (-32021);
    `"optional"` runs the tool synchronously for them. `inline_input=True` answers the
    tool's input-gathering rounds on `tools/call` itself (plain MRTR) and only turns the
    first round that does not ask for input into a task.
    """

    support: Literal["optional", "required"] = "optional"
    inline_input: bool = False


class TaskIdParams(RequestParams):
    task_id: str = Field(alias="taskId")


class UpdateTaskParams(TaskIdParams):
    # Raw values: each is validated against the request it answers, and unknown keys are ignored.
    input_responses: dict[str, Any] = Field(default_factory=dict, alias="inputResponses")


def _now() -> datetime:
    return datetime.now(UTC)


def _timestamp(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _dump(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(by_alias=True, mode="json", exclude_none=True)


@dataclass(eq=False)
class _Task:
    task_id: str
    tool: str
    arguments: dict[str, Any]
    ttl_ms: int
    created_at: datetime = field(default_factory=_now)
    updated_at: datetime = field(default_factory=_now)
    status: TaskStatus = "working"
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    # Outstanding input requests (wire form) and the answers collected for them so far.
    pending: dict[str, dict[str, Any]] = field(default_factory=dict)
    answers: dict[str, InputResponse] = field(default_factory=dict)
    # The parked round's requestState; internal, SEP-2663 has no requestState on the task wire.
    request_state: str | None = None
    scope: anyio.CancelScope | None = None
    first_round: InputRequiredResult | None = None
    first_round_done: anyio.Event = field(default_factory=anyio.Event)

    def touch(self, status: TaskStatus) -> None:
        self.status = status
        self.updated_at = _now()

    def expired(self, now: datetime) -> bool:
        # A running round always finishes; anything else (finished, or parked on a client that
        # may never answer) lives for ttlMs after its last change.
        return self.status != "working" and (now - self.updated_at).total_seconds() * 1000 > self.ttl_ms

    def envelope(self, poll_interval_ms: int) -> dict[str, Any]:
        return {
            "taskId": self.task_id,
            "status": self.status,
            "createdAt": _timestamp(self.created_at),
            "lastUpdatedAt": _timestamp(self.updated_at),
            "ttlMs": self.ttl_ms,
            "pollIntervalMs": poll_interval_ms,
        }

    def detailed(self, poll_interval_ms: int) -> dict[str, Any]:
        body: dict[str, Any] = {"resultType": "complete", **self.envelope(poll_interval_ms)}
        if self.status == "completed" and self.result is not None:
            body["result"] = self.result
        elif self.status == "failed" and self.error is not None:
            body["error"] = self.error
        elif self.status == "input_required":
            body["inputRequests"] = dict(self.pending)
        return body


def _declares_extension(ctx: ServerRequestContext[Any, Any]) -> bool:
    capabilities = ctx.session.client_capabilities
    return bool(capabilities and capabilities.extensions and TASKS_EXTENSION_ID in capabilities.extensions)


def _check_routing_header(ctx: ServerRequestContext[Any, Any], task_id: str) -> None:
    # SEP-2663 extends SEP-2243's Mcp-Name rule to tasks/*; the SDK only knows the core
    # name-bearing methods, so the extension checks its own.
    headers = getattr(ctx.request, "headers", None)
    if headers is not None and decode_header_value(headers.get(MCP_NAME_HEADER)) != task_id:
        raise MCPError(code=HEADER_MISMATCH, message=f"{MCP_NAME_HEADER} header does not match params.taskId")


class TasksExtension(Extension):
    """SEP-2663 tasks for the tools named in `policies`.

    Call `attach(server)` once the server exists, and run the server inside `running()` (the
    reference server does it from its lifespan): tasks outlive the request that created them,
    so they need a task group of their own. Without one, task tools simply run synchronously.
    """

    identifier = TASKS_EXTENSION_ID

    def __init__(
        self,
        policies: Mapping[str, TaskToolPolicy],
        *,
        ttl_ms: int = 5 * 60_000,
        poll_interval_ms: int = 250,
        max_tasks: int = 1000,
        inline_grace_seconds: float = 2.0,
    ) -> None:
        self._policies = dict(policies)
        self._ttl_ms = ttl_ms
        self._poll_interval_ms = poll_interval_ms
        self._max_tasks = max_tasks
        self._inline_grace_seconds = inline_grace_seconds
        self._tasks: OrderedDict[str, _Task] = OrderedDict()
        self._server: MCPServer | None = None
        self._task_group: anyio.abc.TaskGroup | None = None

    def attach(self, server: MCPServer) -> None:
        self._server = server

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        async with anyio.create_task_group() as task_group:
            self._task_group = task_group
            try:
                yield
            finally:
                self._task_group = None
                task_group.cancel_scope.cancel()
                self._tasks.clear()

    def methods(self) -> Sequence[MethodBinding]:
        modern = frozenset(MODERN_PROTOCOL_VERSIONS)
        return (
            MethodBinding("tasks/get", TaskIdParams, self._handle_get, modern),
            MethodBinding("tasks/update", UpdateTaskParams, self._handle_update, modern),
            MethodBinding("tasks/cancel", TaskIdParams, self._handle_cancel, modern),
        )

    # ---- tools/call ---------------------------------------------------------------------

    async def intercept_tool_call(
        self, params: CallToolRequestParams, ctx: ServerRequestContext[Any, Any], call_next: CallNext
    ) -> HandlerResult:
        policy = self._policies.get(params.name)
        if policy is None or ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS:
            return await call_next(ctx)
        if not _declares_extension(ctx):
            if policy.support == "required":
                require_client_extension(ctx, TASKS_EXTENSION_ID)
            return await call_next(ctx)
        task_group = self._task_group
        if task_group is None or self._server is None:
            return await call_next(ctx)

        self._evict()
        if len(self._tasks) >= self._max_tasks:
            raise MCPError(code=INTERNAL_ERROR, message="Too many tasks in flight; try again later")
        task = _Task(
            task_id=uuid.uuid4().hex,
            tool=params.name,
            arguments=dict(params.arguments or {}),
            ttl_ms=self._ttl_ms,
        )
        task_group.start_soon(self._run_round, task, ctx, params)
        if policy.inline_input:
            with anyio.move_on_after(self._inline_grace_seconds):
                await task.first_round_done.wait()
            if task.first_round is not None:
                # Still gathering input: plain MRTR on this tools/call, no task minted yet.
                return task.first_round
        # Registered before answering, so a tasks/get right after this response resolves.
        self._tasks[task.task_id] = task
        return {"resultType": "task", **task.envelope(self._poll_interval_ms)}

    async def _run_round(
        self, task: _Task, ctx: ServerRequestContext[Any, Any], params: CallToolRequestParams
    ) -> None:
        try:
            await self._settle_round(task, ctx, params)
        except Exception:
            # This runs in the server-wide task group: an escaping error would take the server down.
            logger.exception("Task %s: round failed", task.task_id)
            task.error = _dump(ErrorData(code=INTERNAL_ERROR, message="Task execution failed"))
            task.touch("failed")
        finally:
            task.first_round_done.set()

    async def _settle_round(
        self, task: _Task, ctx: ServerRequestContext[Any, Any], params: CallToolRequestParams
    ) -> None:
        server = self._server
        assert server is not None
        context: Context = Context(request_context=ctx, mcp_server=server, input_params=params)
        outcome: CallToolResult | InputRequiredResult | ErrorData
        with anyio.CancelScope() as scope:
            task.scope = scope
            try:
                outcome = await server.call_tool(task.tool, task.arguments, context)
            except MCPError as exc:
                outcome = exc.error
            except Exception as exc:
                if isinstance(exc, ToolError) and not isinstance(exc, UnexpectedToolError):
                    # The tool ran and reported a failure: that completes the task, with isError.
                    outcome = CallToolResult(content=[TextContent(type="text", text=str(exc))], is_error=True)
                else:
                    logger.exception("Task %s: tool %r crashed", task.task_id, task.tool)
                    outcome = ErrorData(code=INTERNAL_ERROR, message=f"Tool {task.tool!r} crashed")
        task.scope = None
        if scope.cancelled_caught or task.status == "cancelled":
            return

        if isinstance(outcome, InputRequiredResult):
            if not task.first_round_done.is_set():
                task.first_round = outcome
            task.pending = {key: _dump(request) for key, request in (outcome.input_requests or {}).items()}
            task.answers = {}
            task.request_state = outcome.request_state
            task.touch("input_required")
        elif isinstance(outcome, ErrorData):
            task.error = _dump(outcome)
            task.touch("failed")
        else:
            task.result = _dump(outcome)
            task.touch("completed")

    # ---- tasks/* --------------------------------------------------------------------------

    def _lookup(self, ctx: ServerRequestContext[Any, Any], task_id: str) -> _Task:
        require_client_extension(ctx, TASKS_EXTENSION_ID)
        _check_routing_header(ctx, task_id)
        self._evict()
        task = self._tasks.get(task_id)
        if task is None:
            raise MCPError(code=INVALID_PARAMS, message=f"Unknown taskId: {task_id}")
        return task

    async def _handle_get(self, ctx: ServerRequestContext[Any, Any], params: TaskIdParams) -> HandlerResult:
        return self._lookup(ctx, params.task_id).detailed(self._poll_interval_ms)

    async def _handle_cancel(
        self, ctx: ServerRequestContext[Any, Any], params: TaskIdParams
    ) -> HandlerResult:
        task = self._lookup(ctx, params.task_id)
        # Idempotent: cancelling a finished task acknowledges and changes nothing.
        if task.status not in _TERMINAL:
            task.touch("cancelled")
            task.pending.clear()
            if task.scope is not None:
                task.scope.cancel()
        return {}

    async def _handle_update(
        self, ctx: ServerRequestContext[Any, Any], params: UpdateTaskParams
    ) -> HandlerResult:
        task = self._lookup(ctx, params.task_id)
        if task.status != "input_required":
            return {}
        for key, raw in params.input_responses.items():
            request = task.pending.get(key)
            if request is None:
                continue
            task.answers[key] = _validate_response(key, request, raw)
            del task.pending[key]
        task.updated_at = _now()
        task_group = self._task_group
        if not task.pending and task_group is not None:
            round_params = CallToolRequestParams(
                name=task.tool,
                arguments=task.arguments,
                input_responses=dict(task.answers),
                request_state=task.request_state,
            )
            task.touch("working")
            task_group.start_soon(self._run_round, task, ctx, round_params)
        return {}

    def _evict(self) -> None:
        now = _now()
        for task_id in [task_id for task_id, task in self._tasks.items() if task.expired(now)]:
            del self._tasks[task_id]
        # Over the cap, the oldest finished tasks go first; running ones are never dropped.
        excess = len(self._tasks) - self._max_tasks
        if excess > 0:
            finished = [task_id for task_id, task in self._tasks.items() if task.status in _TERMINAL]
            for task_id in finished[:excess]:
                del self._tasks[task_id]


def _validate_response(key: str, request: Mapping[str, Any], raw: Any) -> InputResponse:
    method = request.get("method")
    try:
        if method == "elicitation/create":
            return ElicitResult.model_validate(raw, by_name=False)
        if method == "roots/list":
            return ListRootsResult.model_validate(raw, by_name=False)
        if method == "sampling/createMessage":
            try:
                return CreateMessageResult.model_validate(raw, by_name=False)
            except ValidationError:
                return CreateMessageResultWithTools.model_validate(raw, by_name=False)
    except ValidationError as exc:
        raise MCPError(
            code=INVALID_PARAMS, message=f"inputResponses[{key!r}] does not answer {method}"
        ) from exc
    raise MCPError(code=INVALID_PARAMS, message=f"inputResponses[{key!r}] answers an unsupported {method}")
