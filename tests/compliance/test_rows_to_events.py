"""consumers/compliance/rows_to_events.py: rows in every shape the backends and exports give them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from consumers.compliance.errors import RowMappingError
from consumers.compliance.report import FindingKind
from consumers.compliance.rows_to_events import (
    EVENT_COLUMNS,
    missing_event_columns,
    row_to_event,
    rows_to_events,
    ts_to_us,
    us_to_datetime,
)
from consumers.compliance.verify import verify
from schemas.events import EventType, Kind
from tests.compliance.chains import KEY, T0, ChainBuilder
from tests.compliance.fake_store import event_row


def built() -> ChainBuilder:
    b = ChainBuilder()
    b.messages(2, latency_us=41_870, error_code=-32001)
    b.truncated(b"z" * 300, prefix=10)
    b.checkpoint()
    return b


def test_rows_map_back_to_the_same_events() -> None:
    b = built()
    rows = [event_row(e) for e in b.events]
    assert [row_to_event(r) for r in rows] == b.events
    columns = list(rows[0])
    assert list(rows_to_events(columns, [tuple(r.values()) for r in rows])) == b.events


def test_values_as_text_and_other_shapes() -> None:
    e = built().events[0]
    row = {k: (str(v) if v is not None else "") for k, v in event_row(e).items()}
    row.update(payload=e.payload.decode(), payload_truncated="false", ts=us_to_datetime(e.ts_us).isoformat())
    assert row_to_event(row) == e
    naive = dict(event_row(e), ts=us_to_datetime(e.ts_us).replace(tzinfo=None), payload=bytearray(e.payload),
                 payload_truncated=0, event_id=e.event_id.encode())
    assert row_to_event(naive) == e


@pytest.mark.parametrize("value", [
    T0, str(T0), Decimal(T0) / 1_000_000, datetime(2026, 11, 21, 12, tzinfo=UTC),
    datetime(2026, 11, 21, 13, tzinfo=timezone(timedelta(hours=1))), "2026-11-21T12:00:00Z",
    "2026-11-21 12:00:00.000000",
])
def test_timestamps_are_exact(value: object) -> None:
    assert ts_to_us(value) == T0


def test_unparseable_values_are_named() -> None:
    row = event_row(built().events[0])
    with pytest.raises(RowMappingError, match="column seq"):
        row_to_event({**row, "seq": "twelve"})
    with pytest.raises(RowMappingError, match="column ts"):
        row_to_event({**row, "ts": "yesterday"})
    with pytest.raises(RowMappingError, match="no kind column"):
        row_to_event({k: v for k, v in row.items() if k != "kind"})


def test_unknown_enum_symbol_reaches_the_verifier() -> None:
    b = built()
    rows = [event_row(e) for e in b.events]
    rows[1]["kind"] = "exfiltration"
    events = [row_to_event(r) for r in rows]
    assert events[1].kind == "exfiltration" and events[0].kind is Kind.REQUEST
    assert events[3].event_type is EventType.CHECKPOINT_RECORDED
    report = verify(events, KEY)
    assert [(f.kind, f.seq) for f in report.problems] == [(FindingKind.HASH_MISMATCH, 2)]
    assert "no longer fits the event schema" in report.problems[0].detail


def test_missing_columns() -> None:
    assert missing_event_columns(EVENT_COLUMNS) == []
    assert missing_event_columns([c if c != "ts" else "ts_us" for c in EVENT_COLUMNS]) == []
    assert missing_event_columns([c for c in EVENT_COLUMNS if c not in ("span_id", "ts")]) == ["ts", "span_id"]


def test_inverse_of_the_stores_rows() -> None:
    rows = pytest.importorskip("consumers.store.rows")
    b = built()
    assert [row_to_event(rows.event_row(e)) for e in b.events] == b.events
    assert missing_event_columns(rows.EVENT_COLUMNS) == []
