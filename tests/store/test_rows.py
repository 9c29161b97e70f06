"""Unit tests for consumers/store/rows.py: records → audit-store rows (no services)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest

from consumers.store.rows import (
    CHECKPOINT_COLUMNS,
    DECISION_COLUMNS,
    EVENT_COLUMNS,
    RISK_SCORE_COLUMNS,
    checkpoint_row,
    decision_row,
    dedup_token,
    event_row,
    micros,
    risk_score_row,
    utc,
)
from schemas.decisions import Decision
from schemas.events import EventType, GatewayEvent
from schemas.risk import RiskScore
from tests.schemas.example_values import CHECKPOINT_KEY, STREAM, T0, decisions, gateway_events, risk_scores


def field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def test_every_event_field_has_a_column() -> None:
    # A field added to GatewayEvent (and its Avro schema) needs a column in a new migration too.
    expected = ["ts" if name == "ts_us" else name for name in field_names(GatewayEvent)]
    assert sorted(EVENT_COLUMNS) == sorted(expected)
    assert len(set(EVENT_COLUMNS)) == len(EVENT_COLUMNS)


def test_every_decision_and_risk_field_has_a_column() -> None:
    assert list(DECISION_COLUMNS) == field_names(Decision)
    assert list(RISK_SCORE_COLUMNS) == field_names(RiskScore)


@pytest.mark.parametrize("us", [0, 1, T0, T0 + 999_999, 253_402_300_799_999_999, -1])
def test_timestamps_are_microsecond_exact(us: int) -> None:
    ts = utc(us)
    assert ts.tzinfo is UTC
    assert micros(ts) == us
    assert micros(ts.replace(tzinfo=None)) == us  # naive values are read as UTC


def test_event_row() -> None:
    event = gateway_events()[1]
    row = event_row(event)
    assert list(row) == list(EVENT_COLUMNS)
    assert row["ts"] == datetime(2026, 11, 21, 12, 0, 0, 2_500, tzinfo=UTC)
    assert row["event_type"] == "agent_message_received" and type(row["event_type"]) is str
    assert all(type(row[c]) is str for c in ("kind", "direction", "outcome", "audit_mode"))
    assert type(row["payload"]) is bytes and row["payload"] == event.payload
    assert row["error_code"] is None and row["latency_us"] is None
    fields = dataclasses.asdict(event)  # StrEnum members equal their values
    assert {k: v for k, v in row.items() if k != "ts"} == {k: v for k, v in fields.items() if k != "ts_us"}


def test_event_row_keeps_error_and_latency() -> None:
    refused, answered = gateway_events()[5], gateway_events()[4]
    assert event_row(refused)["error_code"] == -32001
    assert event_row(refused)["outcome"] == "blocked"
    assert event_row(answered)["latency_us"] == 43_112


def test_decision_row_keeps_nulls_apart_from_empty() -> None:
    block, unblock, tool_block = (decision_row(d) for d in decisions())
    assert list(block) == list(DECISION_COLUMNS)
    assert block["action"] == "block" and block["scope"] == "principal" and block["source"] == "risk_engine"
    assert block["expires_at"] == utc(T0 + 3_600_000_000)
    assert block["evidence_event_ids"] == decisions()[0].evidence_event_ids
    assert unblock["expires_at"] is None and unblock["risk_score"] is None
    assert tool_block["tenant"] is None  # every tenant, not tenant ""


def test_risk_score_row() -> None:
    high, low = (risk_score_row(s) for s in risk_scores())
    assert list(high) == list(RISK_SCORE_COLUMNS)
    assert high["signals"] == {"new_tool_for_principal": 30.0, "secret_in_arguments": 35.0, "burst_rate": 22.0}
    assert high["window_start"] == utc(T0 - 300_000_000)
    assert low["session_id"] is None and low["tool"] is None and low["window_end"] is None
    assert low["reasons"] == [] and low["signals"] == {}


def test_checkpoint_row_projects_the_signed_head() -> None:
    import hashlib
    import hmac

    events = gateway_events()
    checkpoint = next(e for e in events if e.event_type is EventType.CHECKPOINT_RECORDED)
    row = checkpoint_row(checkpoint)
    assert row is not None and list(row) == list(CHECKPOINT_COLUMNS)
    head = next(e for e in events if e.seq == checkpoint.seq - 1)
    assert (row["stream_id"], row["seq"], row["hash"]) == (STREAM, head.seq, head.hash)
    expected = hmac.new(CHECKPOINT_KEY, f"{STREAM}:{head.seq}:{head.hash}".encode(), hashlib.sha256).hexdigest()
    assert row["signature"] == expected
    assert (row["event_id"], row["event_seq"], row["instance"]) == (checkpoint.event_id, checkpoint.seq,
                                                                    checkpoint.gateway_instance)


def test_checkpoint_row_unsigned_malformed_and_other_events() -> None:
    checkpoint = next(e for e in gateway_events() if e.event_type is EventType.CHECKPOINT_RECORDED)
    unsigned = dataclasses.replace(checkpoint, detail=f"head seq=4 hash={'a' * 64} sig=unsigned")
    row = checkpoint_row(unsigned)
    assert row is not None and row["signature"] == "" and row["seq"] == 4
    assert checkpoint_row(dataclasses.replace(checkpoint, detail="garbled")) is None
    assert checkpoint_row(gateway_events()[0]) is None


def test_dedup_token() -> None:
    assert dedup_token("mcp.events", 3, 100, 199) == "mcp.events:3:100-199"
