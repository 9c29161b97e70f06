"""The audit consumer: `mcp.events` → the append-only audit store.

    Decode(EventBodies) ─────────────────┬─▶ Batch ─▶ ReplayGuard ─▶ Insert(audit tables) ─▶ Commit
    Decode(EventCodec) ─▶ Map(route) ────┘   (the Avro path, or the row path: see below)
         │ CodecError
         ▼
    DeadLetter → mcp.events.dlq (JSON envelope: reason, original topic/partition/offset, key, value)

Every event becomes one `audit.events` row; a checkpoint event also becomes an `audit.checkpoints`
row (decision events will add `audit.decisions` rows the same way). A batch's rows are inserted
table by table with the batch's token `topic:partition:first-last`, the `audit.events` rows last:
`ReplayGuard` takes an event's row in `audit.events` as proof that all its rows were written.

Two ways to the `audit.events` rows, the same rows either way (tests/consumers/test_audit_bodies.py):

- Avro bodies (the default projection on a store that reads Avro, i.e. both real backends): the
  first step, `EventBodies`, checks each record's framing and body without decoding it
  (schemas/scan.py) and keeps the body; a batch goes to ClickHouse as one Avro container file and
  ClickHouse decodes it. Every field lands in its same-named column, which is what the default
  projection (`consumers/store/rows.py: event_row`) does too. What the scan does not pass (an older
  schema, another framing, a body not in canonical form, a checkpoint whose head is needed) goes
  through the codec, which decides between a dead letter and a body re-encoded with the current
  schema, so the dead-letter topic gets exactly what the codec refuses.
- Rows (a custom `AuditRows`, or a store without Avro): Decode(codec) ─▶ Map(route) ─▶ rows as dicts.

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
from dataclasses import dataclass
from typing import Any

from consumers.pipeline import (
    Batch,
    Commit,
    ConsumerMetrics,
    Decode,
    Insert,
    Map,
    Rebalance,
    ReplayGuard,
    run_consumer,
)
from consumers.pipeline.settings import ConsumerSettings
from consumers.store import rows as store_rows
from consumers.store.avro_container import AvroContainer
from consumers.store.base import CHECKPOINTS_TABLE, EVENTS_TABLE, AuditStore, AvroInserts
from eventlog.base import Consumer, Producer
from schemas import catalog
from schemas.codec import (
    CONFLUENT_HEADER_SIZE,
    SINGLE_OBJECT_HEADER_SIZE,
    SINGLE_OBJECT_MAGIC,
    CodecError,
    EventCodec,
    MalformedMessageError,
    WireFormat,
)
from schemas.events import EventType, GatewayEvent
from schemas.scan import BodyScanner

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
class AuditSettings(ConsumerSettings):
    # Records per batch (one insert per table). Big, because each insert makes a part that merges
    # rewrite later: 20,000 rows halve the merge work of 10,000 (bench/RESULTS.md); under lighter
    # traffic `max_wait_s` cuts batches first.
    max_rows: int = 20_000
    max_wait_s: float = 1.0  # how stale the store may be behind the log when traffic is light
    max_records_per_poll: int = 2_000
    # Read and check the next batch while ClickHouse inserts the last one (consumers/pipeline/insert.py).
    overlap_writes: bool = True


@dataclass(frozen=True, slots=True)
class AuditRows:
    """How an event becomes rows: `event` for audit.events; `checkpoint` for audit.checkpoints, None
    when a checkpoint event's detail carries no readable head (it is still an audit.events row)."""

    event: RowOf
    checkpoint: Callable[[GatewayEvent], Row | None]


@dataclass(slots=True)
class Routed:
    """One event's rows, by table, and what ReplayGuard needs to look it up.

    `body`, when set, is the event's Avro body (current schema) and stands for its audit.events
    row, which `rows` then does not hold. Not frozen: one is built per event, and a frozen
    dataclass takes three times as long to build.
    """

    event_id: str
    ts_us: int
    rows: tuple[tuple[str, Row], ...]
    body: bytes | None = None


def router(projection: AuditRows) -> Callable[[GatewayEvent], Routed]:
    def route(event: GatewayEvent) -> Routed:
        out: tuple[tuple[str, Row], ...] = ((EVENTS_TABLE, projection.event(event)),)
        if event.event_type is EventType.CHECKPOINT_RECORDED:
            head = projection.checkpoint(event)
            if head is not None:
                out = ((CHECKPOINTS_TABLE, head), *out)
        return Routed(event.event_id, event.ts_us, out)

    return route


_CHECKPOINT = EventType.CHECKPOINT_RECORDED.value


class EventBodies:
    """The first step's function on a store that reads Avro: a log record → `Routed` with its body.

    Raises the codec's `CodecError` for exactly the records the codec cannot decode (dead letters).
    """

    def __init__(self, codec: EventCodec, projection: AuditRows) -> None:
        self._codec = codec
        self._checkpoint = projection.checkpoint
        self._prefix = SINGLE_OBJECT_MAGIC + codec.records.fingerprint
        single = codec.records.wire is WireFormat.SINGLE_OBJECT
        self._encoded_header = SINGLE_OBJECT_HEADER_SIZE if single else CONFLUENT_HEADER_SIZE
        self._scan = BodyScanner(catalog.schema(catalog.GATEWAY_EVENT), ("event_type", "event_id", "ts")).scan

    def __call__(self, data: bytes) -> Routed:
        if data.startswith(self._prefix):
            try:
                event_type, event_id, ts_us = self._scan(data, SINGLE_OBJECT_HEADER_SIZE)
            except MalformedMessageError:
                pass  # the codec decides, and names the reason
            else:
                if event_type != _CHECKPOINT:
                    return Routed(event_id, ts_us, (), data[SINGLE_OBJECT_HEADER_SIZE:])
                return self._routed(self._codec.decode(data), data[SINGLE_OBJECT_HEADER_SIZE:])
        event = self._codec.decode(data)
        # Written with an older schema, framed otherwise, or not in the canonical form ClickHouse
        # insists on: the current schema's encoding of the same values.
        return self._routed(event, self._codec.encode(event)[self._encoded_header :])

    def _routed(self, event: GatewayEvent, body: bytes) -> Routed:
        head = self._checkpoint(event) if event.event_type is EventType.CHECKPOINT_RECORDED else None
        return Routed(event.event_id, event.ts_us, () if head is None else ((CHECKPOINTS_TABLE, head),), body)


class AuditWriter:
    """Inserts routed rows into the audit tables; finds the events a replay already wrote."""

    def __init__(self, store: AuditStore) -> None:
        self._store = store
        self._container: AvroContainer | None = None

    async def write(self, values: Sequence[Routed], dedup_token: str) -> None:
        by_table: dict[str, list[Row]] = {}
        bodies = [value.body for value in values if value.body is not None]
        for value in values:
            for table, row in value.rows:
                by_table.setdefault(table, []).append(row)
        if bodies and EVENTS_TABLE in by_table:
            # Two inserts into one table under one token: ClickHouse would drop the second.
            raise ValueError("a batch holds audit.events rows both as bodies and as rows")
        # audit.events last (see the module docstring); the same token per table is fine, since
        # ClickHouse keeps deduplication tokens per table.
        for table in sorted(by_table, key=lambda t: t == EVENTS_TABLE):
            await self._store.insert(table, by_table[table], dedup_token)
        if bodies:
            await self._insert_bodies(bodies, dedup_token)

    async def _insert_bodies(self, bodies: list[bytes], dedup_token: str) -> None:
        if not isinstance(self._store, AvroInserts):
            raise TypeError(f"{type(self._store).__name__} cannot insert Avro")
        if self._container is None:
            self._container = AvroContainer(catalog.schema(catalog.GATEWAY_EVENT))
        await self._store.insert_avro(EVENTS_TABLE, store_rows.EVENT_COLUMNS, self._container.build(bodies),
                                      dedup_token)

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
        insert = Insert(writer.write, commit, self.metrics, retry=s.retry, overlap=s.overlap_writes)
        guard = ReplayGuard(writer.unwritten, insert, self.metrics, retry=s.retry)
        batch: Batch[Routed] = Batch(guard, max_rows=s.max_rows, max_wait_s=s.max_wait_s)
        codec = codec or EventCodec()
        projection = rows or default_rows()
        # The Avro path only for the default projection: it is the one ClickHouse's own mapping of
        # fields to same-named columns reproduces.
        self.reads_bodies = rows is None and isinstance(store, AvroInserts)
        dead_letter = s.dead_letter(dlq_producer, self.metrics, "audit")
        invalid_ratio = s.invalid_ratio()
        self.strategy: Decode[Any]
        if self.reads_bodies:
            self.strategy = Decode(
                EventBodies(codec, projection), batch, dead_letter, invalid_ratio, self.metrics, invalid=(CodecError,)
            )
        else:
            self.strategy = Decode(
                codec.decode, Map(router(projection), batch), dead_letter, invalid_ratio, self.metrics,
                invalid=(CodecError,),
            )  # fmt: skip

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
