"""Hand-built audit chains for the compliance tests, numbered, hashed and signed the way ingress does
(ingress/chain.py, ingress/log_sink.py) without importing ingress: hashes come from `schemas.codec.event_hash`
and checkpoint signatures from a local HMAC, so the tests check the verifier against the definition
rather than against its own helpers."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import replace
from typing import Any

from schemas.codec import event_hash
from schemas.events import Direction, EventType, GatewayEvent, Kind, Outcome

KEY = b"compliance-test-checkpoint-key"
GENESIS = "0" * 64
T0 = 1_795_262_400_000_000  # 2026-11-21T12:00:00Z, µs


def sign(key: bytes, stream_id: str, seq: int, head_hash: str) -> str:
    return hmac.new(key, f"{stream_id}:{seq}:{head_hash}".encode(), hashlib.sha256).hexdigest()


def rehash(event: GatewayEvent) -> GatewayEvent:
    event.hash = ""
    event.hash = event_hash(event)
    return event


class ChainBuilder:
    """One stream. `events` holds what reached the log; `refuse()` numbers events that never did."""

    def __init__(self, stream_id: str = "stream-a", key: bytes = KEY, tenant: str = "acme") -> None:
        self.stream_id = stream_id
        self.key = key
        self.tenant = tenant
        self.seq = 0
        self.head = GENESIS
        self.events: list[GatewayEvent] = []
        self.hashes: dict[int, str] = {}

    def _stamp(self, event: GatewayEvent, keep: bool = True) -> GatewayEvent:
        self.seq += 1
        event.stream_id, event.seq, event.prev_hash = self.stream_id, self.seq, self.head
        event.event_id = f"00000000-0000-7000-8000-{self.seq:012x}"
        event.ts_us = T0 + self.seq * 1_000
        rehash(event)
        self.head = self.hashes[self.seq] = event.hash
        if keep:
            self.events.append(event)
        return event

    def message(self, payload: bytes | None = None, *, keep: bool = True, **fields: Any) -> GatewayEvent:
        body = payload if payload is not None else b'{"jsonrpc":"2.0","id":%d,"method":"tools/call"}' % (self.seq + 1)
        event = GatewayEvent(
            EventType.AGENT_MESSAGE_RECEIVED, Kind.REQUEST, Direction.AGENT_TO_GATEWAY, tenant=self.tenant,
            principal=fields.pop("principal", "billing-agent"), session_id="sess-1", method="tools/call",
            tool="payments__charge", jsonrpc_id=str(self.seq + 1), payload=body,
            payload_sha256=hashlib.sha256(body).hexdigest(), payload_size=len(body), gateway_instance="gw-1",
        )
        return self._stamp(replace(event, **fields), keep)

    def messages(self, n: int, **fields: Any) -> list[GatewayEvent]:
        return [self.message(**fields) for _ in range(n)]

    def truncated(self, full: bytes, prefix: int) -> GatewayEvent:
        return self.message(full[:prefix], payload_sha256=hashlib.sha256(full).hexdigest(), payload_size=len(full),
                            payload_truncated=True)

    def checkpoint(self, *, head_seq: int | None = None, key: bytes | None = None, signature: str | None = None,
                   detail: str | None = None) -> GatewayEvent:
        """Signs the current head (or `head_seq`'s), as the gateway does before stamping the checkpoint."""
        seq = self.seq if head_seq is None else head_seq
        head = self.hashes.get(seq, GENESIS)
        sig = signature if signature is not None else sign(key or self.key, self.stream_id, seq, head)
        event = GatewayEvent(EventType.CHECKPOINT_RECORDED, Kind.LIFECYCLE, Direction.INTERNAL, principal="gateway",
                             tenant=self.tenant, transport="internal",
                             detail=detail if detail is not None else f"head seq={seq} hash={head} sig={sig}")
        return self._stamp(event)

    def refuse(self, n: int) -> tuple[int, int]:
        """Numbers `n` events the log then refused: hashed into the chain, absent from the store."""
        first = self.seq + 1
        for _ in range(n):
            self.message(keep=False)
        return first, self.seq

    def gap_record(self, *ranges: tuple[int, int]) -> GatewayEvent:
        listed = ", ".join(f"{a}-{b}" for a, b in ranges)
        event = GatewayEvent(
            EventType.AUDIT_GAP_RECORDED, Kind.LIFECYCLE, Direction.INTERNAL, outcome=Outcome.REFUSED,
            principal="gateway", tenant=self.tenant, transport="internal",
            detail=f"seq {listed} were refused by the event log; the actions they describe were not taken")
        return self._stamp(event)

    def at(self, seq: int) -> GatewayEvent:
        return next(e for e in self.events if e.seq == seq)

    def without(self, *seqs: int) -> list[GatewayEvent]:
        return [e for e in self.events if e.seq not in seqs]
