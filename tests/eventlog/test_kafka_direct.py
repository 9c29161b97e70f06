"""The direct produce path (eventlog/kafka_direct.py) against a real broker (Tansu).

Without idempotence and with linger_ms 0, `KafkaProducer` writes produce requests itself; these
tests hold it to what aiokafka's accumulator path promised: the same key -> partition mapping, one
batch per partition per request, per-key order under concurrency, splitting of large appends.
"""

from __future__ import annotations

import asyncio
import collections

import pytest
from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]

from eventlog.kafka import KafkaConsumer, KafkaProducer
from eventlog.kafka_settings import TopicSettings
from tests.eventlog.backends import read_n
from tests.eventlog.kafka_fixture import kafka_settings, unique
from tests.eventlog.test_kafka_producer import batches, capture_produce_requests

pytestmark = pytest.mark.integration


async def test_the_direct_path_is_taken_only_without_idempotence_and_linger(kafka_bootstrap: str) -> None:
    direct = KafkaProducer(kafka_settings(kafka_bootstrap))
    lingering = KafkaProducer(kafka_settings(kafka_bootstrap, linger_ms=2))
    for producer in (direct, lingering):
        await producer.start()
        await producer.append(unique("path"), b"k", b"v")
    assert direct._direct is not None
    assert lingering._direct is None, "a linger is the accumulator's job"
    await direct.close()
    await lingering.close()


async def test_keys_land_on_the_partitions_aiokafka_picks(kafka_bootstrap: str) -> None:
    topic = unique("keys")
    settings = kafka_settings(kafka_bootstrap, topics={topic: TopicSettings(partitions=6)})
    producer = KafkaProducer(settings)
    await producer.start()
    keys = [f"session-{i}".encode() for i in range(40)]
    for key in keys:
        await producer.append(topic, key, key)
    reference = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", enable_idempotence=False)
    await reference.start()
    expected = {key: (await reference.send_and_wait(topic, key, key=key)).partition for key in keys}
    await reference.stop()
    consumer = KafkaConsumer(settings, unique("g"), [topic])
    await consumer.start()
    records = await read_n(consumer, 2 * len(keys))
    assert len({r.partition for r in records}) > 1, "40 keys over 6 partitions"
    for record in records:
        assert record.key is not None
        assert record.partition == expected[record.key], record.key
    await consumer.close()
    await producer.close()


async def test_concurrent_appends_keep_per_key_order_with_one_batch_per_partition(kafka_bootstrap: str) -> None:
    topic = unique("order")
    settings = kafka_settings(kafka_bootstrap, topics={topic: TopicSettings(partitions=3)})
    producer = KafkaProducer(settings)
    await producer.start()
    await producer.append(topic, b"warm", b"up")
    requests = capture_produce_requests(producer)
    sessions, per_session = 12, 25

    async def session(n: int) -> None:
        # Each session appends in order, several records at a time, while the others do too.
        for i in range(0, per_session, 5):
            await producer.append_batch(topic, [(f"s{n}".encode(), f"{n}:{j}".encode()) for j in range(i, i + 5)])

    await asyncio.gather(*(session(n) for n in range(sessions)))
    for request in requests:
        partitions = [p for _topic, parts in request.topics for p, _records in parts]
        assert len(partitions) == len(set(partitions)), "one record batch per partition per request"
    assert len(requests) < sessions * per_session // 5, "concurrent appends share requests"
    consumer = KafkaConsumer(settings, unique("g"), [topic])
    await consumer.start()
    seen: dict[int, list[int]] = collections.defaultdict(list)
    for record in await read_n(consumer, 1 + sessions * per_session):
        if record.key != b"warm":
            n, j = record.value.decode().split(":")
            seen[int(n)].append(int(j))
    assert seen == {n: list(range(per_session)) for n in range(sessions)}
    await consumer.close()
    await producer.close()


async def test_an_append_larger_than_a_batch_is_split_across_requests_in_order(kafka_bootstrap: str) -> None:
    topic = unique("split")
    settings = kafka_settings(kafka_bootstrap, max_batch_bytes=4 * 1024)
    producer = KafkaProducer(settings)
    await producer.start()
    await producer.append(topic, b"k", b"warm-up")
    requests = capture_produce_requests(producer)
    await producer.append_batch(topic, [(b"k", f"{i:04d}".encode() + b"x" * 500) for i in range(40)])
    assert len(requests) > 1, "20 KB in 4 KB batches"
    assert all(len(batches(r)) == 1 for r in requests)
    consumer = KafkaConsumer(settings, unique("g"), [topic])
    await consumer.start()
    values = [r.value for r in await read_n(consumer, 41)][1:]
    assert [int(v[:4]) for v in values] == list(range(40))
    await consumer.close()
    await producer.close()


async def test_close_settles_every_append_in_flight(kafka_bootstrap: str) -> None:
    producer = KafkaProducer(kafka_settings(kafka_bootstrap))
    await producer.start()
    topic = unique("close")
    await producer.append(topic, b"k", b"warm-up")
    appends = [asyncio.ensure_future(producer.append(topic, b"k", str(i).encode())) for i in range(200)]
    await asyncio.sleep(0)
    await producer.close()
    outcomes = await asyncio.wait_for(asyncio.gather(*appends, return_exceptions=True), 10)
    assert all(o is None or isinstance(o, Exception) for o in outcomes)
    assert producer._direct is None
