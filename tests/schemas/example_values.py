"""The values behind `schemas/examples/`: one event of every type (a valid hash chain, numbered and
signed as ingress/chain.py does), risk scores and decisions. Regenerate the files after a schema change with

    python -m tests.schemas.example_values

`test_examples.py` fails when the files and these values disagree.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from fastavro import json_writer

from schemas import catalog
from schemas.codec import EVENT_RENAMES, RecordFields, event_hash
from schemas.decisions import Decision, DecisionAction, DecisionScope, DecisionSource
from schemas.events import AuditMode, Direction, EventType, GatewayEvent, Kind, Outcome
from schemas.payload import PayloadPolicy, prepare_payload
from schemas.risk import RiskScore

EXAMPLES_DIR = Path(catalog.__file__).with_name("examples")
T0 = 1_795_262_400_000_000  # 2026-11-21T12:00:00Z, µs
STREAM = "0f5e7d2a9c4b4e21a3d8b6c1e0f9a7b5"
INSTANCE = "gw-1:5f3a9c2e"
SESSION = "3c8e1f0b6a7d4c29b5e2a1f8d7c6b4a3"
REFUSED = (13, 14)
GENESIS = "0" * 64  # prev_hash of a stream's first event (ingress/chain.py)
CHECKPOINT_KEY = b"example-checkpoint-key"
POLICY = PayloadPolicy(json_paths=("params.arguments.card_number",))
# Small enough that one example shows truncation; the production default is 1 MiB.
SMALL_POLICY = PayloadPolicy(max_bytes=512, prefix_bytes=128)


def uuid7(ms: int, tail: int) -> str:
    value = (ms << 80) | (0x7 << 76) | (0b10 << 62) | tail
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _rpc(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


CALL = _rpc({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {
    "name": "payments__charge",
    "arguments": {"amount": 1200, "currency": "EUR", "card_number": "4111111111111111", "api_key": "pk-9f8e7d6c"},
    "_meta": {"progressToken": 7}}})
UPSTREAM_CALL = CALL.replace(b'"payments__charge"', b'"charge"')
RESULT = _rpc({"jsonrpc": "2.0", "id": 7, "result": {"content": [{"type": "text", "text": "charged 12.00 EUR"}]}})
TOOLS = _rpc({"jsonrpc": "2.0", "id": 2, "result": {"tools": [
    {"name": f"tool_{i}", "description": "x" * 40, "inputSchema": {"type": "object", "properties": {
        "password": {"type": "string"}}}} for i in range(8)]}})


def _event(seq: int, event_type: EventType, kind: Kind, direction: Direction, raw: bytes = b"",
           policy: PayloadPolicy = POLICY, **fields: Any) -> GatewayEvent:
    event = GatewayEvent(
        event_type, kind, direction, event_id=uuid7(T0 // 1000 + seq, 0x1234_5678_9ABC + seq), ts_us=T0 + seq * 1_250,
        stream_id=STREAM, seq=seq, gateway_instance=INSTANCE, protocol_era="legacy", protocol_version="2025-11-25",
        transport="streamable_http", session_id=SESSION, tenant="acme", principal="billing-agent",
        on_behalf_of="alice@acme.example", client_addr="10.0.4.17", trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
        span_id=f"{0x00f067aa0ba902b7 + seq:016x}")
    if raw:
        prepare_payload(raw, policy).apply_to(event)
    return replace(event, **fields)


def gateway_events() -> list[GatewayEvent]:
    lifecycle = (Kind.LIFECYCLE, Direction.INTERNAL)
    internal: dict[str, Any] = {"session_id": "", "principal": "gateway", "transport": "internal", "on_behalf_of": "",
                                "client_addr": "", "trace_id": "", "span_id": ""}
    call: dict[str, Any] = {"jsonrpc_id": "7", "method": "tools/call", "server": "payments", "tool": "charge"}
    events = [
        _event(1, EventType.SESSION_OPENED, *lifecycle, method="initialize", detail="client claude-code/2.1"),
        _event(2, EventType.AGENT_MESSAGE_RECEIVED, Kind.REQUEST, Direction.AGENT_TO_GATEWAY, CALL, **call),
        _event(3, EventType.UPSTREAM_MESSAGE_SENT, Kind.REQUEST, Direction.GATEWAY_TO_UPSTREAM, UPSTREAM_CALL,
               **{**call, "jsonrpc_id": "u-19", "transport": "stdio"}),
        _event(4, EventType.UPSTREAM_MESSAGE_RECEIVED, Kind.RESPONSE, Direction.UPSTREAM_TO_GATEWAY, RESULT,
               **{**call, "jsonrpc_id": "u-19", "transport": "stdio"}, latency_us=41_870),
        _event(5, EventType.AGENT_MESSAGE_SENT, Kind.RESPONSE, Direction.GATEWAY_TO_AGENT, RESULT, **call,
               latency_us=43_112),
        _event(6, EventType.MESSAGE_REFUSED, Kind.ERROR, Direction.AGENT_TO_GATEWAY,
               _rpc({"jsonrpc": "2.0", "id": "c-1", "method": "tools/call", "params": {"name": "fs__delete"}}),
               outcome=Outcome.BLOCKED, protocol_era="modern", protocol_version="2026-07-28", session_id="",
               correlation_id="c-1", jsonrpc_id="c-1", method="tools/call", server="fs", tool="delete",
               error_code=-32001, error_message="blocked: tool fs__delete for tenant acme", audit_mode=AuditMode.ASYNC),
        _event(7, EventType.UPSTREAM_CONNECTED, *lifecycle, server="notes", transport="streamable_http",
               detail="http://127.0.0.1:9000/mcp"),
        _event(8, EventType.TOOL_DEFINITIONS_CHANGED, *lifecycle, TOOLS, policy=SMALL_POLICY, server="notes",
               method="tools/list", detail="8 tools; 1 added: tool_7"),
        _event(9, EventType.UPSTREAM_LOST, *lifecycle, outcome=Outcome.UPSTREAM_ERROR, server="notes",
               error_message="connection reset by peer"),
        _event(10, EventType.DECISION_APPLIED, *lifecycle, _rpc({"decision_id": decisions()[0].decision_id}),
               detail="block principal billing-agent until 2026-11-21T13:00:00Z"),
        _event(11, EventType.SESSION_CLOSED, *lifecycle, method="DELETE", detail="closed by the agent"),
        _event(12, EventType.CHECKPOINT_RECORDED, *lifecycle, **internal),
        # 13 and 14 were numbered, then the log refused their batch: the calls failed closed, and the
        # next batch opens with the gap event. They are hashed into the chain but not in the examples.
        _event(13, EventType.AGENT_MESSAGE_RECEIVED, Kind.REQUEST, Direction.AGENT_TO_GATEWAY, CALL, **call),
        _event(14, EventType.AGENT_MESSAGE_SENT, Kind.ERROR, Direction.GATEWAY_TO_AGENT, **call),
        _event(15, EventType.AUDIT_GAP_RECORDED, *lifecycle, outcome=Outcome.REFUSED, **internal,
               detail="seq 13-14 were refused by the event log; the actions they describe were not taken"),
    ]
    prev = GENESIS
    for event in events:
        if event.event_type is EventType.CHECKPOINT_RECORDED:  # signs the head before it, as ingress/chain.py
            head = f"{STREAM}:{event.seq - 1}:{prev}".encode()
            sig = hmac.new(CHECKPOINT_KEY, head, hashlib.sha256).hexdigest()
            event.detail = f"head seq={event.seq - 1} hash={prev} sig={sig}"
        event.prev_hash = prev
        event.hash = prev = event_hash(event)
    return [e for e in events if e.seq not in REFUSED]


def risk_scores() -> list[RiskScore]:
    return [
        RiskScore(ts=T0 + 20_000, score_id=uuid7(T0 // 1000 + 20, 0xA1), tenant="acme", principal="billing-agent",
                  session_id=SESSION, tool="payments__charge", server="payments", score=87,
                  reasons=["new_tool_for_principal", "secret_in_arguments", "burst_rate"],
                  signals={"new_tool_for_principal": 30.0, "secret_in_arguments": 35.0, "burst_rate": 22.0},
                  window_start=T0 - 300_000_000, window_end=T0 + 20_000, event_id=uuid7(T0 // 1000 + 2, 0x2),
                  scorer="rules+iforest/0.3.1"),
        RiskScore(ts=T0 + 21_000, score_id=uuid7(T0 // 1000 + 21, 0xA2), tenant="acme", principal="docs-agent",
                  score=3, scorer="rules+iforest/0.3.1"),
    ]


def decisions() -> list[Decision]:
    return [
        Decision(ts=T0 + 22_000, decision_id=uuid7(T0 // 1000 + 22, 0xD1), action=DecisionAction.BLOCK,
                 scope=DecisionScope.PRINCIPAL, subject="billing-agent", tenant="acme",
                 reason="risk score 87 over threshold 80", source=DecisionSource.RISK_ENGINE,
                 actor="rule:score_over_threshold", expires_at=T0 + 3_600_000_000, risk_score=87,
                 evidence_event_ids=[uuid7(T0 // 1000 + 2, 0x2)]),
        Decision(ts=T0 + 900_000_000, decision_id=uuid7(T0 // 1000 + 900_000, 0xD2), action=DecisionAction.UNBLOCK,
                 scope=DecisionScope.PRINCIPAL, subject="billing-agent", tenant="acme",
                 reason="false positive: scheduled batch run", source=DecisionSource.OPERATOR, actor="soc:bob"),
        Decision(ts=T0 + 23_000, decision_id=uuid7(T0 // 1000 + 23, 0xD3), action=DecisionAction.BLOCK,
                 scope=DecisionScope.TOOL, subject="fs__delete", reason="Grafana alert: mass deletion",
                 source=DecisionSource.GRAFANA_ALERT, actor="alert:fs-mass-delete"),
    ]


def _numbered(items: list[str]) -> list[str]:
    return [f"{i + 1:02d}-{item}" for i, item in enumerate(items)]


def example_files() -> dict[str, str]:
    """File name → Avro JSON text (pretty-printed; one record per file)."""
    out: dict[str, str] = {}
    groups: list[tuple[str, list[str], list[Any], dict[str, str]]] = [
        (catalog.GATEWAY_EVENT, [f"{e.seq:02d}-{e.event_type.value}" for e in gateway_events()],
         list(gateway_events()), dict(EVENT_RENAMES)),
        (catalog.RISK_SCORE, _numbered(["high", "low"]), list(risk_scores()), {}),
        (catalog.DECISION, _numbered(["risk-block", "operator-unblock", "alert-tool-block"]), list(decisions()), {}),
    ]
    for fullname, labels, values, renames in groups:
        fields: RecordFields[Any] = RecordFields(type(values[0]), renames)
        for label, value in zip(labels, values, strict=True):
            buf = io.StringIO()
            json_writer(buf, catalog.schema(fullname), [fields.to_record(value)])
            text = json.dumps(json.loads(buf.getvalue()), indent=2, ensure_ascii=False)
            out[f"{fullname}.{label}.json"] = text + "\n"
    return out


def main() -> None:
    files = example_files()
    for old in EXAMPLES_DIR.glob("mcpgw.*.json"):
        old.unlink()
    for name, text in files.items():
        (EXAMPLES_DIR / name).write_text(text)
        print(EXAMPLES_DIR / name)


if __name__ == "__main__":
    main()
