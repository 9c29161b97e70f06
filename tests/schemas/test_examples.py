"""Every file in schemas/examples/ is a valid record of its schema, and the event examples form a
sound hash chain (a golden test of `canonical_event_bytes`)."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any, cast

import pytest
from fastavro import json_reader, parse_schema
from fastavro.validation import validate

from schemas import catalog
from schemas.codec import EVENT_RENAMES, DecisionCodec, EventCodec, RecordFields, RiskScoreCodec, event_hash
from schemas.events import EventType, GatewayEvent
from tests.schemas.example_values import EXAMPLES_DIR, GENESIS, example_files

FILES = sorted(EXAMPLES_DIR.glob("*.json"))
SCHEMAS = (catalog.GATEWAY_EVENT, catalog.RISK_SCORE, catalog.DECISION)
CODECS: dict[str, Any] = {catalog.GATEWAY_EVENT: EventCodec, catalog.RISK_SCORE: RiskScoreCodec,
                          catalog.DECISION: DecisionCodec}


def schema_of(path: Path) -> str:
    (fullname,) = [s for s in SCHEMAS if path.name.startswith(s + ".")]
    return fullname


def load(path: Path) -> tuple[str, Any]:
    """The example as the Python value it encodes."""
    fullname = schema_of(path)
    schema = catalog.without_logical_types(catalog.schema(fullname))
    text = json.dumps(json.loads(path.read_text()))  # fastavro reads one record per line
    (record,) = list(json_reader(io.StringIO(text), schema))
    validate(record, parse_schema(schema), raise_errors=True)
    codec = CODECS[fullname]()
    fields: RecordFields[Any] = codec.fields
    return fullname, fields.from_record(cast(dict[str, Any], record))


def test_there_are_examples_of_every_record() -> None:
    assert {schema_of(p) for p in FILES} == set(SCHEMAS)


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_example_is_valid(path: Path) -> None:
    fullname, value = load(path)
    names = [f["name"] for f in catalog.schema(fullname)["fields"]]
    assert list(json.loads(path.read_text())) == names, "examples spell out every field, in order"
    codec = CODECS[fullname]()
    assert codec.decode(codec.encode(value)) == value


def test_an_event_of_every_type() -> None:
    types = [load(p)[1].event_type for p in FILES if schema_of(p) == catalog.GATEWAY_EVENT]
    assert sorted(types) == sorted(EventType)


def test_event_payload_columns_are_consistent() -> None:
    for path in FILES:
        fullname, event = load(path)
        if fullname != catalog.GATEWAY_EVENT:
            continue
        if not event.payload_size:  # a fact with no message: no payload columns
            assert (event.payload, event.payload_sha256, event.payload_truncated) == (b"", "", False), path.name
        elif event.payload_truncated:
            assert len(event.payload) < event.payload_size, path.name
        else:
            assert hashlib.sha256(event.payload).hexdigest() == event.payload_sha256, path.name
            assert len(event.payload) == event.payload_size, path.name
            json.loads(event.payload)
        assert b"4111111111111111" not in event.payload and b"pk-9f8e7d6c" not in event.payload


def test_event_examples_form_a_sound_chain() -> None:
    """As `mcpgw audit verify` reads a stream: gapless, linked, each hash recomputable; a jump in
    seq only right before the audit_gap_recorded event that names the missing range."""
    events: list[GatewayEvent] = sorted(
        (load(p)[1] for p in FILES if schema_of(p) == catalog.GATEWAY_EVENT), key=lambda e: e.seq
    )
    assert len({e.stream_id for e in events}) == 1
    expected_seq, prev = 1, GENESIS
    for e in events:
        assert e.hash == event_hash(e), f"seq {e.seq}: canonical bytes changed, or the example was edited"
        if e.seq == expected_seq:
            assert e.prev_hash == prev, e.seq
        else:
            assert e.event_type is EventType.AUDIT_GAP_RECORDED, f"seq {expected_seq}-{e.seq - 1} missing"
            assert f"seq {expected_seq}-{e.seq - 1} were refused" in e.detail
        expected_seq, prev = e.seq + 1, e.hash


def test_examples_match_their_source() -> None:
    """Regenerate with `python -m tests.schemas.example_values` after a deliberate change."""
    expected = example_files()
    assert sorted(expected) == [p.name for p in FILES]
    for path in FILES:
        assert path.read_text() == expected[path.name], path.name


def test_renames_cover_only_existing_fields() -> None:
    names = {f["name"] for f in catalog.schema(catalog.GATEWAY_EVENT)["fields"]}
    assert set(EVENT_RENAMES.values()) <= names
