"""The audit consumer's Avro path: bodies checked, not decoded, and ClickHouse writing the same rows.

`EventBodies` alone first (no store), then the whole consumer into chDB compared, column by column,
with the rows the row path (`consumers/store/rows.py: event_row`) builds for the same events.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from consumers.audit import AuditConsumer, AuditWriter, EventBodies, Routed, default_rows
from consumers.pipeline import parse_dead_letter
from consumers.store.base import CHECKPOINTS_TABLE, EVENTS_TABLE
from consumers.store.chdb_store import ChdbStore
from consumers.store.rows import CHECKPOINT_COLUMNS, EVENT_COLUMNS, checkpoint_row, event_row
from eventlog.base import TOPIC_EVENTS
from eventlog.embedded import EmbeddedLog
from schemas import catalog
from schemas.codec import SINGLE_OBJECT_HEADER_SIZE, CodecError, EventCodec, MalformedMessageError, WireFormat
from schemas.events import EventType, GatewayEvent
from tests.consumers.support import MemoryStore, run_until_committed, simple_rows
from tests.consumers.test_audit_consumer import dead_letters, settings
from tests.schemas.example_values import gateway_events
from tests.schemas.test_evolution import V1, V1_RECORD, v1_single_object
from tests.schemas.test_scan import field_offset

H = SINGLE_OBJECT_HEADER_SIZE


def bodies() -> EventBodies:
    return EventBodies(EventCodec(writer_schemas=[V1]), default_rows())


def non_canonical(codec: EventCodec, event: GatewayEvent) -> bytes:
    """`event` encoded with a boolean byte of 2, which fastavro reads as true and ClickHouse refuses."""
    assert event.payload_truncated
    data = bytearray(codec.encode(event))
    at = H + field_offset(data[H:], "payload_truncated")
    assert data[at] == 1
    data[at] = 2
    return bytes(data)


def test_a_current_event_keeps_its_body() -> None:
    codec = EventCodec()
    for event in gateway_events():
        if event.event_type is EventType.CHECKPOINT_RECORDED:
            continue
        data = codec.encode(event)
        assert bodies()(data) == Routed(event.event_id, event.ts_us, (), data[H:])


def test_a_checkpoint_keeps_its_body_and_gets_its_head_row() -> None:
    codec = EventCodec()
    checkpoint = next(e for e in gateway_events() if e.event_type is EventType.CHECKPOINT_RECORDED)
    data = codec.encode(checkpoint)
    assert bodies()(data) == Routed(checkpoint.event_id, checkpoint.ts_us,
                                    ((CHECKPOINTS_TABLE, checkpoint_row(checkpoint)),), data[H:])  # fmt: skip


def test_other_writers_and_framings_are_re_encoded_with_the_current_schema() -> None:
    codec = EventCodec(writer_schemas=[V1])
    old = v1_single_object(V1_RECORD)
    routed = bodies()(old)
    assert routed.body == codec.encode(codec.decode(old))[H:]  # new fields at their defaults

    registry = {7: json.dumps(catalog.schema(catalog.GATEWAY_EVENT))}
    confluent = EventCodec(wire=WireFormat.CONFLUENT, registry=registry)
    event = gateway_events()[1]
    routed = EventBodies(confluent, default_rows())(confluent.encode(event))
    assert routed.body == codec.encode(event)[H:]


def test_a_body_only_fastavro_reads_is_re_encoded_canonically() -> None:
    codec = EventCodec()
    event = dataclasses.replace(gateway_events()[1], payload_truncated=True)
    data = non_canonical(codec, event)
    assert codec.decode(data) == event
    assert bodies()(data).body == codec.encode(event)[H:] != data[H:]


@pytest.mark.parametrize("data", [b"", b"not avro", b"\xc3\x01" + b"\x00" * 8 + b"junk"])
def test_what_the_codec_refuses_raises_the_codec_s_error(data: bytes) -> None:
    with pytest.raises(CodecError) as raised:
        bodies()(data)
    with pytest.raises(type(raised.value)):
        EventCodec().decode(data)


def test_a_damaged_body_raises_the_codec_s_own_reason() -> None:
    data = EventCodec().encode(gateway_events()[1]) + b"\x00"
    with pytest.raises(MalformedMessageError, match="bytes left after the record"):
        bodies()(data)


async def test_a_batch_cannot_hold_events_both_as_bodies_and_rows() -> None:
    route = default_rows()
    event = gateway_events()[1]
    mixed = [Routed(event.event_id, event.ts_us, (), b"body"),
             Routed(event.event_id, event.ts_us, ((EVENTS_TABLE, route.event(event)),))]  # fmt: skip
    with pytest.raises(ValueError, match="both as bodies and as rows"):
        await AuditWriter(MemoryStore()).write(mixed, "t:0:0-1")


@pytest.fixture
async def chdb(tmp_path: Path) -> AsyncIterator[ChdbStore]:
    store = ChdbStore(tmp_path / "store")
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def test_the_consumer_writes_the_rows_the_row_path_would(log: EmbeddedLog, chdb: ChdbStore) -> None:
    codec = EventCodec(writer_schemas=[V1])
    events = gateway_events()
    truncated = dataclasses.replace(events[1], event_id="truncated-1", seq=100, payload_truncated=True)
    old = codec.decode(v1_single_object(V1_RECORD))
    records = [(b"k", codec.encode(e)) for e in events]
    records += [(b"k", non_canonical(codec, truncated)), (b"k", v1_single_object(V1_RECORD)), (b"k", b"garbage")]
    await log.producer().append_batch(TOPIC_EVENTS, records)
    ends = await log.end_offsets(TOPIC_EVENTS)
    consumer = log.consumer("audit", [TOPIC_EVENTS])
    audit = AuditConsumer(consumer, chdb, log.producer(), settings(max_rows=6), codec=codec)
    assert audit.reads_bodies
    await run_until_committed(audit, consumer, ends)

    expected = [event_row(e) for e in [*events, truncated, old]]
    result = await chdb.query(f"SELECT {', '.join(EVENT_COLUMNS)} FROM {EVENTS_TABLE} ORDER BY seq, event_id")
    got = [dict(zip(EVENT_COLUMNS, row, strict=True)) for row in result.rows]
    assert got == sorted(expected, key=lambda r: (r["seq"], r["event_id"]))
    heads = await chdb.query(f"SELECT {', '.join(CHECKPOINT_COLUMNS)} FROM {CHECKPOINTS_TABLE}")
    assert [dict(zip(CHECKPOINT_COLUMNS, row, strict=True)) for row in heads.rows] == [
        checkpoint_row(e) for e in events if e.event_type is EventType.CHECKPOINT_RECORDED
    ]
    letters = [parse_dead_letter(r.value) for r in await dead_letters(log)]
    assert [d.value for d in letters] == [b"garbage"] and all(d.topic == TOPIC_EVENTS for d in letters)


def test_only_the_default_projection_on_an_avro_store_takes_the_avro_path(log: EmbeddedLog, tmp_path: Path) -> None:
    consumer = log.consumer("audit", [TOPIC_EVENTS])
    assert not AuditConsumer(consumer, MemoryStore(), log.producer()).reads_bodies
    assert not AuditConsumer(consumer, ChdbStore(tmp_path), log.producer(), rows=simple_rows()).reads_bodies
