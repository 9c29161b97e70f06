"""Projections of the risk topics into the audit store: `mcp.risk` → `audit.risk_scores`,
`mcp.decisions` → `audit.decisions`.

    Decode(codec) ─▶ Map(row) ─▶ Batch ─▶ Insert(unwritten rows, token topic:partition:first-last) ─▶ Commit
         │ CodecError
         ▼
    DeadLetter → mcp.events.dlq

Each projection is its own chain and consumer group (one topic, one codec, one table). A batch is
inserted with its dedup token, and offsets are committed only after the insert returned. Before
inserting, the writer drops the rows whose id (`score_id`, `decision_id`) the table already holds:
a replay whose batches are cut elsewhere than the first run's writes nothing twice, and neither
do the duplicates an at-least-once producer (the risk consumer after a crash) may append.

Wiring, like the audit consumer's: `Projection(RISK_PROJECTION, consumer, store, dlq_producer)`,
on Kafka with the `Rebalance` passed to the consumer as `on_revoke` first. The caller opens and
closes the store, the consumer and the producer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from consumers.pipeline import (
    Batch,
    Commit,
    ConsumerMetrics,
    Decode,
    Insert,
    Map,
    Rebalance,
    run_consumer,
)
from consumers.pipeline.settings import ConsumerSettings
from consumers.store import rows as store_rows
from consumers.store.base import DECISIONS_TABLE, RISK_TABLE, AuditStore
from eventlog.base import TOPIC_DECISIONS, TOPIC_RISK, Consumer, Producer
from schemas.codec import CodecError, DecisionCodec, RiskScoreCodec
from schemas.decisions import Decision
from schemas.risk import RiskScore

T = TypeVar("T")
Row = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ProjectionSettings(ConsumerSettings):
    max_rows: int = 1000
    max_wait_s: float = 0.5  # how stale the table may be behind the topic


@dataclass(frozen=True, slots=True)
class ProjectionSpec(Generic[T]):
    """One topic's projection: how its records decode, become rows, and are told apart."""

    name: str  # the consumer group, and the dead letters' `source`
    topic: str
    table: str
    id_column: str
    decode: Callable[[], Callable[[bytes], T]]  # a fresh codec's decode per chain (codecs hold a buffer)
    row: Callable[[T], Row]


RISK_PROJECTION: ProjectionSpec[RiskScore] = ProjectionSpec(
    "risk-projection", TOPIC_RISK, RISK_TABLE, "score_id", lambda: RiskScoreCodec().decode, store_rows.risk_score_row
)
DECISIONS_PROJECTION: ProjectionSpec[Decision] = ProjectionSpec(
    "decisions-projection", TOPIC_DECISIONS, DECISIONS_TABLE, "decision_id", lambda: DecisionCodec().decode,
    store_rows.decision_row,
)


def written_sql(spec: ProjectionSpec[Any]) -> str:
    # `ts` bounds the scan to the batch's time range (the sort keys end in ts, id); ids are
    # parameters, never spliced into the SQL.
    return (
        f"SELECT {spec.id_column} FROM {spec.table} "
        "WHERE ts >= fromUnixTimestamp64Micro({lo:Int64}, 'UTC') AND ts <= fromUnixTimestamp64Micro({hi:Int64}, 'UTC') "
        f"AND {spec.id_column} IN {{ids:Array(String)}}"
    )


class ProjectionWriter:
    """Inserts a batch's rows that the table does not hold yet (by id), under the batch's token."""

    def __init__(self, spec: ProjectionSpec[Any], store: AuditStore, metrics: ConsumerMetrics) -> None:
        self._spec = spec
        self._store = store
        self._metrics = metrics
        self._sql = written_sql(spec)

    async def write(self, rows: Sequence[Row], dedup_token: str) -> None:
        fresh = await self.unwritten(rows)
        if len(fresh) < len(rows):
            self._metrics.already_written += len(rows) - len(fresh)
        if fresh:
            await self._store.insert(self._spec.table, fresh, dedup_token)

    async def unwritten(self, rows: Sequence[Row]) -> list[Row]:
        column = self._spec.id_column
        unique: dict[str, Row] = {}
        for row in rows:
            unique.setdefault(str(row[column]), row)  # the first of in-batch duplicates
        if not unique:
            return []
        times = [store_rows.micros(row["ts"]) for row in unique.values()]
        result = await self._store.query(self._sql, {"lo": min(times), "hi": max(times), "ids": list(unique)})
        written = {str(r[0]) for r in result.rows}
        return [row for key, row in unique.items() if key not in written]


class Projection(Generic[T]):
    """Consumes one topic of `spec` into its audit table; see the module docstring for wiring."""

    def __init__(
        self,
        spec: ProjectionSpec[T],
        consumer: Consumer,
        store: AuditStore,
        dlq_producer: Producer,
        settings: ProjectionSettings | None = None,
        *,
        rebalance: Rebalance | None = None,
    ) -> None:
        self.spec = spec
        self.settings = s = settings or ProjectionSettings()
        self.metrics = ConsumerMetrics()
        self.rebalance = rebalance or Rebalance()
        self._consumer = consumer
        writer = ProjectionWriter(spec, store, self.metrics)
        commit = Commit(consumer, self.metrics)
        insert = Insert(writer.write, commit, self.metrics, retry=s.retry)
        batch: Batch[Row] = Batch(insert, max_rows=s.max_rows, max_wait_s=s.max_wait_s)
        self.strategy = Decode(
            spec.decode(),
            Map(spec.row, batch),
            s.dead_letter(dlq_producer, self.metrics, spec.name),
            s.invalid_ratio(),
            self.metrics,
            invalid=(CodecError,),
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set (then flush and commit), or until an error stops it."""
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
