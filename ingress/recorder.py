"""Turning messages into audit events and handing them to the sink at the right moment.

The rule (audit-first): an event is durable before the action it records takes effect. So a
message *received* is held on its call until the call's next outgoing message, and both are
recorded in one `sink.record()` before that message leaves: one durable write per hop, not two.
Refusals and lifecycle facts are recorded at once. In `async` mode the write is started but not
awaited, and every event says so.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
import time
import uuid
from collections.abc import Awaitable, Generator
from typing import Any

from ingress.sink import EventSink
from ingress.upstreams.base import CallContext, JsonObject
from schemas.events import AuditMode, Direction, EventType, GatewayEvent, Kind, Outcome, new_event_id
from schemas.payload import DEFAULT_POLICY, PayloadPolicy, payload_columns

log = logging.getLogger("mcpgw.audit")

_TYPE_DIRECTION = {
    EventType.AGENT_MESSAGE_RECEIVED: Direction.AGENT_TO_GATEWAY,
    EventType.AGENT_MESSAGE_SENT: Direction.GATEWAY_TO_AGENT,
    EventType.UPSTREAM_MESSAGE_SENT: Direction.GATEWAY_TO_UPSTREAM,
    EventType.UPSTREAM_MESSAGE_RECEIVED: Direction.UPSTREAM_TO_GATEWAY,
    EventType.MESSAGE_REFUSED: Direction.AGENT_TO_GATEWAY,
}


# `event` builds events positionally (half the cost of 36 keywords, four times per call); this is
# the order it assumes, checked at import so a field inserted in the middle fails loudly.
_FIELD_ORDER = (
    "event_type", "kind", "direction", "outcome", "event_id", "ts_us", "stream_id", "seq", "prev_hash", "hash",
    "gateway_instance", "protocol_era", "protocol_version", "transport", "session_id", "correlation_id", "tenant",
    "principal", "on_behalf_of", "client_addr", "server", "jsonrpc_id", "method", "tool", "resource_uri",
    "prompt_name", "error_code", "error_message", "latency_us", "payload", "payload_sha256", "payload_size",
    "redactions", "payload_truncated", "trace_id", "span_id", "detail", "audit_mode",
)  # fmt: skip
if tuple(f.name for f in dataclasses.fields(GatewayEvent))[: len(_FIELD_ORDER)] != _FIELD_ORDER:
    raise ImportError("GatewayEvent's fields moved: update Recorder.event's positional construction")


def kind_of(body: JsonObject) -> Kind:
    if "method" in body:
        return Kind.REQUEST if "id" in body else Kind.NOTIFICATION
    if "error" in body:
        return Kind.ERROR
    return Kind.RESPONSE if body else Kind.ERROR


def _error_of(body: JsonObject) -> tuple[int | None, str]:
    error = body.get("error")
    if isinstance(error, dict):
        code = error.get("code")
        return (code if isinstance(code, int) else None), str(error.get("message", ""))[:1000]
    return None, ""


def _held_payload(held: list[GatewayEvent], wire: bytes) -> tuple[bytes, str, int, int, bool] | None:
    """The payload columns of a held event whose message was these very bytes, unredacted and whole.

    A forwarded message is often byte-identical to the one received (a modern `tools/call` whose
    agent already sent the full `_meta` envelope): the redaction scan and the hash are a pure
    function of the bytes and this recorder's policy (only the recorder fills `ctx.deferred`), so
    their result is reused instead of computed twice. Only a payload stored exactly as it crossed
    the wire qualifies: then stored == wire, and its hash and size are those of `wire` too.
    """
    for event in held:
        if event.redactions == 0 and not event.payload_truncated and event.payload == wire:
            return event.payload, event.payload_sha256, event.payload_size, 0, False
    return None


class _Done:
    """An awaitable that is already complete, awaitable any number of times."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, Any, None]:
        yield from ()


_DONE = _Done()


class Recorder:
    def __init__(self, sink: EventSink, instance_id: str | None = None, mode: str = "strict",
                 payload_policy: PayloadPolicy = DEFAULT_POLICY) -> None:
        self.sink = sink
        self.instance_id = instance_id or f"{socket.gethostname()}:{uuid.uuid4().hex[:8]}"
        self.mode = mode
        self.audit_mode = AuditMode.STRICT if mode == "strict" else AuditMode.ASYNC
        self.payload_policy = payload_policy
        self._pending: set[asyncio.Task[None]] = set()

    def event(
        self,
        event_type: EventType,
        body: JsonObject,
        wire: bytes,
        ctx: CallContext,
        *,
        server: str = "",
        outcome: Outcome | None = None,
        latency_us: int | None = None,
        detail: str = "",
    ) -> GatewayEvent:
        if "method" in body:
            kind = Kind.REQUEST if "id" in body else Kind.NOTIFICATION
            code, message = None, ""
            method = body["method"]
            method = method if type(method) is str and method else str(method or ctx.method)
        elif "error" in body:  # kind_of's answers, without its call
            kind = Kind.ERROR
            code, message = _error_of(body)
            method = ctx.method
        else:
            kind = Kind.RESPONSE if body else Kind.ERROR
            code, message = None, ""
            method = ctx.method
        raw_id = body.get("id")
        held = ctx.deferred
        payload = _held_payload(held, wire) if held else None
        stored, sha256, size, redactions, truncated = payload or payload_columns(wire, self.payload_policy)
        now_ns = time.time_ns()  # one clock read for the id and the timestamp
        return GatewayEvent(
            event_type, kind, _TYPE_DIRECTION.get(event_type, Direction.INTERNAL),
            outcome or (Outcome.OK if code is None else Outcome.ERROR),
            new_event_id(now_ns), now_ns // 1000,
            "", 0, "", "",  # chain fields: the sink numbers the event
            self.instance_id, ctx.era, ctx.protocol_version, ctx.transport, ctx.session_id, ctx.correlation_id,
            ctx.tenant, ctx.principal, "", ctx.client_addr, server or ctx.server,
            "" if raw_id is None else raw_id if type(raw_id) is str else str(raw_id),
            method, ctx.tool, ctx.resource_uri, ctx.prompt_name, code, message, latency_us,
            stored, sha256, size, redactions, truncated,
            ctx.trace_id, ctx.span_id, detail, self.audit_mode,
        )  # fmt: skip

    def _fill(self, event: GatewayEvent, ctx: CallContext) -> None:
        # Events held since before routing learn where the call went.
        if not event.server:
            event.server = ctx.server
        if not event.tool:
            event.tool = ctx.tool
        if not event.resource_uri:
            event.resource_uri = ctx.resource_uri
        if not event.prompt_name:
            event.prompt_name = ctx.prompt_name
        if not event.method:
            event.method = ctx.method
        if not event.session_id:
            event.session_id = ctx.session_id
        if not event.protocol_version:
            event.protocol_version = ctx.protocol_version

    # The writing methods are plain functions returning the sink's awaitable (or one already
    # done), not coroutines: every call goes through them twice, and each coroutine layer between
    # the caller's await and the sink costs a frame, a send and a StopIteration.
    def _write(self, events: list[GatewayEvent]) -> Awaitable[None]:
        if self.mode == "strict":
            # Not shielded: a sink takes the events synchronously before it awaits durability, so a
            # cancelled caller stops waiting but cannot un-record them.
            return self.sink.record(*events)
        task = asyncio.ensure_future(self.sink.record(*events))
        self._pending.add(task)
        task.add_done_callback(self._written)
        return _DONE

    def _written(self, task: asyncio.Task[None]) -> None:
        self._pending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("async audit write failed", exc_info=task.exception())

    def flush(self, ctx: CallContext, *more: GatewayEvent) -> Awaitable[None]:
        """Record the call's held events (and `more`) now."""
        if not ctx.deferred and not more:
            return _DONE
        events: list[GatewayEvent] = ctx.deferred
        ctx.deferred = []
        for event in events:
            self._fill(event, ctx)
        events.extend(more)
        return self._write(events)

    # -- agent side ---------------------------------------------------------------------------

    def agent_received(self, ctx: CallContext, body: JsonObject, wire: bytes) -> None:
        ctx.deferred.append(self.event(EventType.AGENT_MESSAGE_RECEIVED, body, wire, ctx))

    def agent_sent(
        self, ctx: CallContext, body: JsonObject, wire: bytes, outcome: Outcome | None = None, final: bool = True,
        detail: str = "",
    ) -> Awaitable[None]:
        latency = (time.perf_counter_ns() - ctx.started_ns) // 1000 if final else None
        return self.flush(ctx, self.event(EventType.AGENT_MESSAGE_SENT, body, wire, ctx, outcome=outcome,
                                         latency_us=latency, detail=detail))

    async def refused(
        self, ctx: CallContext, body: JsonObject, wire: bytes, code: int, message: str, outcome: Outcome
    ) -> None:
        event = self.event(EventType.MESSAGE_REFUSED, body, wire, ctx, outcome=outcome, detail=message)
        event.error_code = code
        event.error_message = message[:1000]
        if body.get("method"):
            event.kind = kind_of(body)
        await self.flush(ctx, event)

    async def lifecycle(self, event_type: EventType, ctx: CallContext, detail: str = "", server: str = "",
                        outcome: Outcome = Outcome.OK, payload: bytes = b"") -> None:
        event = self.event(event_type, {}, payload, ctx, server=server, outcome=outcome, detail=detail)
        event.kind = Kind.LIFECYCLE
        event.direction = Direction.INTERNAL
        await self._write([event])

    # -- upstream side (UpstreamTap) ----------------------------------------------------------------

    def sent(self, server: str, body: JsonObject, wire: bytes, ctx: CallContext) -> Awaitable[None]:
        return self.flush(ctx, self.event(EventType.UPSTREAM_MESSAGE_SENT, body, wire, ctx, server=server))

    def received(
        self, server: str, body: JsonObject, wire: bytes, ctx: CallContext, latency_us: int | None
    ) -> Awaitable[None]:
        outcome = Outcome.UPSTREAM_ERROR if "error" in body or not body else None
        event = self.event(EventType.UPSTREAM_MESSAGE_RECEIVED, body, wire, ctx, server=server,
                           outcome=outcome, latency_us=latency_us)
        if ctx.handler is None:
            return self._write([event])  # nothing further happens on this call: record it now
        ctx.deferred.append(event)
        return _DONE

    async def drain(self) -> None:
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)


def system_context(**fields: Any) -> CallContext:
    """The context of the gateway's own traffic (handshakes, catalog fetches, probes)."""
    defaults: dict[str, Any] = {"principal": "gateway", "transport": "internal"}
    return CallContext(correlation_id=new_event_id(), **{**defaults, **fields})
