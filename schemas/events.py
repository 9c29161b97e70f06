"""Gateway events: one record per JSON-RPC message crossing the gateway, plus lifecycle facts.

Names are past tense (`EventType`); the derived `kind` and `direction` columns are the fixed
vocabulary of the audit store (DESIGN.md §3). Events are plain values; chain fields (`stream_id`,
`seq`, `prev_hash`, `hash`) are filled by the sink that numbers them.

`GatewayEvent` is field-for-field the Avro record `mcpgw.events.GatewayEvent`
(`schemas/avsc/`), in the same order; the one renamed field is `ts_us`, which is the `ts` column.
`tests/schemas/test_drift.py` fails when the two disagree.
"""

from __future__ import annotations

import dataclasses
import random
import time
from dataclasses import dataclass
from enum import StrEnum


class EventType(StrEnum):
    AGENT_MESSAGE_RECEIVED = "agent_message_received"
    AGENT_MESSAGE_SENT = "agent_message_sent"
    UPSTREAM_MESSAGE_SENT = "upstream_message_sent"
    UPSTREAM_MESSAGE_RECEIVED = "upstream_message_received"
    MESSAGE_REFUSED = "message_refused"
    SESSION_OPENED = "session_opened"
    SESSION_CLOSED = "session_closed"
    UPSTREAM_CONNECTED = "upstream_connected"
    UPSTREAM_LOST = "upstream_lost"
    TOOL_DEFINITIONS_CHANGED = "tool_definitions_changed"
    DECISION_APPLIED = "decision_applied"
    CHECKPOINT_RECORDED = "checkpoint_recorded"
    AUDIT_GAP_RECORDED = "audit_gap_recorded"  # seq numbers the log refused: their actions were not taken


class Kind(StrEnum):
    REQUEST = "request"
    RESPONSE = "response"
    ERROR = "error"
    NOTIFICATION = "notification"
    LIFECYCLE = "lifecycle"


class Direction(StrEnum):
    AGENT_TO_GATEWAY = "agent_to_gateway"
    GATEWAY_TO_AGENT = "gateway_to_agent"
    GATEWAY_TO_UPSTREAM = "gateway_to_upstream"
    UPSTREAM_TO_GATEWAY = "upstream_to_gateway"
    INTERNAL = "internal"


class AuditMode(StrEnum):
    STRICT = "strict"  # the action waited until this event was durable
    ASYNC = "async"  # it did not; every event says so (DESIGN.md §2)


class Outcome(StrEnum):
    OK = "ok"
    REFUSED = "refused"
    UNAUTHENTICATED = "unauthenticated"
    FORBIDDEN = "forbidden"
    BLOCKED = "blocked"
    RATE_LIMITED = "rate_limited"
    UPSTREAM_ERROR = "upstream_error"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    ERROR = "error"


@dataclass(slots=True)
class GatewayEvent:
    """One audit fact. Field names match the `audit.events` columns where both exist."""

    event_type: EventType
    kind: Kind
    direction: Direction
    outcome: Outcome = Outcome.OK
    event_id: str = ""
    ts_us: int = 0
    # Chain fields, assigned by the sink that numbers this process's events.
    stream_id: str = ""
    seq: int = 0
    prev_hash: str = ""
    hash: str = ""
    gateway_instance: str = ""
    protocol_era: str = ""  # "legacy" | "modern" | "" (not yet known)
    protocol_version: str = ""
    transport: str = ""  # streamable_http | sse | stdio | internal
    session_id: str = ""
    correlation_id: str = ""
    tenant: str = ""
    principal: str = ""
    on_behalf_of: str = ""
    client_addr: str = ""
    server: str = ""
    jsonrpc_id: str = ""
    method: str = ""
    tool: str = ""
    resource_uri: str = ""
    prompt_name: str = ""
    error_code: int | None = None
    error_message: str = ""
    latency_us: int | None = None
    payload: bytes = b""
    payload_sha256: str = ""
    payload_size: int = 0
    redactions: int = 0
    payload_truncated: bool = False
    trace_id: str = ""
    span_id: str = ""
    detail: str = ""
    audit_mode: AuditMode = AuditMode.STRICT
    # The Avro schema revision this event is encoded with; the chain hash is over that encoding.
    schema_version: int = 1

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


_last_ms = 0
_counter = 0
_random_bits = random.Random().getrandbits


def new_event_id(now_ns: int | None = None) -> str:
    """A UUIDv7 string: time-ordered, so ids sort by creation time within a process."""
    global _last_ms, _counter
    ms = (now_ns if now_ns is not None else time.time_ns()) // 1_000_000
    if ms <= _last_ms:
        # Same millisecond (or clock stepped back): keep ids strictly increasing.
        ms = _last_ms
        _counter += 1
        if _counter > 0xFFF:
            ms += 1
            _counter = 0
    else:
        _counter = 0
    _last_ms = ms
    rand = _random_bits(62)  # uniqueness, not secrecy: ids are not credentials
    value = (ms << 80) | (0x7 << 76) | (_counter << 64) | (0b10 << 62) | rand
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
