"""ingress/recorder.py: audit events built per message and written in one sink call per hop."""

from __future__ import annotations

import asyncio
import hashlib

import orjson
import pytest

from ingress.recorder import Recorder, kind_of, system_context
from ingress.sink import MemoryEventSink, SinkUnavailable
from ingress.upstreams.base import CallContext
from schemas.events import AuditMode, Direction, EventType, GatewayEvent, Kind, Outcome


class CountingSink(MemoryEventSink):
    """A memory sink remembering each record() call's batch."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[list[GatewayEvent]] = []

    async def record(self, *events: GatewayEvent) -> None:
        self.calls.append(list(events))
        await super().record(*events)


class Handler:
    async def notification(self, server: str, body: dict) -> None:
        pass

    async def request(self, server: str, body: dict) -> dict:
        return {}


def wire(body: dict) -> bytes:
    return orjson.dumps(body)


def ctx(**fields: object) -> CallContext:
    base: dict = {"correlation_id": "corr-1", "principal": "alice", "tenant": "acme", "session_id": "sess-1",
                  "client_addr": "127.0.0.1:5555", "era": "legacy", "protocol_version": "2025-06-18",
                  "transport": "streamable_http"}
    return CallContext(**{**base, **fields})  # type: ignore[arg-type]


REQUEST = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "fs__read"}}
RESULT = {"jsonrpc": "2.0", "id": 7, "result": {"content": []}}
ERROR = {"jsonrpc": "2.0", "id": 7, "error": {"code": -32601, "message": "no such tool"}}


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        (REQUEST, Kind.REQUEST),
        ({"jsonrpc": "2.0", "method": "notifications/progress"}, Kind.NOTIFICATION),
        (RESULT, Kind.RESPONSE),
        (ERROR, Kind.ERROR),
        ({}, Kind.ERROR),
    ],
)
def test_kind_of(body: dict, kind: Kind) -> None:
    assert kind_of(body) is kind


async def test_agent_received_is_deferred_until_agent_sent() -> None:
    sink = CountingSink()
    rec = Recorder(sink, instance_id="gw-1")
    c = ctx()
    rec.agent_received(c, REQUEST, wire(REQUEST))
    assert sink.calls == [] and sink.events == []
    assert len(c.deferred) == 1
    await rec.agent_sent(c, RESULT, wire(RESULT))
    assert len(sink.calls) == 1, "received + sent must be one durable write"
    received, sent = sink.calls[0]
    assert (received.event_type, sent.event_type) == (EventType.AGENT_MESSAGE_RECEIVED, EventType.AGENT_MESSAGE_SENT)
    assert c.deferred == []
    assert [e.seq for e in sink.events] == [1, 2]
    assert received.event_id < sent.event_id


async def test_agent_received_deferred_until_upstream_sent() -> None:
    sink = CountingSink()
    rec = Recorder(sink, instance_id="gw-1")
    c = ctx()
    rec.agent_received(c, REQUEST, wire(REQUEST))
    upstream_body = {**REQUEST, "params": {"name": "read"}}
    await rec.sent("fs", upstream_body, wire(upstream_body), c)
    assert len(sink.calls) == 1
    assert [e.event_type for e in sink.calls[0]] == [EventType.AGENT_MESSAGE_RECEIVED,
                                                     EventType.UPSTREAM_MESSAGE_SENT]
    assert sink.calls[0][1].server == "fs"
    assert sink.calls[0][1].direction is Direction.GATEWAY_TO_UPSTREAM


async def test_one_record_call_per_flush_over_a_whole_call() -> None:
    sink = CountingSink()
    rec = Recorder(sink, instance_id="gw-1")
    c = ctx(handler=Handler())
    rec.agent_received(c, REQUEST, wire(REQUEST))
    await rec.sent("fs", REQUEST, wire(REQUEST), c)
    await rec.received("fs", RESULT, wire(RESULT), c, latency_us=50)  # held: a handler is attached
    assert len(sink.calls) == 1
    await rec.agent_sent(c, RESULT, wire(RESULT))
    assert [len(batch) for batch in sink.calls] == [2, 2]
    assert [e.event_type for e in sink.events] == [
        EventType.AGENT_MESSAGE_RECEIVED, EventType.UPSTREAM_MESSAGE_SENT,
        EventType.UPSTREAM_MESSAGE_RECEIVED, EventType.AGENT_MESSAGE_SENT,
    ]
    assert {e.correlation_id for e in sink.events} == {"corr-1"}


async def test_flush_with_nothing_held_writes_nothing() -> None:
    sink = CountingSink()
    rec = Recorder(sink)
    await rec.flush(ctx())
    assert sink.calls == []


async def test_received_without_handler_is_recorded_at_once() -> None:
    sink = CountingSink()
    rec = Recorder(sink)
    c = ctx()
    await rec.received("fs", RESULT, wire(RESULT), c, latency_us=12)
    assert len(sink.calls) == 1
    (event,) = sink.calls[0]
    assert event.event_type is EventType.UPSTREAM_MESSAGE_RECEIVED
    assert event.direction is Direction.UPSTREAM_TO_GATEWAY
    assert event.latency_us == 12
    assert event.outcome is Outcome.OK
    assert c.deferred == []


@pytest.mark.parametrize(("body", "outcome"), [(ERROR, Outcome.UPSTREAM_ERROR), ({}, Outcome.UPSTREAM_ERROR),
                                               (RESULT, Outcome.OK)])
async def test_received_outcome(body: dict, outcome: Outcome) -> None:
    sink = MemoryEventSink()
    await Recorder(sink).received("fs", body, wire(body), ctx(), latency_us=None)
    assert sink.events[0].outcome is outcome


@pytest.mark.parametrize(
    ("event_type", "body", "kind", "direction", "outcome", "code"),
    [
        (EventType.AGENT_MESSAGE_RECEIVED, REQUEST, Kind.REQUEST, Direction.AGENT_TO_GATEWAY, Outcome.OK, None),
        (EventType.AGENT_MESSAGE_SENT, RESULT, Kind.RESPONSE, Direction.GATEWAY_TO_AGENT, Outcome.OK, None),
        (EventType.AGENT_MESSAGE_SENT, ERROR, Kind.ERROR, Direction.GATEWAY_TO_AGENT, Outcome.ERROR, -32601),
        (EventType.UPSTREAM_MESSAGE_SENT, {"jsonrpc": "2.0", "method": "notifications/cancelled"},
         Kind.NOTIFICATION, Direction.GATEWAY_TO_UPSTREAM, Outcome.OK, None),
        (EventType.UPSTREAM_MESSAGE_RECEIVED, ERROR, Kind.ERROR, Direction.UPSTREAM_TO_GATEWAY, Outcome.ERROR,
         -32601),
        (EventType.MESSAGE_REFUSED, REQUEST, Kind.REQUEST, Direction.AGENT_TO_GATEWAY, Outcome.OK, None),
        (EventType.SESSION_OPENED, {}, Kind.ERROR, Direction.INTERNAL, Outcome.OK, None),
    ],
)
def test_event_fields(event_type: EventType, body: dict, kind: Kind, direction: Direction, outcome: Outcome,
                      code: int | None) -> None:
    rec = Recorder(MemoryEventSink(), instance_id="gw-1")
    raw = wire(body)
    event = rec.event(event_type, body, raw, ctx())
    assert event.event_type is event_type
    assert event.kind is kind
    assert event.direction is direction
    assert event.outcome is outcome
    assert event.error_code == code
    assert event.payload == raw
    assert event.payload_sha256 == hashlib.sha256(raw).hexdigest()
    assert event.payload_size == len(raw)
    assert event.gateway_instance == "gw-1"
    assert (event.principal, event.tenant, event.session_id, event.client_addr) == (
        "alice", "acme", "sess-1", "127.0.0.1:5555")
    assert (event.protocol_era, event.protocol_version, event.transport) == ("legacy", "2025-06-18",
                                                                             "streamable_http")
    assert event.correlation_id == "corr-1"
    assert event.ts_us > 0
    assert len(event.event_id) == 36


def test_event_ids_method_and_error_message() -> None:
    rec = Recorder(MemoryEventSink())
    c = ctx(method="tools/call")
    event = rec.event(EventType.AGENT_MESSAGE_SENT, ERROR, wire(ERROR), c)
    assert event.jsonrpc_id == "7"
    assert event.method == "tools/call"  # a response takes its call's method
    assert event.error_message == "no such tool"
    string_id = rec.event(EventType.AGENT_MESSAGE_RECEIVED, {"id": "abc", "method": "ping"}, b"", c)
    assert (string_id.jsonrpc_id, string_id.method) == ("abc", "ping")
    notification = rec.event(EventType.AGENT_MESSAGE_RECEIVED, {"method": "notifications/x"}, b"", c)
    assert notification.jsonrpc_id == ""
    long_message = {"id": 1, "error": {"code": 1, "message": "x" * 5000}}
    assert len(rec.event(EventType.AGENT_MESSAGE_SENT, long_message, b"", c).error_message) == 1000


def test_explicit_outcome_wins() -> None:
    rec = Recorder(MemoryEventSink())
    event = rec.event(EventType.AGENT_MESSAGE_SENT, ERROR, wire(ERROR), ctx(), outcome=Outcome.TIMEOUT)
    assert event.outcome is Outcome.TIMEOUT


async def test_fill_copies_routing_fields_into_held_events() -> None:
    sink = MemoryEventSink()
    rec = Recorder(sink)
    c = ctx(session_id="", protocol_version="")
    rec.agent_received(c, {"jsonrpc": "2.0", "id": 1, "result": {}}, b"{}")  # no method of its own
    held = c.deferred[0]
    assert (held.server, held.tool, held.method, held.session_id) == ("", "", "", "")
    # routing happens after receipt
    c.server, c.tool, c.resource_uri, c.prompt_name = "fs", "read", "file:///a", "greet"
    c.method, c.session_id, c.protocol_version = "tools/call", "sess-9", "2025-11-25"
    await rec.agent_sent(c, RESULT, wire(RESULT))
    received = sink.of_type(EventType.AGENT_MESSAGE_RECEIVED)[0]
    assert (received.server, received.tool, received.resource_uri, received.prompt_name) == (
        "fs", "read", "file:///a", "greet")
    assert (received.method, received.session_id, received.protocol_version) == (
        "tools/call", "sess-9", "2025-11-25")


async def test_fill_does_not_overwrite_known_fields() -> None:
    sink = MemoryEventSink()
    rec = Recorder(sink)
    c = ctx(server="first")
    rec.agent_received(c, REQUEST, wire(REQUEST))
    c.server = "second"
    c.method = "other/method"
    await rec.agent_sent(c, RESULT, wire(RESULT))
    received = sink.of_type(EventType.AGENT_MESSAGE_RECEIVED)[0]
    assert received.server == "first"
    assert received.method == "tools/call"


async def test_agent_sent_latency_only_when_final() -> None:
    sink = MemoryEventSink()
    rec = Recorder(sink)
    c = ctx()
    await rec.agent_sent(c, {"jsonrpc": "2.0", "method": "notifications/progress"}, b"{}", final=False)
    await rec.agent_sent(c, RESULT, wire(RESULT))
    progress, final = sink.events
    assert progress.latency_us is None
    assert final.latency_us is not None and final.latency_us >= 0


async def test_refused_records_code_message_and_held_events() -> None:
    sink = CountingSink()
    rec = Recorder(sink)
    c = ctx()
    rec.agent_received(c, REQUEST, wire(REQUEST))
    await rec.refused(c, REQUEST, wire(REQUEST), -32012, "blocked by policy", Outcome.BLOCKED)
    assert len(sink.calls) == 1
    _received, refused = sink.calls[0]
    assert refused.event_type is EventType.MESSAGE_REFUSED
    assert refused.kind is Kind.REQUEST
    assert refused.outcome is Outcome.BLOCKED
    assert refused.error_code == -32012
    assert refused.error_message == "blocked by policy"
    assert refused.detail == "blocked by policy"


async def test_lifecycle_event() -> None:
    sink = CountingSink()
    rec = Recorder(sink)
    c = ctx()
    rec.agent_received(c, REQUEST, wire(REQUEST))
    await rec.lifecycle(EventType.SESSION_OPENED, c, detail="opened", server="fs", payload=b"xyz")
    (event,) = sink.calls[0]  # lifecycle facts do not take the call's held events along
    assert event.kind is Kind.LIFECYCLE
    assert event.direction is Direction.INTERNAL
    assert event.server == "fs"
    assert event.detail == "opened"
    assert event.payload_sha256 == hashlib.sha256(b"xyz").hexdigest()
    assert len(c.deferred) == 1


async def test_strict_mode_propagates_sink_failure() -> None:
    sink = MemoryEventSink()
    await sink.close()
    rec = Recorder(sink)
    c = ctx()
    rec.agent_received(c, REQUEST, wire(REQUEST))
    with pytest.raises(SinkUnavailable):
        await rec.agent_sent(c, RESULT, wire(RESULT))


async def test_async_mode_still_records_and_marks_events() -> None:
    sink = CountingSink()
    rec = Recorder(sink, mode="async")
    c = ctx()
    rec.agent_received(c, REQUEST, wire(REQUEST))
    await rec.agent_sent(c, RESULT, wire(RESULT))
    await rec.drain()
    assert len(sink.calls) == 1
    assert [e.event_type for e in sink.events] == [EventType.AGENT_MESSAGE_RECEIVED, EventType.AGENT_MESSAGE_SENT]
    assert all(e.audit_mode is AuditMode.ASYNC for e in sink.events)
    assert rec._pending == set()


async def test_async_mode_does_not_wait_for_the_sink() -> None:
    gate = asyncio.Event()

    class SlowSink(MemoryEventSink):
        async def record(self, *events: GatewayEvent) -> None:
            await gate.wait()
            await super().record(*events)

    sink = SlowSink()
    rec = Recorder(sink, mode="async")
    c = ctx()
    await asyncio.wait_for(rec.agent_sent(c, RESULT, wire(RESULT)), 1)
    assert sink.events == []
    gate.set()
    await asyncio.wait_for(rec.drain(), 1)
    assert len(sink.events) == 1


async def test_async_mode_write_failure_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    sink = MemoryEventSink()
    await sink.close()
    rec = Recorder(sink, mode="async")
    await rec.agent_sent(ctx(), RESULT, wire(RESULT))
    await rec.drain()
    assert "async audit write failed" in caplog.text


def test_strict_detail_is_unchanged() -> None:
    rec = Recorder(MemoryEventSink())
    assert rec.event(EventType.AGENT_MESSAGE_SENT, RESULT, b"", ctx(), detail="x").detail == "x"
    assert rec.event(EventType.AGENT_MESSAGE_SENT, RESULT, b"", ctx()).detail == ""


def test_default_instance_id_and_system_context() -> None:
    rec = Recorder(MemoryEventSink())
    assert ":" in rec.instance_id
    assert Recorder(MemoryEventSink()).instance_id != rec.instance_id
    sc = system_context(server="fs")
    assert (sc.principal, sc.transport, sc.server) == ("gateway", "internal", "fs")
    assert len(sc.correlation_id) == 36
    assert system_context(principal="x").principal == "x"


async def test_forwarded_identical_bytes_reuse_the_held_payload() -> None:
    # The upstream copy of a request is often the agent's bytes unchanged: same columns, one scan.
    sink = CountingSink()
    rec = Recorder(sink)
    c = ctx()
    raw = wire(REQUEST)
    rec.agent_received(c, REQUEST, raw)
    await rec.sent("fs", REQUEST, wire(REQUEST), c)
    received, sent = sink.calls[0]
    assert sent.payload == received.payload == raw
    assert sent.payload_sha256 == received.payload_sha256 == hashlib.sha256(raw).hexdigest()
    assert (sent.payload_size, sent.redactions, sent.payload_truncated) == (len(raw), 0, False)


async def test_redacted_held_payload_is_not_reused() -> None:
    # A held payload that was redacted is not the wire bytes: the copy is scanned on its own.
    sink = CountingSink()
    rec = Recorder(sink)
    c = ctx()
    body = {**REQUEST, "params": {"name": "fs__read", "arguments": {"password": "hunter22"}}}
    rec.agent_received(c, body, wire(body))
    await rec.sent("fs", body, wire(body), c)
    received, sent = sink.calls[0]
    assert received.redactions == sent.redactions == 1
    assert b"hunter22" not in sent.payload
    assert sent.payload == received.payload
