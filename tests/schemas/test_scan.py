"""BodyScanner against the codec: it accepts only what the codec decodes, and every canonical body."""

from __future__ import annotations

import dataclasses
import io
import random
from typing import Any

import pytest
from fastavro import parse_schema, schemaless_reader, schemaless_writer

from schemas import catalog
from schemas.codec import SINGLE_OBJECT_HEADER_SIZE, CodecError, EventCodec, MalformedMessageError
from schemas.events import EventType, GatewayEvent
from schemas.scan import BodyScanner
from tests.schemas.example_values import gateway_events

PICK = ("event_type", "event_id", "ts")
H = SINGLE_OBJECT_HEADER_SIZE


def event_scanner() -> BodyScanner:
    return BodyScanner(catalog.schema(catalog.GATEWAY_EVENT), PICK)


def mutated(rnd: random.Random, data: bytes, start: int) -> bytes:
    """One random damage: a byte replaced, the end cut, bytes appended or removed, varint-ish bytes set."""
    b = bytearray(data)
    match rnd.randrange(5):
        case 0:
            b[rnd.randrange(start, len(b))] = rnd.randrange(256)
        case 1:
            del b[rnd.randrange(start, len(b)) :]
        case 2:
            b += rnd.randbytes(rnd.randrange(1, 4))
        case 3:
            i = rnd.randrange(start, len(b))
            del b[i : i + rnd.randrange(1, 4)]
        case _:
            for _ in range(3):
                b[rnd.randrange(start, len(b))] = rnd.choice((0, 1, 2, 0x7F, 0x80, 0x81, 0xFF, 0xC3, 0xED))
    return bytes(b)


def test_picks_the_fields_of_every_example_event() -> None:
    codec, scanner = EventCodec(), event_scanner()
    for event in gateway_events():
        assert scanner.scan(codec.encode(event), H) == (event.event_type.value, event.event_id, event.ts_us)


def test_on_mutated_events_it_never_accepts_what_the_codec_refuses() -> None:
    """The property the audit consumer relies on, on 30,000 damaged events (a fixed seed)."""
    codec, scanner, rnd = EventCodec(), event_scanner(), random.Random(20261121)
    encoded = [codec.encode(e) for e in gateway_events()]
    outcomes = {"both accept": 0, "both refuse": 0, "codec only": 0}
    for _ in range(30_000):
        data = mutated(rnd, rnd.choice(encoded), H)
        try:
            event = codec.decode(data)
        except CodecError:
            event = None
        try:
            picked = scanner.scan(data, H)
        except MalformedMessageError:
            picked = None
        if picked is not None:
            assert event is not None, f"the scanner accepted what the codec refuses: {data.hex()}"
            assert picked == (event.event_type.value, event.event_id, event.ts_us)
            outcomes["both accept"] += 1
        elif event is not None:
            # Not canonical (a boolean byte of 2, say): the codec's own encoding of it is.
            assert scanner.scan(codec.encode(event), H)
            outcomes["codec only"] += 1
        else:
            outcomes["both refuse"] += 1
    assert min(outcomes.values()) > 10, outcomes  # every branch was exercised


def body_of(event: GatewayEvent) -> bytearray:
    return bytearray(EventCodec().encode(event)[H:])


def field_offset(body: bytes, name: str) -> int:
    """Where field `name` starts in a GatewayEvent body (read with fastavro up to it)."""
    fields = catalog.schema(catalog.GATEWAY_EVENT)["fields"]
    before = fields[: [f["name"] for f in fields].index(name)]
    prefix = {"type": "record", "name": "Prefix", "fields": [{"name": f["name"], "type": f["type"]} for f in before]}
    buf = io.BytesIO(body)
    schemaless_reader(buf, parse_schema(catalog.without_logical_types(prefix)), None)
    return buf.tell()


def event(**changes: Any) -> GatewayEvent:
    return dataclasses.replace(gateway_events()[1], **changes)


def scan(body: bytes) -> tuple[Any, ...]:
    return event_scanner().scan(bytes(body))


def test_refuses_trailing_bytes_and_a_cut_body() -> None:
    body = body_of(event())
    with pytest.raises(MalformedMessageError, match="1 bytes left"):
        scan(body + b"\x00")
    for cut in (1, 7, len(body) // 2, len(body) - 1):
        with pytest.raises(MalformedMessageError):
            scan(body[:cut])


def test_refuses_a_string_that_is_not_utf8() -> None:
    body = body_of(event(tool="t\u00e9"))
    at = body.index("\u00e9".encode())
    body[at : at + 2] = b"\xff\xfe"
    with pytest.raises(MalformedMessageError, match="not UTF-8"):
        scan(body)


STRING_FIELDS = [f["name"] for f in catalog.schema(catalog.GATEWAY_EVENT)["fields"] if f["type"] == "string"]


@pytest.mark.parametrize("field", STRING_FIELDS)
def test_every_string_field_is_checked(field: str) -> None:
    """Wherever it sits (first, after a wide varint, after a two-byte length, last), a string is UTF-8-checked."""
    attribute = "ts_us" if field == "ts" else field
    good = event(**{attribute: "x\u00e9y" * 30})  # long enough for a two-byte length too
    body = body_of(good)
    assert scan(body) == (good.event_type.value, good.event_id, good.ts_us)  # non-ASCII, valid: accepted
    at = body.index("\u00e9".encode())
    body[at : at + 2] = b"\xff\xfe"
    with pytest.raises(MalformedMessageError, match="not UTF-8"):
        scan(body)


def test_a_utf8_sequence_split_over_two_strings_is_two_bad_strings() -> None:
    # "é" is C3 A9: the first string ends with C3, the next begins with A9. Joined they would decode.
    body = body_of(event(resource_uri="x\u00e9", prompt_name="yy"))
    at = body.index("x\u00e9".encode())
    body[at : at + 3] = b"xy\xc3"  # same length: resource_uri = "xy" + C3
    assert body[at + 3] == 4  # prompt_name's length byte (zigzag 2), then "yy"
    body[at + 4] = 0xA9
    with pytest.raises(MalformedMessageError, match="not UTF-8"):
        scan(body)


def test_refuses_negative_lengths() -> None:
    body = body_of(event())
    at = field_offset(body, "event_id")
    body[at] = 0x03  # zigzag -2
    with pytest.raises(MalformedMessageError, match="negative length"):
        scan(body)


@pytest.mark.parametrize(("field", "byte"), [("kind", 0x01), ("kind", 0x0A), ("payload_truncated", 0x02)])
def test_refuses_what_only_fastavro_reads(field: str, byte: int) -> None:
    """A negative enum index (fastavro counts it from the end), one past the symbols, a boolean byte of 2."""
    body = body_of(event())
    body[field_offset(body, field)] = byte
    with pytest.raises(MalformedMessageError):
        scan(body)


def test_long_varints() -> None:
    # seq as a 10-byte varint (legal: 64 bits) is read; an 11th byte, or a 10th above 1, is not.
    body = body_of(event(seq=1))
    at = field_offset(body, "seq")
    assert body[at] == 2
    ten = bytes([0x82] + [0x80] * 8 + [0x00])  # 1, zigzag-encoded, padded to ten bytes
    assert scan(body[:at] + ten + body[at + 1 :])
    for bad in (bytes([0x82] + [0x80] * 9 + [0x00]), bytes([0x82] + [0x80] * 8 + [0x02])):
        with pytest.raises(MalformedMessageError, match="64 bits"):
            scan(body[:at] + bad + body[at + 1 :])


def test_picks_a_wide_timestamp_exactly() -> None:
    for ts in (0, 1, 63, 64, 1_795_262_400_002_500, 2**63 - 1, -(2**63)):
        assert scan(body_of(event(ts_us=ts)))[2] == ts


# ---- other schemas: every type the generator handles --------------------------------------------

SHAPES: dict[str, Any] = {
    "type": "record", "name": "ns.Shapes", "fields": [
        {"name": "flag", "type": "boolean"},
        {"name": "small", "type": "int"},
        {"name": "ratio", "type": "float"},
        {"name": "amount", "type": "double"},
        {"name": "digest", "type": {"type": "fixed", "name": "ns.Digest", "size": 4}},
        {"name": "tags", "type": {"type": "array", "items": "string"}},
        {"name": "labels", "type": {"type": "map", "values": "long"}},
        {"name": "inner", "type": {"type": "record", "name": "ns.Inner", "fields": [
            {"name": "color", "type": {"type": "enum", "name": "ns.Color", "symbols": ["red", "green"]}},
            {"name": "note", "type": ["null", "string", "ns.Digest"]},
        ]}},
        {"name": "again", "type": "ns.Inner"},
        {"name": "name", "type": "string"},
    ],
}  # fmt: skip


def shape(rnd: random.Random) -> dict[str, Any]:
    def inner() -> dict[str, Any]:
        note = rnd.choice([None, "n\u00f6te" * rnd.randrange(3), b"abcd"])
        return {"color": rnd.choice(["red", "green"]), "note": note}

    return {
        "flag": rnd.random() < 0.5, "small": rnd.randrange(-(2**31), 2**31), "ratio": rnd.random(),
        "amount": rnd.random() * 1e9, "digest": rnd.randbytes(4),
        "tags": [rnd.choice(["a", "\u00fcber", ""]) * rnd.randrange(40) for _ in range(rnd.randrange(4))],
        "labels": {f"k{i}": rnd.randrange(-(2**40), 2**40) for i in range(rnd.randrange(4))},
        "inner": inner(), "again": inner(), "name": "x" * rnd.randrange(100),
    }  # fmt: skip


def test_other_types_against_fastavro() -> None:
    parsed = parse_schema(SHAPES)
    scanner = BodyScanner(SHAPES, ("small", "name"))
    rnd = random.Random(7)
    accepted = refused = 0
    for _ in range(5_000):
        out = io.BytesIO()
        record = shape(rnd)
        schemaless_writer(out, parsed, record)
        good = out.getvalue()
        assert scanner.scan(good) == (record["small"], record["name"])
        data = mutated(rnd, good, 0)
        buf = io.BytesIO(data)
        try:
            decoded = schemaless_reader(buf, parsed, None)
            fastavro_reads = buf.tell() == len(data)
        except Exception:
            fastavro_reads = False
        try:
            picked = scanner.scan(data)
        except MalformedMessageError:
            refused += 1
            continue
        accepted += 1
        assert fastavro_reads, f"accepted what fastavro refuses: {data.hex()}"
        assert picked == (decoded["small"], decoded["name"])
    assert accepted > 100 and refused > 100


def test_array_blocks_with_a_negative_count_carry_their_size() -> None:
    schema = {"type": "record", "name": "A", "fields": [{"name": "xs", "type": {"type": "array", "items": "long"}}]}
    # Two items in one block written as count -2 (zigzag 3) followed by the block's byte size 2.
    assert BodyScanner(schema).scan(bytes([3, 4, 2, 4, 0])) == ()


def test_refuses_what_it_cannot_scan_or_pick() -> None:
    recursive = {"type": "record", "name": "Node", "fields": [{"name": "next", "type": ["null", "Node"]}]}
    with pytest.raises(NotImplementedError, match="recursive"):
        BodyScanner(recursive)
    with pytest.raises(ValueError, match="cannot pick"):
        BodyScanner(catalog.schema(catalog.GATEWAY_EVENT), ("payload",))
    with pytest.raises(ValueError, match="cannot pick"):
        BodyScanner(catalog.schema(catalog.GATEWAY_EVENT), ("no_such_field",))


def test_checkpoint_events_scan_like_any_other() -> None:
    checkpoint = next(e for e in gateway_events() if e.event_type is EventType.CHECKPOINT_RECORDED)
    assert scan(body_of(checkpoint))[0] == "checkpoint_recorded"
