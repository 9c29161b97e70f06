"""Helpers for the consumer tests: events, filling a real embedded log, an in-memory store fake.

`MemoryStore` fakes the `AuditStore` interface for tests of the chain's own behaviour (batching,
commits, dead letters, backpressure); what depends on ClickHouse itself (tokens, SQL) is also run
against chDB when the store's chDB backend is importable (see conftest.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from consumers.audit import WRITTEN_SQL, AuditConsumer, AuditRows
from consumers.store.base import EVENTS_TABLE, QueryResult, StoreQueryError
from eventlog.base import TOPIC_EVENTS, Consumer, Producer, TopicPartition
from schemas.codec import EventCodec
from schemas.events import Direction, EventType, GatewayEvent, Kind, new_event_id

T0_US = 1_795_262_400_000_000


def make_events(n: int, *, sessions: int = 4, start: int = 0, checkpoint_every: int = 0) -> list[GatewayEvent]:
    out = []
    for i in range(start, start + n):
        checkpoint = checkpoint_every and i % checkpoint_every == checkpoint_every - 1
        out.append(
            GatewayEvent(
                EventType.CHECKPOINT_RECORDED if checkpoint else EventType.AGENT_MESSAGE_RECEIVED,
                Kind.LIFECYCLE if checkpoint else Kind.REQUEST,
                Direction.INTERNAL if checkpoint else Direction.AGENT_TO_GATEWAY,
                event_id=new_event_id(),
                ts_us=T0_US + i * 1000,
                stream_id="stream-1",
                seq=i,
                session_id=f"session-{i % sessions}",
                tenant="acme",
                principal="agent",
                method="tools/call",
                tool="time__now",
                jsonrpc_id=str(i),
                payload=b'{"jsonrpc":"2.0","id":%d,"method":"tools/call"}' % i,
                detail=f"head seq={i - 1} hash={'0' * 64} sig=unsigned" if checkpoint else "",
            )
        )
    return out


async def append_events(producer: Producer, events: Sequence[GatewayEvent], codec: EventCodec | None = None) -> None:
    codec = codec or EventCodec()
    await producer.append_batch(TOPIC_EVENTS, [(e.session_id.encode(), codec.encode(e)) for e in events])


def simple_rows() -> AuditRows:
    """Rows for the fake store: what the consumer does with them is under test, not their columns."""

    def event(e: GatewayEvent) -> dict[str, Any]:
        return {"event_id": e.event_id, "ts_us": e.ts_us, "seq": e.seq}

    def checkpoint(e: GatewayEvent) -> dict[str, Any]:
        return {"event_id": e.event_id, "detail": e.detail}

    return AuditRows(event=event, checkpoint=checkpoint)


@dataclasses.dataclass
class Insert:
    table: str
    rows: list[Mapping[str, Any]]
    token: str


class MemoryStore:
    """An `AuditStore` fake: drops an insert whose (table, token) it has seen, as ClickHouse does.

    `failures` are raised by the next inserts, one each; `gate`, when set, makes inserts wait for it.
    """

    def __init__(self) -> None:
        self.inserts: list[Insert] = []
        self.rows: dict[str, list[Mapping[str, Any]]] = {}
        self.failures: list[Exception] = []
        self.gate: asyncio.Event | None = None
        self.attempts = 0
        self._tokens: set[tuple[str, str]] = set()

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def execute_admin(self, sql: str) -> None:
        raise NotImplementedError

    async def insert(self, table: str, rows: Sequence[Mapping[str, Any]], dedup_token: str) -> None:
        self.attempts += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.failures:
            raise self.failures.pop(0)
        self.inserts.append(Insert(table, list(rows), dedup_token))
        if (table, dedup_token) in self._tokens:
            return
        self._tokens.add((table, dedup_token))
        self.rows.setdefault(table, []).extend(rows)

    async def query(self, sql: str, parameters: Mapping[str, Any] | None = None) -> QueryResult:
        if sql != WRITTEN_SQL or parameters is None:
            raise StoreQueryError(f"the fake store only answers the consumer's replay check, not {sql!r}")
        held = {r["event_id"] for r in self.rows.get(EVENTS_TABLE, [])}
        return QueryResult(["event_id"], ["String"], [(i,) for i in parameters["ids"] if i in held])

    def event_ids(self) -> list[str]:
        return [str(r["event_id"]) for r in self.rows.get(EVENTS_TABLE, [])]


async def until(condition: Any, timeout_s: float = 10.0, what: str = "condition") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


async def run_until_committed(
    audit: AuditConsumer, consumer: Consumer, ends: Mapping[TopicPartition, int], timeout_s: float = 20.0
) -> None:
    """Run `audit` until it committed `ends` on every partition, then stop it (flush + commit)."""
    stop = asyncio.Event()
    task = asyncio.create_task(audit.run(stop))
    try:
        await until(
            lambda: task.done() or all(audit.metrics.committed.get(tp, 0) >= end for tp, end in ends.items() if end),
            timeout_s,
            f"commits up to {dict(ends)}",
        )
    finally:
        stop.set()
        await task
    for tp, end in ends.items():
        assert await consumer.committed(tp) == (end or None), tp


def kafka_chdb_config(tmp_path: Path, bootstrap: str, client_id: str, **extra: Any) -> Path:
    """A gateway.yaml in `tmp_path` for `mcpgw consume`/`replay` on Tansu (short timeouts) and a chDB store."""
    config: dict[str, Any] = {
        "auth": "none",
        "data_dir": str(tmp_path / "data"),
        "servers": {},
        "event_log": {"kafka": {
            "bootstrap_servers": bootstrap, "client_id": client_id, "enable_idempotence": False,
            "request_timeout_ms": 5_000,
            "consumer": {"session_timeout_ms": 2_000, "heartbeat_interval_ms": 200, "fetch_max_wait_ms": 100},
        }},
        "audit_store": {"chdb": {"path": str(tmp_path / "store")}},
        **extra,
    }
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    return path
