"""Schema evolution: data written with an older event schema (tests/schemas/v1/) is read by the
current one, new fields taking their defaults; and what an old reader does with new data."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from fastavro import parse_schema, schemaless_writer

from schemas import catalog
from schemas.codec import EventCodec, MalformedMessageError, RecordCodec, UnknownSchemaError, WireFormat
from schemas.events import AuditMode, Direction, EventType, Kind, Outcome
from tests.schemas.example_values import gateway_events

V1 = catalog.load_file(Path(__file__).with_name("v1") / "mcpgw.events.GatewayEvent.avsc")

V1_RECORD: dict[str, Any] = {
    "event_type": "agent_message_received", "kind": "request", "direction": "agent_to_gateway", "outcome": "timeout",
    "event_id": "01a1fdfa-4602-7000-8000-000000000002", "ts": 1_795_262_400_002_500, "stream_id": "s1", "seq": 4,
    "prev_hash": "00" * 32, "hash": "11" * 32, "gateway_instance": "gw-0", "protocol_era": "legacy",
    "protocol_version": "2025-06-18", "transport": "sse", "session_id": "sess", "correlation_id": "", "tenant": "acme",
    "principal": "agent-7", "client_addr": "10.0.0.9", "server": "time", "jsonrpc_id": "3", "method": "tools/call",
    "tool": "time__now", "error_code": -32001, "error_message": "timed out", "latency_us": 30_000_000,
    "payload": b'{"jsonrpc":"2.0"}', "payload_sha256": "ab" * 32, "payload_size": 17, "redactions": 0,
    "trace_id": "t", "detail": "",
}  # fmt: skip
NEW_FIELDS = {"on_behalf_of", "resource_uri", "prompt_name", "payload_truncated", "span_id", "audit_mode",
              "schema_version"}


def v1_body(record: dict[str, Any]) -> bytes:
    out = io.BytesIO()
    schemaless_writer(out, parse_schema(catalog.without_logical_types(V1)), record)
    return out.getvalue()


def v1_single_object(record: dict[str, Any]) -> bytes:
    return b"\xc3\x01" + catalog.fingerprint(V1) + v1_body(record)


def test_the_fixture_is_older_and_smaller() -> None:
    current = {f["name"] for f in catalog.schema(catalog.GATEWAY_EVENT)["fields"]}
    old = {f["name"] for f in V1["fields"]}
    assert old < current
    assert current - old == NEW_FIELDS
    assert catalog.fingerprint(V1) != catalog.fingerprint(catalog.schema(catalog.GATEWAY_EVENT))


def test_v1_data_is_read_with_new_fields_at_their_defaults() -> None:
    event = EventCodec(writer_schemas=[V1]).decode(v1_single_object(V1_RECORD))
    assert event.event_type is EventType.AGENT_MESSAGE_RECEIVED
    assert (event.kind, event.direction, event.outcome) == (Kind.REQUEST, Direction.AGENT_TO_GATEWAY, Outcome.TIMEOUT)
    assert event.ts_us == V1_RECORD["ts"]
    assert (event.error_code, event.latency_us, event.payload) == (-32001, 30_000_000, b'{"jsonrpc":"2.0"}')
    assert (event.on_behalf_of, event.resource_uri, event.prompt_name, event.span_id) == ("", "", "", "")
    assert event.payload_truncated is False
    assert event.audit_mode is AuditMode.STRICT
    assert event.schema_version == 1


def test_v1_data_needs_its_schema_known() -> None:
    with pytest.raises(UnknownSchemaError):
        EventCodec().decode(v1_single_object(V1_RECORD))


def test_v1_data_through_a_registry() -> None:
    registry = {1: V1, 2: catalog.schema(catalog.GATEWAY_EVENT)}
    codec = EventCodec(wire=WireFormat.CONFLUENT, registry=registry)
    old = codec.decode(b"\x00\x00\x00\x00\x01" + v1_body(V1_RECORD))
    assert old.principal == "agent-7" and old.audit_mode is AuditMode.STRICT
    assert codec.encode(old)[:5] == b"\x00\x00\x00\x00\x02"  # written with the newest schema


def test_an_old_reader_that_knows_the_new_writer_schema_drops_new_fields() -> None:
    old_reader = RecordCodec(V1, writer_schemas=[catalog.schema(catalog.GATEWAY_EVENT)])
    record = old_reader.decode(EventCodec().encode(gateway_events()[1]))
    assert set(record) == {f["name"] for f in V1["fields"]}


def test_a_symbol_the_old_reader_lacks_is_a_malformed_message() -> None:
    old_reader = RecordCodec(V1, writer_schemas=[catalog.schema(catalog.GATEWAY_EVENT)])
    cancelled = gateway_events()[1]
    cancelled.outcome = Outcome.CANCELLED
    with pytest.raises(MalformedMessageError):
        old_reader.decode(EventCodec().encode(cancelled))
