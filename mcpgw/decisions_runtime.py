"""What the ingress needs for decisions and the admin API, built from the config.

- The decision log: where `mcp.decisions` lives for the configured event log. Embedded: the same
  local log as the events (one writing process per directory, so one fixed reader group, never
  committed, rewound at every start). Kafka: a producer of its own (the event sink's spool is for
  `mcp.events` only) and a reader outside any group, so every replica reads every decision.
  `event_log: memory`: none (decisions then apply in memory only).
- The audit query port: the store the audit consumer opened in this process (`mcpgw up`), with the
  store's errors translated for the ingress, which must not import `consumers`.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from dataclasses import dataclass

from consumers.store.base import AuditStore, QueryResult, StoreQueryError, StoreReadOnly, StoreUnavailable
from eventlog.base import TOPIC_DECISIONS, Record, TopicPartition
from eventlog.embedded.consumer import EmbeddedConsumer
from eventlog.embedded.log import EmbeddedLog
from eventlog.kafka import KafkaProducer, KafkaTopicReader
from ingress.audit_query import AuditQuery, AuditQueryRefused, AuditQueryUnavailable
from ingress.decision_feed import DecisionLog
from mcpgw.audit_runtime import RunningConsumer
from mcpgw.config import GatewayConfig

DECISIONS_READER_GROUP = "ingress-decisions"


class EmbeddedTopicReader:
    """A `DecisionReader` over the embedded log: its own group's member, rewound to the beginning."""

    def __init__(self, log: EmbeddedLog, topic: str = TOPIC_DECISIONS, group: str = DECISIONS_READER_GROUP) -> None:
        self._log = log
        self._topic = topic
        self._consumer: EmbeddedConsumer = log.consumer(group, [topic])

    async def start(self) -> None:
        await self._consumer.start()
        await self._consumer.seek_to_beginning()

    async def end_offsets(self) -> dict[TopicPartition, int]:
        return await self._log.end_offsets(self._topic)

    async def position(self, partition: TopicPartition) -> int:
        return self._consumer.position(partition)

    async def poll(self, max_records: int, timeout_s: float) -> list[Record]:
        return await self._consumer.poll(max_records, timeout_s)

    async def close(self) -> None:
        await self._consumer.close()


@dataclass(frozen=True)
class GatewayPorts:
    decision_log: DecisionLog | None
    audit_query: AuditQuery | None


def store_query(store: AuditStore) -> AuditQuery:
    async def query(sql: str) -> QueryResult:
        try:
            return await store.query(sql)
        except (StoreReadOnly, StoreQueryError) as exc:
            raise AuditQueryRefused(str(exc)) from exc
        except StoreUnavailable as exc:
            raise AuditQueryUnavailable(str(exc)) from exc

    return query


async def open_decision_log(config: GatewayConfig, local_log: EmbeddedLog | None,
                            stack: AsyncExitStack) -> DecisionLog | None:
    """The decision log for the configured event log; `stack` closes what it opened."""
    kafka = config.kafka
    if kafka is not None:
        producer = KafkaProducer(kafka)  # connects on first use, so a broker outage at start is not fatal here
        stack.push_async_callback(producer.close)
        return DecisionLog(producer, KafkaTopicReader(kafka, [TOPIC_DECISIONS]))
    if local_log is not None:
        return DecisionLog(local_log.producer(), EmbeddedTopicReader(local_log))
    return None


async def open_gateway_ports(config: GatewayConfig, local_log: EmbeddedLog | None, audit: RunningConsumer | None,
                             stack: AsyncExitStack) -> GatewayPorts:
    decision_log = await open_decision_log(config, local_log, stack)
    return GatewayPorts(decision_log, store_query(audit.store) if audit is not None else None)
