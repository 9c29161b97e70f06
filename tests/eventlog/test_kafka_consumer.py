"""KafkaConsumer group behaviour the embedded log cannot have: several members and rebalances."""

from __future__ import annotations

import asyncio
import logging

import pytest

from eventlog.base import LogUnavailable, TopicPartition
from eventlog.kafka import KafkaConsumer, KafkaProducer
from eventlog.kafka_admin import ensure_topics
from eventlog.kafka_settings import KafkaSettings, TopicSettings
from tests.eventlog.backends import next_offsets, read_n
from tests.eventlog.kafka_fixture import kafka_settings, unique

pytestmark = pytest.mark.integration

PARTITIONS = 4


async def topic_with_records(settings: KafkaSettings, n: int) -> str:
    topic = unique("group")
    await ensure_topics(settings.model_copy(update={"topics": {topic: TopicSettings(partitions=PARTITIONS)}}), [topic])
    producer = KafkaProducer(settings)
    await producer.start()
    await producer.append_batch(topic, [(f"session-{i % 16}".encode(), str(i).encode()) for i in range(n)])
    await producer.close()
    return topic


async def until(condition: object, timeout_s: float = 15.0) -> None:
    assert callable(condition)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_a_rebalance_calls_on_revoke_so_the_member_commits_before_partitions_move(kafka_bootstrap: str) -> None:
    settings = kafka_settings(kafka_bootstrap)
    topic = await topic_with_records(settings, 40)
    group = unique("audit")
    processed: dict[TopicPartition, int] = {}
    revoked: list[set[TopicPartition]] = []

    async def flush_and_commit(partitions: set[TopicPartition]) -> None:
        revoked.append(partitions)
        await first.commit({tp: o for tp, o in processed.items() if tp in partitions})

    first = KafkaConsumer(settings, group, [topic], on_revoke=flush_and_commit)
    await first.start()
    everything = {TopicPartition(topic, p) for p in range(PARTITIONS)}
    assert first.assignment() == everything
    processed.update(next_offsets(await read_n(first, 40)))  # processed, not yet committed

    second = KafkaConsumer(settings, group, [topic])
    await second.start()
    await until(lambda: first.assignment() and second.assignment())
    assert revoked and revoked[0] == everything, "the first member gave up everything it held (eager protocol)"
    assert first.assignment().isdisjoint(second.assignment())
    assert first.assignment() | second.assignment() == everything

    # What on_revoke committed is where the new owner starts: nothing is read twice.
    for tp in second.assignment():
        assert await second.committed(tp) == processed[tp]
    assert await second.poll(100, 0.5) == []

    moved = next(iter(second.assignment()))
    with pytest.raises(LogUnavailable, match="commit by") as refused:
        await first.commit({moved: processed[moved]})  # no longer its partition
    assert refused.value.retryable is False
    await second.close()
    await first.close()


async def test_close_calls_on_revoke_too(kafka_bootstrap: str) -> None:
    settings = kafka_settings(kafka_bootstrap)
    topic = await topic_with_records(settings, 12)
    group = unique("risk")
    revoked: list[set[TopicPartition]] = []
    consumer: KafkaConsumer

    async def commit_all(partitions: set[TopicPartition]) -> None:
        revoked.append(partitions)
        await consumer.commit({tp: o for tp, o in read.items() if tp in partitions})

    consumer = KafkaConsumer(settings, group, [topic], on_revoke=commit_all)
    await consumer.start()
    read = next_offsets(await read_n(consumer, 12))
    await consumer.close()
    assert revoked == [{TopicPartition(topic, p) for p in range(PARTITIONS)}]

    again = KafkaConsumer(settings, group, [topic])
    await again.start()
    assert await again.poll(100, 0.5) == [], "what on_revoke committed at close is not read again"
    await again.close()


async def test_a_failing_on_revoke_is_logged_and_the_rebalance_goes_on(
    kafka_bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = kafka_settings(kafka_bootstrap)
    topic = await topic_with_records(settings, 8)
    group = unique("g")

    async def broken(partitions: set[TopicPartition]) -> None:
        raise RuntimeError("flush failed")

    first = KafkaConsumer(settings, group, [topic], on_revoke=broken)
    await first.start()
    second = KafkaConsumer(settings, group, [topic])
    with caplog.at_level(logging.ERROR, logger="mcpgw.eventlog.kafka"):
        await second.start()
        await until(lambda: first.assignment() and second.assignment())
    assert any("on_revoke failed" in r.getMessage() and "replayed" in r.getMessage() for r in caplog.records)
    # Nothing was committed, so the new owner reads its partitions from the start: replay, not loss.
    assert len(await read_n(second, 1)) == 1
    await second.close()
    await first.close()


async def test_a_consumer_used_before_start_or_after_close_says_so(kafka_bootstrap: str) -> None:
    consumer = KafkaConsumer(kafka_settings(kafka_bootstrap), unique("g"), [unique("t")])
    with pytest.raises(LogUnavailable, match="not started"):
        await consumer.poll(1, 0.1)
    await consumer.start()
    await consumer.close()
    with pytest.raises(LogUnavailable, match="closed"):
        await consumer.poll(1, 0.1)
    assert consumer.assignment() == set()
