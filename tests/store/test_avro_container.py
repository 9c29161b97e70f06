"""Avro container files from schemaless bodies (consumers/store/avro_container.py; no services)."""

from __future__ import annotations

import io

import fastavro
import pytest

from consumers.store.avro_container import AvroContainer, zigzag
from schemas import catalog
from schemas.codec import SINGLE_OBJECT_HEADER_SIZE, EventCodec
from tests.schemas.example_values import gateway_events


@pytest.mark.parametrize(("n", "encoded"), [(0, b"\x00"), (1, b"\x02"), (63, b"\x7e"), (64, b"\x80\x01"),
                                            (8_000_000, b"\x80\xc8\xd0\x07")])
def test_zigzag(n: int, encoded: bytes) -> None:
    assert zigzag(n) == encoded


def test_a_container_reads_back_as_the_events() -> None:
    codec = EventCodec()
    events = gateway_events()
    container = AvroContainer(catalog.schema(catalog.GATEWAY_EVENT))
    data = container.build([codec.encode(e)[SINGLE_OBJECT_HEADER_SIZE:] for e in events])
    reader = fastavro.reader(io.BytesIO(data))
    assert reader.codec == "null"
    records = list(reader)
    assert [r["event_id"] for r in records] == [e.event_id for e in events]
    # The header keeps the logical types: readers see timestamps, as ClickHouse maps them to DateTime64.
    assert records[0]["ts"].timestamp() * 1_000_000 == pytest.approx(events[0].ts_us)
    assert records[1]["payload"] == events[1].payload


def test_an_empty_container_has_no_block() -> None:
    container = AvroContainer(catalog.schema(catalog.GATEWAY_EVENT))
    assert container.build([]) == container.header
    assert list(fastavro.reader(io.BytesIO(container.build([])))) == []
