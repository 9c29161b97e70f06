"""Events, risk scores and decisions as audit-store rows (pure: no I/O, no client library).

A row is a dict keyed by column name (infra/clickhouse/0001…0002) holding the Python value the
ClickHouse clients serialize for that column type: `datetime` (UTC, microsecond-exact) for
DateTime64, `bytes` for the payload (stored exactly, DESIGN.md §2), `None` for NULL, plain `str`
for the enum-valued LowCardinality columns. Every row of one table has the same keys, in
column order, so a batch converts to columns without looking at the table.

Checkpoints have no record of their own: a `checkpoint_recorded` event carries the signed chain
head in its `detail` (`head seq=N hash=H sig=S`, written by ingress/chain.py), and
`checkpoint_row` projects it to `audit.checkpoints`.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from enum import Enum
from operator import attrgetter
from typing import Any

from schemas.decisions import Decision
from schemas.events import EventType, GatewayEvent
from schemas.risk import RiskScore

Row = dict[str, Any]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

EVENT_COLUMNS: tuple[str, ...] = (
    "ts", "event_id", "event_type", "kind", "direction", "outcome", "stream_id", "seq", "prev_hash", "hash",
    "gateway_instance", "protocol_era", "protocol_version", "transport", "session_id", "correlation_id",
    "tenant", "principal", "on_behalf_of", "client_addr", "server", "jsonrpc_id", "method", "tool",
    "resource_uri", "prompt_name", "error_code", "error_message", "latency_us", "payload", "payload_sha256",
    "payload_size", "redactions", "payload_truncated", "trace_id", "span_id", "detail", "audit_mode",
    "schema_version",
)
DECISION_COLUMNS: tuple[str, ...] = (
    "ts", "decision_id", "action", "scope", "subject", "tenant", "reason", "source", "actor", "expires_at",
    "risk_score", "evidence_event_ids", "schema_version",
)
RISK_SCORE_COLUMNS: tuple[str, ...] = (
    "ts", "score_id", "tenant", "principal", "session_id", "tool", "server", "score", "reasons", "signals",
    "window_start", "window_end", "event_id", "scorer", "schema_version",
)
CHECKPOINT_COLUMNS: tuple[str, ...] = ("ts", "stream_id", "seq", "hash", "signature", "instance", "event_id",
                                       "event_seq")

_CHECKPOINT_DETAIL = re.compile(r"head seq=(\d+) hash=([0-9a-f]*) sig=(\S+)")
_UNSIGNED = "unsigned"  # what ingress/chain.py writes when no checkpoint key is configured


def utc(us: int) -> datetime:
    """UTC microseconds as an aware datetime, exactly (no float round trip)."""
    return _EPOCH + timedelta(microseconds=us)


def utc_or_none(us: int | None) -> datetime | None:
    return None if us is None else utc(us)


def micros(ts: datetime) -> int:
    """The inverse of `utc`, for values read back from the store."""
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)  # clickhouse-connect's default decodes UTC columns as naive UTC
    delta = ts - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, Enum) else value


# The audit consumer converts every event, so this runs per row: one attrgetter call, then fix-ups
# for the few columns whose value is not the field as is (5x faster than a getattr loop).
_EVENT_FIELDS = attrgetter(*("ts_us" if column == "ts" else column for column in EVENT_COLUMNS))
_EVENT_ENUMS = ("event_type", "kind", "direction", "outcome", "audit_mode")


def event_row(event: GatewayEvent) -> Row:
    row: Row = dict(zip(EVENT_COLUMNS, _EVENT_FIELDS(event), strict=True))
    row["ts"] = utc(event.ts_us)
    row["payload"] = bytes(event.payload)
    for column in _EVENT_ENUMS:
        row[column] = _plain(row[column])
    return row


def decision_row(decision: Decision) -> Row:
    return {
        "ts": utc(decision.ts),
        "decision_id": decision.decision_id,
        "action": _plain(decision.action),
        "scope": _plain(decision.scope),
        "subject": decision.subject,
        "tenant": decision.tenant,
        "reason": decision.reason,
        "source": _plain(decision.source),
        "actor": decision.actor,
        "expires_at": utc_or_none(decision.expires_at),
        "risk_score": decision.risk_score,
        "evidence_event_ids": list(decision.evidence_event_ids),
        "schema_version": decision.schema_version,
    }


def risk_score_row(score: RiskScore) -> Row:
    return {
        "ts": utc(score.ts),
        "score_id": score.score_id,
        "tenant": score.tenant,
        "principal": score.principal,
        "session_id": score.session_id,
        "tool": score.tool,
        "server": score.server,
        "score": score.score,
        "reasons": list(score.reasons),
        "signals": dict(score.signals),
        "window_start": utc_or_none(score.window_start),
        "window_end": utc_or_none(score.window_end),
        "event_id": score.event_id,
        "scorer": score.scorer,
        "schema_version": score.schema_version,
    }


def checkpoint_row(event: GatewayEvent) -> Row | None:
    """The signed head a `checkpoint_recorded` event carries, or None for any other event.

    A checkpoint whose detail does not parse is still an event (it lands in audit.events); it just
    has no head to project, and `mcpgw audit verify` reports the stream as unchecked there.
    """
    if event.event_type != EventType.CHECKPOINT_RECORDED:
        return None
    match = _CHECKPOINT_DETAIL.search(event.detail)
    if match is None:
        return None
    seq, head, signature = match.groups()
    return {
        "ts": utc(event.ts_us),
        "stream_id": event.stream_id,
        "seq": int(seq),
        "hash": head,
        "signature": "" if signature == _UNSIGNED else signature,
        "instance": event.gateway_instance,
        "event_id": event.event_id,
        "event_seq": event.seq,
    }


def dedup_token(topic: str, partition: int, first_offset: int, last_offset: int) -> str:
    """A batch's insert_deduplication_token (DESIGN.md §4): the same log range, the same token."""
    return f"{topic}:{partition}:{first_offset}-{last_offset}"
