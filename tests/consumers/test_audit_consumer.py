"""The audit consumer over a real embedded log: batching, commits, dead letters, backpressure, stop."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter

import pytest

from consumers.audit import AuditConsumer, AuditSettings, AuditWriter, default_rows, router
from consumers.pipeline import RetryPolicy, TooManyInvalid, parse_dead_letter
from consumers.store.base import CHECKPOINTS_TABLE, EVENTS_TABLE, StoreQueryError, StoreUnavailable
from eventlog.base import TOPIC_DEAD_LETTER, TOPIC_EVENTS, Record, TopicPartition
from eventlog.embedded import EmbeddedConsumer, EmbeddedLog
from schemas.codec import EventCodec
from tests.consumers.conftest import StoreUnderTest
from tests.consumers.support import MemoryStore, append_events, make_events, run_until_committed, simple_rows, until

FAST = RetryPolicy(initial_s=0.001, max_s=0.01)


def settings(**overrides: object) -> AuditSettings:
    base: dict[str, object] = {"max_rows": 50, "max_wait_s": 0.05, "poll_timeout_s": 0.01, "retry": FAST}
    return AuditSettings(**{**base, **overrides})  # type: ignore[arg-type]


def memory_consumer(
    log: EmbeddedLog, store: MemoryStore, **overrides: object
) -> tuple[AuditConsumer, EmbeddedConsumer]:
    consumer = log.consumer("audit", [TOPIC_EVENTS])
    return AuditConsumer(consumer, store, log.producer(), settings(**overrides), rows=simple_rows()), consumer


async def dead_letters(log: EmbeddedLog) -> list[Record]:
    reader = log.consumer("dlq-reader", [TOPIC_DEAD_LETTER])
    await reader.start()
    try:
        out: list[Record] = []
        while batch := await reader.poll(1000, 0.05):
            out.extend(batch)
        return out
    finally:
        await reader.close()


async def test_every_event_becomes_one_row_in_tokened_batches(log: EmbeddedLog, store: StoreUnderTest) -> None:
    events = make_events(230, sessions=8, checkpoint_every=25)
    await append_events(log.producer(), events)
    ends = await log.end_offsets(TOPIC_EVENTS)
    consumer = log.consumer("audit", [TOPIC_EVENTS])
    audit = AuditConsumer(consumer, store.store, log.producer(), settings(), rows=store.rows)
    await run_until_committed(audit, consumer, ends)

    ids = await store.event_ids()
    assert sorted(ids) == sorted(e.event_id for e in events)
    assert await store.count(CHECKPOINTS_TABLE) == 9
    m = audit.metrics
    assert (m.consumed, m.inserted, m.dead_lettered) == (230, 230, 0)
    assert m.committed == {tp: end for tp, end in ends.items() if end} and m.last_commit is not None
    if isinstance(store.store, MemoryStore):
        tokens = [i.token for i in store.store.inserts if i.table == EVENTS_TABLE]
        assert len(tokens) == m.batches >= 230 // 50
        for tp, end in ends.items():
            # Per partition the batches tile the offsets 0..end-1 without a gap or an overlap.
            ranges = sorted(
                tuple(map(int, t.rsplit(":", 1)[1].split("-")))
                for t in tokens
                if t.startswith(f"{tp.topic}:{tp.partition}:")
            )
            assert ranges[0][0] == 0 and ranges[-1][1] == end - 1
            assert all(b[0] == a[1] + 1 for a, b in itertools.pairwise(ranges))
            assert all(b - a + 1 <= 50 for a, b in ranges)
        # A batch's checkpoint rows go in before its events rows, under the same token.
        for i, insert in enumerate(store.store.inserts):
            if insert.table == CHECKPOINTS_TABLE:
                assert store.store.inserts[i + 1].table == EVENTS_TABLE
                assert store.store.inserts[i + 1].token == insert.token


async def test_a_failed_insert_commits_nothing_and_the_replay_sends_the_same_tokens(log: EmbeddedLog) -> None:
    await append_events(log.producer(), make_events(120, sessions=1))  # one key: one partition
    tp = next(tp for tp, end in (await log.end_offsets(TOPIC_EVENTS)).items() if end)
    store = MemoryStore()
    tried: list[str] = []
    original = store.insert

    async def insert(table: str, rows: object, dedup_token: str) -> None:
        tried.append(dedup_token)
        if len(tried) == 2:
            raise StoreQueryError("the store refused the batch")
        await original(table, rows, dedup_token)  # type: ignore[arg-type]

    store.insert = insert  # type: ignore[method-assign]
    audit, consumer = memory_consumer(log, store, max_wait_s=60)
    with pytest.raises(StoreQueryError):
        await audit.run(asyncio.Event())
    assert await consumer.committed(tp) == 50  # the first batch only
    assert tried == [f"{tp.topic}:{tp.partition}:0-49", f"{tp.topic}:{tp.partition}:50-99"]
    await consumer.close()

    store.insert = original  # type: ignore[method-assign]
    audit, consumer = memory_consumer(log, store, max_wait_s=0.05)
    await run_until_committed(audit, consumer, {tp: 120})
    assert [i.token for i in store.inserts] == [
        f"{tp.topic}:{tp.partition}:{a}-{b}" for a, b in ((0, 49), (50, 99), (100, 119))
    ]
    assert len(store.event_ids()) == len(set(store.event_ids())) == 120


async def test_garbage_goes_to_the_dead_letter_topic_with_its_reason(log: EmbeddedLog, store: StoreUnderTest) -> None:
    producer = log.producer()
    codec = EventCodec()
    events = make_events(40, sessions=1)
    garbage = {7: b"not avro at all", 21: b"\xc3\x01" + b"\x00" * 8 + b"junk", 39: b""}
    records: list[tuple[bytes | None, bytes]] = []
    for i, e in enumerate(events):
        records.append((b"k", garbage[i] if i in garbage else codec.encode(e)))
    await producer.append_batch(TOPIC_EVENTS, records)
    ends = await log.end_offsets(TOPIC_EVENTS)
    consumer = log.consumer("audit", [TOPIC_EVENTS])
    audit = AuditConsumer(consumer, store.store, producer, settings(), rows=store.rows)
    await run_until_committed(audit, consumer, ends)  # the last record is garbage: committed all the same

    assert sorted(await store.event_ids()) == sorted(e.event_id for i, e in enumerate(events) if i not in garbage)
    letters = [parse_dead_letter(r.value) for r in await dead_letters(log)]
    tp = next(tp for tp, end in ends.items() if end)
    assert [(d.topic, d.partition, d.offset, d.value, d.key) for d in letters] == [
        (TOPIC_EVENTS, tp.partition, o, garbage[o], b"k") for o in sorted(garbage)
    ]
    assert "MalformedMessageError" in letters[0].reason and "neither single-object nor Confluent" in letters[0].reason
    assert "UnknownSchemaError" in letters[1].reason
    assert all(d.source == "audit" for d in letters)
    assert audit.metrics.dead_lettered == 3 and audit.metrics.inserted == 37


async def test_too_many_invalid_messages_stop_the_consumer_after_flushing_the_good_ones(log: EmbeddedLog) -> None:
    producer = log.producer()
    good = make_events(30, sessions=1)
    await append_events(producer, good)
    await producer.append_batch(TOPIC_EVENTS, [(b"session-0", b"garbage %d" % i) for i in range(300)])
    store = MemoryStore()
    audit, consumer = memory_consumer(log, store, max_wait_s=60, max_rows=1000, invalid_min_messages=100)
    with pytest.raises(TooManyInvalid, match=r"of the last \d+ messages could not be decoded"):
        await audit.run(asyncio.Event())
    # 30 good + 70 garbage = 100 seen with 70% invalid: stopped at the 100th, before dead-lettering it.
    assert audit.metrics.dead_lettered == 69
    assert sorted(store.event_ids()) == sorted(e.event_id for e in good)
    tp = next(tp for tp in consumer.assignment() if consumer.position(tp))
    assert await consumer.committed(tp) == 99  # up to the last dead letter; the 100th is read again
    assert len(await dead_letters(log)) == 69


async def test_a_blocked_insert_pauses_consumption_with_bounded_memory(log: EmbeddedLog) -> None:
    await append_events(log.producer(), make_events(5000, sessions=1))
    store = MemoryStore()
    store.gate = asyncio.Event()
    audit, consumer = memory_consumer(log, store, max_rows=100, max_records_per_poll=100)
    stop = asyncio.Event()
    task = asyncio.create_task(audit.run(stop))
    await until(lambda: store.attempts == 1, what="the first insert")
    tp = next(tp for tp in consumer.assignment() if consumer.position(tp))
    held = consumer.position(tp)
    await asyncio.sleep(0.3)  # the loop would have read all 5000 records by now, were it polling
    assert consumer.position(tp) == held <= 200
    assert audit.metrics.consumed <= 200 and await consumer.committed(tp) is None

    store.gate.set()
    await until(lambda: audit.metrics.committed.get(tp) == 5000, what="catching up")
    stop.set()
    await task
    assert len(store.event_ids()) == 5000


async def test_a_store_outage_is_waited_out(log: EmbeddedLog) -> None:
    await append_events(log.producer(), make_events(100))
    ends = await log.end_offsets(TOPIC_EVENTS)
    store = MemoryStore()
    store.failures = [StoreUnavailable("connection refused")] * 5
    audit, consumer = memory_consumer(log, store)
    await run_until_committed(audit, consumer, ends)
    assert audit.metrics.retries == 5 and not audit.metrics.paused
    assert len(set(store.event_ids())) == len(store.event_ids()) == 100


async def test_stop_flushes_and_commits_what_was_read(log: EmbeddedLog, store: StoreUnderTest) -> None:
    await append_events(log.producer(), make_events(333))
    ends = await log.end_offsets(TOPIC_EVENTS)
    consumer = log.consumer("audit", [TOPIC_EVENTS])
    audit = AuditConsumer(
        consumer, store.store, log.producer(), settings(max_rows=100_000, max_wait_s=3600), rows=store.rows
    )
    stop = asyncio.Event()
    task = asyncio.create_task(audit.run(stop))
    await until(lambda: audit.metrics.consumed == 333, what="reading everything")
    assert audit.metrics.inserted == 0  # neither bound reached: all held
    stop.set()
    await task
    assert audit.metrics.inserted == 333 and audit.metrics.batches == sum(1 for end in ends.values() if end)
    for tp, end in ends.items():
        assert await consumer.committed(tp) == (end or None)
    assert len(await store.event_ids()) == 333


async def test_a_replay_cut_differently_writes_nothing_twice(log: EmbeddedLog, store: StoreUnderTest) -> None:
    """An earlier run wrote an age-cut batch (offsets 0-29) and died before committing it."""
    events = make_events(120, sessions=1, checkpoint_every=10)
    await append_events(log.producer(), events)
    tp = next(tp for tp, end in (await log.end_offsets(TOPIC_EVENTS)).items() if end)
    route = router(store.rows or default_rows())
    await AuditWriter(store.store).write([route(e) for e in events[:30]], f"{tp.topic}:{tp.partition}:0-29")

    consumer = log.consumer("audit", [TOPIC_EVENTS])
    audit = AuditConsumer(consumer, store.store, log.producer(), settings(max_rows=100), rows=store.rows)
    await run_until_committed(audit, consumer, {tp: 120})
    ids = await store.event_ids()
    assert Counter(ids) == Counter(e.event_id for e in events)  # each exactly once
    assert await store.count(CHECKPOINTS_TABLE) == 12
    assert audit.metrics.already_written == 30 and audit.metrics.inserted == 90


async def test_partitions_are_batched_and_committed_independently(log: EmbeddedLog) -> None:
    await append_events(log.producer(), make_events(400, sessions=8))
    ends = await log.end_offsets(TOPIC_EVENTS)
    assert all(ends.values()), "the keys should spread over both partitions"
    store = MemoryStore()
    audit, consumer = memory_consumer(log, store, max_rows=64)
    await run_until_committed(audit, consumer, ends)
    partitions = {i.token.split(":")[1] for i in store.inserts}
    assert partitions == {str(tp.partition) for tp in ends}
    assert TopicPartition(TOPIC_EVENTS, 0) in audit.metrics.committed
