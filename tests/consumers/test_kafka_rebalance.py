"""The audit consumer on Kafka (Tansu): a rebalance flushes and commits before partitions are given up."""

from __future__ import annotations

import asyncio

import pytest

from consumers.audit import AuditConsumer, AuditSettings
from consumers.pipeline import Rebalance, RetryPolicy
from eventlog.base import TopicPartition
from eventlog.kafka import KafkaConsumer, KafkaProducer
from eventlog.kafka_admin import ensure_topics
from eventlog.kafka_settings import TopicSettings
from schemas.codec import EventCodec
from tests.consumers.support import MemoryStore, make_events, simple_rows, until
from tests.eventlog.kafka_fixture import kafka_settings, unique

pytestmark = pytest.mark.integration


async def test_a_rebalance_flushes_and_commits_what_the_member_held(kafka_bootstrap: str) -> None:
    topic, dlq, group = unique("audit-events"), unique("audit-dlq"), unique("audit")
    settings = kafka_settings(kafka_bootstrap).model_copy(update={"topics": {topic: TopicSettings(partitions=2)}})
    await ensure_topics(settings, [topic, dlq])
    producer = KafkaProducer(settings)
    events = make_events(200, sessions=8)
    codec = EventCodec()
    await producer.append_batch(topic, [(e.session_id.encode(), codec.encode(e)) for e in events])

    store = MemoryStore()
    rebalance = Rebalance(timeout_s=10)
    first = KafkaConsumer(settings, group, [topic], on_revoke=rebalance)
    # Bounds never reached: everything read stays in open batches until something flushes them.
    audit = AuditConsumer(
        first,
        store,
        producer,
        AuditSettings(max_rows=100_000, max_wait_s=3600, retry=RetryPolicy(0.01, 0.1), dead_letter_topic=dlq),
        rows=simple_rows(),
        rebalance=rebalance,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(audit.run(stop))
    second = KafkaConsumer(settings, group, [topic])
    try:
        await until(lambda: audit.metrics.consumed == 200, 20, "the first member reading everything")
        assert store.event_ids() == []

        await second.start()  # joining makes the group rebalance: the first member revokes
        await until(lambda: len(store.event_ids()) == 200, 20, "the revoke flushing the open batches")
        assert sorted(store.event_ids()) == sorted(e.event_id for e in events)
        for p in range(2):
            tp = TopicPartition(topic, p)
            assert await second.committed(tp) == audit.metrics.committed[tp]
        assert sum(audit.metrics.committed.values()) == 200
        assert rebalance.generation >= 1
    finally:
        stop.set()
        await task
        await second.close()
        await first.close()
        await producer.close()
