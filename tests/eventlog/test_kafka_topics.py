"""Topic creation by the Kafka backend, checked with the broker's own DescribeConfigs/Metadata."""

from __future__ import annotations

import asyncio

import pytest

from eventlog.base import TOPIC_DEAD_LETTER, TOPIC_DECISIONS, TOPIC_EVENTS, TOPIC_RISK
from eventlog.kafka import KafkaConsumer, KafkaProducer
from eventlog.kafka_admin import admin_client, ensure_topics, topic_configs
from eventlog.kafka_settings import TopicSettings
from tests.eventlog.kafka_fixture import TansuBroker, kafka_settings, unique

pytestmark = pytest.mark.integration

AUDIT_TOPICS = [TOPIC_EVENTS, TOPIC_RISK, TOPIC_DECISIONS, TOPIC_DEAD_LETTER]


async def partition_counts(settings_bootstrap: str, topics: list[str]) -> dict[str, int]:
    async with admin_client(kafka_settings(settings_bootstrap)) as admin:
        described = await admin.describe_topics(topics)
    return {t["topic"]: len(t["partitions"]) for t in described}


async def test_producer_start_creates_the_audit_topics_with_their_policies(tansu_private: TansuBroker) -> None:
    settings = kafka_settings(tansu_private.bootstrap)
    producer = KafkaProducer(settings)
    await producer.start()
    await producer.close()

    configs = await topic_configs(settings, AUDIT_TOPICS)
    assert configs[TOPIC_DECISIONS]["cleanup.policy"] == "compact"
    assert "retention.ms" not in configs[TOPIC_DECISIONS]
    for topic in (TOPIC_EVENTS, TOPIC_RISK, TOPIC_DEAD_LETTER):
        assert configs[topic]["cleanup.policy"] == "delete"
        assert configs[topic]["retention.ms"] == "-1", "the log is the source of truth: kept until bounded"
    # One broker: replication 1, so min.insync.replicas must be 1 or acks=all could never succeed.
    assert {c["min.insync.replicas"] for c in configs.values()} == {"1"}
    assert await partition_counts(tansu_private.bootstrap, AUDIT_TOPICS) == {
        TOPIC_EVENTS: 6, TOPIC_RISK: 3, TOPIC_DECISIONS: 1, TOPIC_DEAD_LETTER: 1,
    }  # fmt: skip


async def test_existing_topics_are_left_alone_and_concurrent_creators_agree(tansu_private: TansuBroker) -> None:
    settings = kafka_settings(tansu_private.bootstrap)
    topic = unique("shared")
    first = settings.model_copy(update={"topics": {topic: TopicSettings(partitions=2)}})
    created = await asyncio.gather(*(ensure_topics(first, [topic]) for _ in range(4)))
    assert [topic] in created, "one of the concurrent creators created it"
    # A later config asking for more partitions must not repartition: keys would change partition.
    second = settings.model_copy(update={"topics": {topic: TopicSettings(partitions=8)}})
    assert await ensure_topics(second, [topic]) == []
    assert await partition_counts(tansu_private.bootstrap, [topic]) == {topic: 2}
    producer = KafkaProducer(settings)
    await producer.start()  # all audit topics again: created or already there, no error either way
    await producer.start()
    await producer.close()


async def test_a_consumer_creates_the_topics_it_subscribes_to(kafka_bootstrap: str) -> None:
    topic = unique("consumer-first")
    settings = kafka_settings(kafka_bootstrap)
    consumer = KafkaConsumer(settings, unique("g"), [topic])
    await consumer.start()
    assert {tp.topic for tp in consumer.assignment()} == {topic}, "assigned without waiting for a producer"
    await consumer.close()


async def test_create_topics_false_creates_nothing(tansu_private: TansuBroker) -> None:
    settings = kafka_settings(tansu_private.bootstrap, create_topics=False)
    producer = KafkaProducer(settings)
    await producer.start()
    await producer.close()
    # Only checked right after start: Tansu auto-creates a topic as soon as a client asks for its
    # metadata (so would Apache Kafka with auto.create.topics.enable=true), with broker defaults.
    async with admin_client(settings) as admin:
        assert set(AUDIT_TOPICS).isdisjoint(await admin.list_topics())
