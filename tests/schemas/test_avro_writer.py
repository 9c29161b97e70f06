"""schemas/avro_writer.py: the generated writer writes what fastavro writes, and refuses what it refuses."""

from __future__ import annotations

import hashlib
import random
from dataclasses import replace
from io import BytesIO
from typing import Any

import pytest
from fastavro import parse_schema, schemaless_writer

from schemas import avro_writer, catalog
from schemas.avro_writer import RecordWriter, UnsupportedSchema
from schemas.codec import (
    EVENT_RENAMES,
    CodecError,
    DecisionCodec,
    EventCodec,
    RecordFields,
    canonical_event_bytes,
    event_hash,
)
from schemas.events import AuditMode, Direction, EventType, GatewayEvent, Kind, Outcome
from tests.schemas.example_values import decisions, gateway_events

FIELDS = RecordFields(GatewayEvent, EVENT_RENAMES)
SCHEMA = catalog.without_logical_types(catalog.schema(catalog.GATEWAY_EVENT))
PARSED = parse_schema(catalog.without_logical_types(catalog.schema(catalog.GATEWAY_EVENT)))


def fastavro_body(event: GatewayEvent, **override: Any) -> bytes:
    record = FIELDS.to_record(event)
    record.update(override)
    out = BytesIO()
    schemaless_writer(out, PARSED, record)
    return out.getvalue()


def text(rng: random.Random) -> str:
    kind = rng.randrange(5)
    if kind == 0:
        return ""
    if kind == 1:
        return "".join(rng.choice("abcdef0123456789") for _ in range(rng.randrange(1, 70)))
    if kind == 2:
        return "ü€😀" * rng.randrange(1, 30)  # multi-byte UTF-8: the length prefix counts bytes
    if kind == 3:
        return "x" * rng.choice((63, 64, 127, 128, 4095, 4096, 4097, 70_000))  # varint length boundaries
    return rng.choice(("modern", "legacy", "tools/call", "127.0.0.1:5555"))


def number(rng: random.Random) -> int:
    return rng.choice((0, 1, 63, 64, -1, -64, -65, 2047, 2048, 4095, 4096, 1 << 31, -(1 << 31),
                       (1 << 63) - 1, -(1 << 63), rng.randrange(-(1 << 62), 1 << 62),
                       rng.randrange(1 << 53)))


def random_event(rng: random.Random) -> GatewayEvent:
    return GatewayEvent(
        event_type=rng.choice(list(EventType)), kind=rng.choice(list(Kind)), direction=rng.choice(list(Direction)),
        outcome=rng.choice(list(Outcome)), event_id=text(rng), ts_us=number(rng), stream_id=text(rng),
        seq=number(rng), prev_hash=text(rng), hash=text(rng), gateway_instance=text(rng), protocol_era=text(rng),
        protocol_version=text(rng), transport=text(rng), session_id=text(rng), correlation_id=text(rng),
        tenant=text(rng), principal=text(rng), on_behalf_of=text(rng), client_addr=text(rng), server=text(rng),
        jsonrpc_id=text(rng), method=text(rng), tool=text(rng), resource_uri=text(rng), prompt_name=text(rng),
        error_code=rng.choice((None, number(rng))), error_message=text(rng),
        latency_us=rng.choice((None, number(rng))), payload=rng.randbytes(rng.choice((0, 1, 63, 64, 5000))),
        payload_sha256=text(rng), payload_size=number(rng), redactions=number(rng),
        payload_truncated=rng.random() < 0.5, trace_id=text(rng), span_id=text(rng), detail=text(rng),
        audit_mode=rng.choice(list(AuditMode)), schema_version=1,
    )  # fmt: skip


def test_events_are_written_byte_for_byte_as_fastavro_writes_them() -> None:
    writer = RecordWriter(SCHEMA)
    rng = random.Random(20261121)
    events = [*gateway_events(), *(random_event(rng) for _ in range(300))]
    for event in events:
        assert writer.write(FIELDS.values(event)) == fastavro_body(event)


def test_longs_at_every_varint_length_are_written_as_fastavro_writes_them() -> None:
    schema = {"type": "record", "name": "L", "fields": [{"name": "n", "type": "long"}]}
    parsed = parse_schema(schema)
    writer = RecordWriter(schema)
    rng = random.Random(5)
    edges = [(1 << k) + d for k in range(0, 64) for d in (-1, 0, 1)]
    numbers = [*edges, *(-n for n in edges), *(rng.getrandbits(rng.randrange(1, 64)) for _ in range(2000))]
    for n in numbers:
        if not -(1 << 63) <= n < 1 << 63:
            continue
        out = BytesIO()
        schemaless_writer(out, parsed, {"n": n})
        assert writer.write((n,)) == out.getvalue(), n


def test_longs_sharing_cached_high_groups_write_what_fastavro_writes() -> None:
    """Timestamps and counters reuse the cached varint of their high bits, also past the cache's bound."""
    schema = {"type": "record", "name": "L", "fields": [{"name": "n", "type": "long"}]}
    parsed = parse_schema(schema)
    writer = RecordWriter(schema)
    ts = 1_795_297_054_722_622
    numbers = [*range(ts - 20_000, ts + 20_000, 7), *range(4090, 1 << 22, 997),
               *(ts + k * 8192 for k in range(avro_writer._TAILS_MAX * 2)), ts, ts + 1]
    for n in numbers:
        out = BytesIO()
        schemaless_writer(out, parsed, {"n": n})
        assert writer.write((n,)) == out.getvalue(), n
    assert 0 < len(avro_writer._TAILS) <= avro_writer._TAILS_MAX


def test_longs_written_again_once_their_high_groups_are_known_are_written_as_fastavro_writes_them() -> None:
    """The generated code writes a long whose high groups `_long` has seen inline; values it must
    refuse or whose tail is not known still go through `_long`, also when a neighbour's tail is known."""
    schema = {"type": "record", "name": "L", "fields": [{"name": "n", "type": ["null", "long"]}]}
    parsed = parse_schema(schema)
    writer = RecordWriter(schema)
    ts = 1_795_297_054_722_622
    edges = [(1 << k) + d for k in range(11, 63) for d in (-1, 0, 1)]
    numbers = [*edges, *range(8180, 8200), *range(ts - 50, ts + 50), None]
    for n in [*numbers, *numbers, *(-n for n in edges)]:  # the second round finds the tails known
        out = BytesIO()
        schemaless_writer(out, parsed, {"n": n})
        assert writer.write((n,)) == out.getvalue(), n
    for refused in (1 << 63, 1 << 64, -(1 << 63) - 1, (ts << 14) + 1, 1.5, "7"):
        with pytest.raises((TypeError, ValueError, OverflowError)):
            writer.write((refused,))


def test_payload_bytes_of_any_buffer_type_are_written_as_fastavro_writes_them() -> None:
    event = gateway_events()[1]
    writer = RecordWriter(SCHEMA)
    for size in (0, 1, 127, 128, 4095, 4096, 5000):
        data = bytes(range(256)) * (size // 256) + bytes(size % 256)
        for value in (data, bytearray(data), memoryview(data)):
            assert writer.write(FIELDS.values(replace(event, payload=value))) == fastavro_body(  # type: ignore[arg-type]
                replace(event, payload=data))


def test_enum_members_given_as_keys_write_the_same_bytes_and_plain_symbols_still_work() -> None:
    writer = RecordWriter(SCHEMA, enum_keys=FIELDS.enum_members)
    assert set(FIELDS.enum_members) == {"event_type", "kind", "direction", "outcome", "audit_mode"}
    rng = random.Random(13)
    for event in [*gateway_events(), *(random_event(rng) for _ in range(200))]:
        assert writer.write(FIELDS.values(event)) == fastavro_body(event)
        plain = replace(event, kind=str(event.kind.value), outcome=str(event.outcome.value))  # type: ignore[arg-type]
        assert writer.write(FIELDS.values(plain)) == fastavro_body(event)
    with pytest.raises(KeyError):
        writer.write(FIELDS.values(replace(gateway_events()[0], outcome="unheard-of")))  # type: ignore[arg-type]


def test_strings_of_repeated_fields_come_from_the_cache_byte_for_byte() -> None:
    strings = [f["name"] for f in SCHEMA["fields"] if f["type"] == "string"]
    writer = RecordWriter(SCHEMA, repeated=strings)
    rng = random.Random(11)
    events = [*gateway_events(), *(random_event(rng) for _ in range(300))]
    for event in [*events, *events]:  # the second round hits the cache
        assert writer.write(FIELDS.values(event)) == fastavro_body(event)


def test_the_string_cache_is_bounded_and_refuses_what_is_not_a_string() -> None:
    writer = RecordWriter(SCHEMA, repeated=["tenant"])
    cache = writer.write.__globals__["_sc"]
    event = gateway_events()[1]
    for i in range(avro_writer._CACHED_STRINGS + 10):
        assert writer.write(FIELDS.values(replace(event, tenant=f"t{i}"))) == fastavro_body(event, tenant=f"t{i}")
    assert 0 < len(cache) <= avro_writer._CACHED_STRINGS
    for refused in (None, b"acme", 7, ["acme"], "\ud800"):
        with pytest.raises((TypeError, ValueError, AttributeError)):
            writer.write(FIELDS.values(replace(event, tenant=refused)))  # type: ignore[arg-type]


def test_the_split_leaves_out_exactly_one_field() -> None:
    writer = RecordWriter(SCHEMA, split_at="hash", attributes=FIELDS.names)
    assert writer.write_split is not None and writer.split_object is not None
    rng = random.Random(7)
    for event in [*gateway_events(), *(random_event(rng) for _ in range(100))]:
        before, after = writer.write_split(FIELDS.values(event))
        assert before + b"\x00" + after == fastavro_body(event, hash="")
        assert writer.split_object(event) == (before, after)


def test_attributes_must_be_one_identifier_per_field() -> None:
    for attributes in (FIELDS.names[:-1], (*FIELDS.names[:-1], "x; import os"), (*FIELDS.names[:-1], "class")):
        with pytest.raises(ValueError):
            RecordWriter(SCHEMA, split_at="hash", attributes=attributes)


def test_seal_sets_the_chain_hash_and_returns_the_wire_bytes_of_the_sealed_event() -> None:
    codec = EventCodec()
    rng = random.Random(3)
    for event in [*gateway_events(), *(random_event(rng) for _ in range(100))]:
        event = replace(event, hash="stale")
        wire = codec.seal(event)
        assert event.hash == hashlib.sha256(fastavro_body(event, hash="")).hexdigest()
        assert event.hash == event_hash(event)
        assert wire == codec.records.header + fastavro_body(event)
        assert codec.decode(wire) == event
        assert canonical_event_bytes(event) == fastavro_body(event, hash="")


def test_seal_of_an_older_schema_revision_hashes_that_revision() -> None:
    event = gateway_events()[2]
    versions = catalog.versions(catalog.GATEWAY_EVENT)
    if len(versions) < 2:
        pytest.skip("one schema revision so far")
    old = replace(event, schema_version=min(versions))
    EventCodec().seal(old)
    assert old.hash == hashlib.sha256(canonical_event_bytes(old)).hexdigest()


@pytest.mark.parametrize(
    "change",
    [{"tenant": None}, {"seq": 1 << 64}, {"seq": -(1 << 63) - 1}, {"seq": "7"}, {"payload": "text"},
     {"latency_us": "soon"}, {"outcome": "unheard-of"}, {"detail": "\ud800"}],
    ids=["none-string", "long-overflow", "long-underflow", "string-for-long", "str-for-bytes",
         "string-in-union", "unknown-enum-symbol", "lone-surrogate"],
)  # fmt: skip
def test_values_the_schema_refuses_raise_codec_errors(change: dict[str, Any]) -> None:
    event = replace(gateway_events()[1], **change)
    with pytest.raises(Exception):  # noqa: B017 - fastavro's own kind of error, whichever it is
        fastavro_body(event)
    codec = EventCodec()
    with pytest.raises(CodecError):
        codec.encode(event)
    with pytest.raises(CodecError):
        codec.seal(event)


def test_enum_symbols_as_plain_strings_are_written_like_members() -> None:
    event = gateway_events()[0]
    plain = replace(event, kind=str(event.kind.value), outcome=str(event.outcome.value))  # type: ignore[arg-type]
    assert RecordWriter(SCHEMA).write(FIELDS.values(plain)) == fastavro_body(event)


def test_records_with_types_it_does_not_write_go_through_fastavro() -> None:
    assert EventCodec()._writer is not None
    codec = DecisionCodec()  # evidence_event_ids is an array
    assert codec._writer is None
    for d in decisions():
        assert codec.decode(codec.encode(d)) == d


def test_types_it_does_not_write_are_refused_when_the_writer_is_built() -> None:
    for field_type in ({"type": "array", "items": "string"}, {"type": "map", "values": "long"},
                       ["null", "string", "long"], {"type": "record", "name": "R", "fields": []}):
        schema = {"type": "record", "name": "T", "fields": [{"name": "f", "type": field_type}]}
        with pytest.raises(UnsupportedSchema):
            RecordWriter(schema)
