"""The event-log contract: every backend (embedded, Kafka) must pass these unchanged."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict

import pytest

from eventlog.base import TopicPartition
from tests.eventlog.backends import EmbeddedBackend, LogBackend, next_offsets, read_n, read_until_quiet


async def test_appended_records_are_read_back_with_key_value_and_dense_offsets(log_backend: LogBackend) -> None:
    topic = await log_backend.new_topic()
    producer = log_backend.producer()
    await producer.start()
    before_ms = int(time.time() * 1000) - 5_000
    for i in range(10):
        await producer.append(topic, b"session-1", f"v{i}".encode())
    await producer.append(topic, None, b"no key")
    consumer = log_backend.consumer("g", [topic])
    await consumer.start()
    records = await read_n(consumer, 11)
    assert [r.value for r in records] == [f"v{i}".encode() for i in range(10)] + [b"no key"]
    assert [r.key for r in records] == [b"session-1"] * 10 + [None]
    assert [r.offset for r in records] == list(range(records[0].offset, records[0].offset + 11))
    assert all(r.topic == topic and r.partition == 0 for r in records)
    assert all(before_ms <= r.timestamp_ms <= time.time() * 1000 + 5_000 for r in records)


async def test_per_key_order_holds_under_concurrent_appends(log_backend: LogBackend) -> None:
    topic = await log_backend.new_topic(partitions=4)
    producer = log_backend.producer()
    await producer.start()
    keys, per_key = 12, 40

    async def one_key(k: int) -> None:
        for i in range(per_key):
            if i % 10 == 5:  # a batch in the middle of single appends keeps its place too
                await producer.append_batch(topic, [(f"k{k}".encode(), f"{i + j}".encode()) for j in range(3)])
            elif i % 10 not in (6, 7):
                await producer.append(topic, f"k{k}".encode(), str(i).encode())

    await asyncio.gather(*(one_key(k) for k in range(keys)))
    consumer = log_backend.consumer("g", [topic])
    await consumer.start()
    records = await read_n(consumer, keys * per_key)
    seen: dict[bytes, list[int]] = defaultdict(list)
    partition_of: dict[bytes, set[int]] = defaultdict(set)
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        assert r.key is not None
        seen[r.key].append(int(r.value))
        partition_of[r.key].add(r.partition)
    assert {k: v for k, v in seen.items()} == {f"k{k}".encode(): list(range(per_key)) for k in range(keys)}
    assert all(len(p) == 1 for p in partition_of.values()), "a key must stay in one partition"
    assert len({r.partition for r in records}) > 1, "12 keys over 4 partitions should spread"
    assert consumer.assignment() == {TopicPartition(topic, p) for p in range(4)}


async def test_a_new_member_resumes_after_the_committed_offset(log_backend: LogBackend) -> None:
    topic = await log_backend.new_topic()
    producer = log_backend.producer()
    await producer.start()
    await producer.append_batch(topic, [(b"k", str(i).encode()) for i in range(30)])
    first = log_backend.consumer("audit", [topic])
    await first.start()
    head = (await read_n(first, 30))[:12]
    await first.commit(next_offsets(head))
    tp = TopicPartition(topic, 0)
    assert await first.committed(tp) == head[-1].offset + 1
    await first.close()

    second = log_backend.consumer("audit", [topic])
    await second.start()
    assert await second.committed(tp) == head[-1].offset + 1
    rest = await read_n(second, 18)
    assert [int(r.value) for r in rest] == list(range(12, 30))
    assert rest[0].offset == head[-1].offset + 1
    assert await second.poll(10, 0.3) == []


async def test_uncommitted_records_are_read_again_after_a_restart(log_backend: LogBackend) -> None:
    topic = await log_backend.new_topic(partitions=2)
    producer = log_backend.producer()
    await producer.start()
    await producer.append_batch(topic, [(f"k{i % 5}".encode(), str(i).encode()) for i in range(40)])
    consumer = log_backend.consumer("risk", [topic])
    await consumer.start()
    records = await read_n(consumer, 40)
    done = [r for r in records if int(r.value) < 10]  # processed these only; the rest were in flight
    await consumer.commit(next_offsets(done))

    await log_backend.restart()  # the crash: positions held only in memory are gone

    consumer = log_backend.consumer("risk", [topic])
    await consumer.start()
    again = await read_until_quiet(consumer)
    per_partition_committed = next_offsets(done)
    expected = [r for r in records if r.offset >= per_partition_committed.get(TopicPartition(r.topic, r.partition), 0)]
    assert sorted((r.partition, r.offset, r.value) for r in again) == sorted(
        (r.partition, r.offset, r.value) for r in expected
    )
    assert {int(r.value) for r in again} >= set(range(10, 40))
    producer = log_backend.producer()  # the log still appends after the restart
    await producer.start()
    await producer.append(topic, b"k0", b"after")
    assert [r.value for r in await read_n(consumer, 1)] == [b"after"]


async def test_seek_to_beginning_replays_everything(log_backend: LogBackend) -> None:
    topic = await log_backend.new_topic()
    producer = log_backend.producer()
    await producer.start()
    await producer.append_batch(topic, [(b"k", str(i).encode()) for i in range(5)])
    consumer = log_backend.consumer("replay", [topic])
    await consumer.start()
    first = await read_n(consumer, 5)
    await consumer.commit(next_offsets(first))
    await consumer.seek_to_beginning()
    again = await read_n(consumer, 5)
    assert [r.value for r in again] == [r.value for r in first]


async def test_groups_keep_separate_positions(log_backend: LogBackend) -> None:
    topic = await log_backend.new_topic()
    producer = log_backend.producer()
    await producer.start()
    await producer.append_batch(topic, [(b"k", str(i).encode()) for i in range(6)])
    audit = log_backend.consumer("audit", [topic])
    await audit.start()
    await audit.commit(next_offsets(await read_n(audit, 6)))
    risk = log_backend.consumer("risk", [topic])
    await risk.start()
    assert await risk.committed(TopicPartition(topic, 0)) is None
    assert len(await read_n(risk, 6)) == 6


async def test_poll_wakes_promptly_when_a_record_is_appended(log_backend: LogBackend) -> None:
    topic = await log_backend.new_topic()
    producer = log_backend.producer()
    await producer.start()
    consumer = log_backend.consumer("g", [topic])
    await consumer.start()
    assert await consumer.poll(10, 0.2) == []

    async def append_later() -> float:
        await asyncio.sleep(0.1)
        await producer.append(topic, b"k", b"hello")
        return time.monotonic()

    appender = asyncio.create_task(append_later())
    records = await consumer.poll(10, 10.0)
    woke = time.monotonic()
    assert [r.value for r in records] == [b"hello"]
    assert woke - await appender < 1.0


async def test_poll_returns_nothing_when_no_record_comes_in_time(log_backend: LogBackend) -> None:
    topic = await log_backend.new_topic()
    consumer = log_backend.consumer("g", [topic])
    await consumer.start()
    started = time.monotonic()
    assert await consumer.poll(10, 0.3) == []
    assert 0.25 <= time.monotonic() - started < 3.0


async def test_a_member_positioned_before_retention_resumes_at_the_earliest_record(log_backend: LogBackend) -> None:
    topic = await log_backend.new_topic()
    producer = log_backend.producer()
    await producer.start()
    for chunk in range(10):  # several flushes, so the embedded log rolls several segments
        await producer.append_batch(topic, [(b"k", f"{chunk * 20 + i:05d}".encode() + b"." * 90) for i in range(20)])
    consumer = log_backend.consumer("slow", [topic])
    await consumer.start()
    head = await read_n(consumer, 5)
    await consumer.commit(next_offsets(head))
    await consumer.close()

    await log_backend.drop_old_records(topic)

    consumer = log_backend.consumer("slow", [topic])
    await consumer.start()
    rest = await read_until_quiet(consumer)
    values = [int(r.value[:5]) for r in rest]
    assert rest and rest[0].offset > head[-1].offset + 1, "old records should have been deleted"
    assert values == list(range(values[0], 200)), "resumes at the earliest retained record, then in order"
    assert [r.offset for r in rest] == list(range(rest[0].offset, rest[0].offset + len(rest)))


async def test_concurrent_appends_share_fsyncs(log_backend: LogBackend) -> None:
    if not isinstance(log_backend, EmbeddedBackend):
        pytest.skip("fsyncs are counted by the embedded log only")
    topic = await log_backend.new_topic()
    producer = log_backend.producer()
    await producer.start()
    before = log_backend.log.stats.fsyncs
    n = 200
    await asyncio.gather(*(producer.append(topic, f"k{i}".encode(), b"x" * 100) for i in range(n)))
    fsyncs = log_backend.log.stats.fsyncs - before
    assert 1 <= fsyncs <= n // 10, f"{n} concurrent appends took {fsyncs} fsyncs"
