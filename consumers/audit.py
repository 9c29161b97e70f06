"""The audit consumer: `mcp.events` → the append-only audit store.

    Decode(EventCodec) ─▶ Map(route) ─▶ Batch ─▶ ReplayGuard ─▶ Insert(audit tables) ─▶ Commit
         │ CodecError
         ▼
    DeadLetter → mcp.events.dlq (JSON envelope: reason, original topic/partition/offset, key, value)

Every event becomes one `audit.events` row; a checkpoint event also becomes an `audit.checkpoints`
row (decision events will add `audit.decisions` rows the same way). A batch's rows are inserted
table by table with the batch's token `topic:partition:first-last`, the `audit.events` rows last:
`ReplayGuard` takes an event's row in `audit.events` as proof that all its rows were written.

Runs on either log. Embedded (`mcpgw up`): `AuditConsumer(log.consumer("audit", [TOPIC_EVENTS]),
store, log.producer(), settings)`. Kafka (`mcpgw consume audit`): the revoke callback must reach
the chain, so make the `Rebalance` first:

    rebalance = Rebalance()
    consumer = KafkaConsumer(kafka_settings, "audit", [TOPIC_EVENTS], on_revoke=rebalance)
    audit = AuditConsumer(consumer, store, KafkaProducer(kafka_settings), settings, rebalance=rebalance)
    await audit.run(stop)

The caller opens and closes the store, the consumer and the producer; `run` starts the consumer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from consumers.pipeline import (
    Batch,
    Commit,
    ConsumerMetrics,
    DeadLetter,
    Decode,
    Insert,
    InvalidRatio,
    Map,
    Rebalance,
    ReplayGuard,
    RetryPolicy,
    run_consumer,
)
from consumers.store import rows as store_rows
from consumers.store.base import CHECKPOINTS_TABLE, EVENTS_TABLE, AuditStore
from eventlog.base import TOPIC_DEAD_LETTER, Consumer, Producer
from schemas.codec import CodecError, EventCodec
from schemas.events import EventType, GatewayEvent

Row = Mapping[str, Any]
RowOf = Callable[[GatewayEvent], Row]

# The events of a batch that the store already holds (a replay's ReplayGuard check). `ts` bounds
# the scan to the batch's time range, which the table's sort key prunes by; event ids are
# parameters, never spliced into the SQL (they come from the log, so from outside).
WRITTEN_SQL = (
    f"SELECT event_id FROM {EVENTS_TABLE} "
    "WHERE ts >= fromUnixTimestamp64Micro({lo:Int64}, 'UTC') AND ts <= fromUnixTimestamp64Micro({hi:Int64}, 'UTC') "
    "AND event_id IN {ids:Array(String)}"
)


@dataclass(frozen=True, slots=True)
class AuditSettings:
    max_rows: int = 1000  # records per batch (one insert per table)
    max_wait_s: float = 1.0  # how stale the store may be behind the log when traffic is light
    max_records_per_poll: int = 500
    poll_timeout_s: float = 0.1
    max_invalid_ratio: float = 0.5
    invalid_min_messages: int = 100
    invalid_window: int = 1000
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    shutdown_timeout_s: float = 30.0
    dead_letter_topic: str = TOPIC_DEAD_LETTER


@dataclass(frozen=True, slots=True)
class AuditRows:
    """How an event becomes rows: `event` for audit.events; `checkpoint` for audit.checkpoints, None
    when a checkpoint event's detail carries no readable head (it is still an audit.events row)."""

    event: RowOf
    checkpoint: Callable[[GatewayEvent], Row | None]


@dataclass(frozen=True, slots=True)
class Routed:
    """One event's rows, by table, and what ReplayGuard needs to look it up."""

    event_id: str
    ts_us: int
    rows: tuple[tuple[str, Row], ...]


def router(projection: AuditRows) -> Callable[[GatewayEvent], Routed]:
    def route(event: GatewayEvent) -> Routed:
        out: tuple[tuple[str, Row], ...] = ((EVENTS_TABLE, projection.event(event)),)
        if event.event_type is EventType.CHECKPOINT_RECORDED:
            head = projection.checkpoint(event)
            if head is not None:
                out = ((CHECKPOINTS_TABLE, head), *out)
        return Routed(event.event_id, event.ts_us, out)

    return route


class AuditWriter:
    """Inserts routed rows into the audit tables; finds the events a replay already wrote."""

    def __init__(self, store: AuditStore) -> None:
        self._store = store

    async def write(self, values: Sequence[Routed], dedup_token: str) -> None:
        by_table: dict[str, list[Row]] = {}
        for value in values:
            for table, row in value.rows:
                by_table.setdefault(table, []).append(row)
        # audit.events last (see the module docstring); the same token per table is fine, since
        # ClickHouse keeps deduplication tokens per table.
        for table in sorted(by_table, key=lambda t: t == EVENTS_TABLE):
            await self._store.insert(table, by_table[table], dedup_token)

    async def unwritten(self, values: Sequence[Routed]) -> Sequence[Routed]:
        keyed = [v for v in values if v.event_id]
        if not keyed:
            return values
        result = await self._store.query(
            WRITTEN_SQL,
            {
                "lo": min(v.ts_us for v in keyed),
                "hi": max(v.ts_us for v in keyed),
                "ids": [v.event_id for v in keyed],
            },
        )
        written = {str(row[0]) for row in result.rows}
        return [v for v in values if v.event_id not in written]


class AuditConsumer:
    """Consumes `mcp.events` into the audit store; see the module docstring for wiring."""

    def __init__(
        self,
        consumer: Consumer,
        store: AuditStore,
        dlq_producer: Producer,
        settings: AuditSettings | None = None,
        *,
        rows: AuditRows | None = None,
        rebalance: Rebalance | None = None,
        codec: EventCodec | None = None,
    ) -> None:
        self.settings = s = settings or AuditSettings()
        self.metrics = ConsumerMetrics()
        self.rebalance = rebalance or Rebalance()
        self._consumer = consumer
        writer = AuditWriter(store)
        commit = Commit(consumer, self.metrics)
        insert = Insert(writer.write, commit, self.metrics, retry=s.retry)
        guard = ReplayGuard(writer.unwritten, insert, self.metrics, retry=s.retry)
        batch: Batch[Routed] = Batch(guard, max_rows=s.max_rows, max_wait_s=s.max_wait_s)
        route = Map(router(rows or default_rows()), batch)
        self.strategy = Decode(
            (codec or EventCodec()).decode,
            route,
            DeadLetter(dlq_producer, self.metrics, source="audit", topic=s.dead_letter_topic, retry=s.retry),
            InvalidRatio(s.max_invalid_ratio, s.invalid_min_messages, s.invalid_window),
            self.metrics,
            invalid=(CodecError,),
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set (then flush and commit), or until an error stops it.

        Raises `TooManyInvalid` when too many recent messages were undecodable, a non-retryable
        store error when the store refuses the rows, `LogUnavailable` when a commit fails.
        """
        s = self.settings
        await run_consumer(
            self._consumer,
            self.strategy,
            stop,
            rebalance=self.rebalance,
            max_records=s.max_records_per_poll,
            poll_timeout_s=s.poll_timeout_s,
            shutdown_timeout_s=s.shutdown_timeout_s,
            poll_retry=s.retry,
        )


def default_rows() -> AuditRows:
    return AuditRows(event=store_rows.event_row, checkpoint=store_rows.checkpoint_row)
