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
import os
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
_ms_text = "00000000-0000-"  # the id's first two groups, for `_last_ms`
_tail_text = "-8000-000000000000"  # variant and random bits, drawn anew with every millisecond
_random = random.Random()
_random_bits = _random.getrandbits
# A forked child would otherwise draw the same random bits as its parent.
os.register_at_fork(after_in_child=_random.seed)
# Version nibble and counter, as text: one table lookup instead of formatting per id.
_COUNTER_TEXT = tuple(f"7{c:03x}" for c in range(0x1000))
_VARIANT = 0b10 << 62


def _set_ms(ms: int) -> None:
    global _last_ms, _ms_text, _tail_text
    _last_ms = ms
    h = f"{ms:012x}"
    _ms_text = f"{h[:8]}-{h[8:]}-"
    # uniqueness, not secrecy: ids are not credentials
    _tail_text = "-" + (_VARIANT | _random_bits(62)).to_bytes(8, "big").hex("-", 6)


def new_event_id(now_ns: int | None = None) -> str:
    """A UUIDv7 string: time-ordered, so ids sort by creation time within a process.

    Unix milliseconds, then a counter that orders the ids of one millisecond, then 62 random bits
    that keep ids of different processes apart; those are drawn once per millisecond, since within
    one the counter already does. So an id is three strings joined: formatting a 128-bit integer
    per id cost about 5 µs of gateway CPU under load, and a tool call makes five ids.
    """
    global _counter
    ms = (now_ns if now_ns is not None else time.time_ns()) // 1_000_000
    if ms > _last_ms:
        _counter = 0
        _set_ms(ms)
    else:
        # Same millisecond (or clock stepped back): keep ids strictly increasing.
        _counter += 1
        if _counter > 0xFFF:
            _counter = 0
            _set_ms(_last_ms + 1)
    return _ms_text + _COUNTER_TEXT[_counter] + _tail_text
