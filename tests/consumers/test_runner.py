"""run_consumer and Rebalance over a real embedded log: revoke flushes, failed revokes stop, bounded stop.

The embedded log never revokes by itself, so these tests call the hook the way KafkaConsumer does
(test_kafka_rebalance.py runs a real group rebalance on a broker).
"""

from __future__ import annotations

import asyncio

import pytest

from consumers.audit import AuditConsumer, AuditSettings
from consumers.pipeline import Rebalance, RetryPolicy, run_consumer
from consumers.store.base import StoreQueryError
from eventlog.base import TOPIC_EVENTS
from eventlog.embedded import EmbeddedLog
from tests.consumers.support import MemoryStore, append_events, make_events, simple_rows, until

HELD = AuditSettings(max_rows=100_000, max_wait_s=3600, poll_timeout_s=0.01, retry=RetryPolicy(0.001, 0.01))


async def test_revoke_flushes_and_commits_before_returning(log: EmbeddedLog) -> None:
    await append_events(log.producer(), make_events(300, sessions=8))
    ends = await log.end_offsets(TOPIC_EVENTS)
    store, rebalance = MemoryStore(), Rebalance()
    consumer = log.consumer("audit", [TOPIC_EVENTS])
    audit = AuditConsumer(consumer, store, log.producer(), HELD, rows=simple_rows(), rebalance=rebalance)
    stop = asyncio.Event()
    task = asyncio.create_task(audit.run(stop))
    await until(lambda: audit.metrics.consumed == 300, what="reading everything")
    assert store.event_ids() == []

    await rebalance(consumer.assignment())
    assert len(store.event_ids()) == 300 and rebalance.generation == 1
    for tp, end in ends.items():
        assert await consumer.committed(tp) == (end or None)
    # (Records a poll returns across a revoke are dropped, for Kafka re-reads them from the committed
    # offsets after the reassignment; the embedded consumer does not rewind, so the test ends here.)
    stop.set()
    await task
    assert len(store.event_ids()) == 300


async def test_a_revoke_that_cannot_flush_stops_the_consumer(log: EmbeddedLog) -> None:
    await append_events(log.producer(), make_events(50))
    store, rebalance = MemoryStore(), Rebalance()
    consumer = log.consumer("audit", [TOPIC_EVENTS])
    audit = AuditConsumer(consumer, store, log.producer(), HELD, rows=simple_rows(), rebalance=rebalance)
    task = asyncio.create_task(audit.run(asyncio.Event()))
    await until(lambda: audit.metrics.consumed == 50, what="reading everything")
    store.failures.append(StoreQueryError("refused"))
    with pytest.raises(StoreQueryError):
        await rebalance(consumer.assignment())
    with pytest.raises(StoreQueryError):
        await asyncio.wait_for(task, 5)
    assert [await consumer.committed(tp) for tp in consumer.assignment()] == [None, None]


async def test_a_revoke_waiting_on_a_down_store_times_out_and_stops_the_consumer(log: EmbeddedLog) -> None:
    await append_events(log.producer(), make_events(50))
    store, rebalance = MemoryStore(), Rebalance(timeout_s=0.2)
    store.gate = asyncio.Event()  # every insert hangs
    consumer = log.consumer("audit", [TOPIC_EVENTS])
    settings = AuditSettings(max_rows=10, poll_timeout_s=0.01, retry=RetryPolicy(0.001, 0.01))
    audit = AuditConsumer(consumer, store, log.producer(), settings, rows=simple_rows(), rebalance=rebalance)
    task = asyncio.create_task(audit.run(asyncio.Event()))
    await until(lambda: store.attempts == 1, what="the first insert")
    with pytest.raises(TimeoutError):
        await rebalance(consumer.assignment())
    store.gate.set()  # the store comes back: the loop commits the batch in hand, then stops
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(task, 5)


async def test_stop_gives_up_after_the_shutdown_timeout_when_the_store_is_down(log: EmbeddedLog) -> None:
    await append_events(log.producer(), make_events(20))
    store = MemoryStore()
    store.gate = asyncio.Event()
    consumer = log.consumer("audit", [TOPIC_EVENTS])
    settings = AuditSettings(max_rows=5, poll_timeout_s=0.01, shutdown_timeout_s=0.3)
    audit = AuditConsumer(consumer, store, log.producer(), settings, rows=simple_rows())
    stop = asyncio.Event()
    task = asyncio.create_task(audit.run(stop))
    await until(lambda: store.attempts == 1, what="the first insert")
    stop.set()
    await asyncio.wait_for(task, 5)  # returns (logged), does not hang
    assert [await consumer.committed(tp) for tp in consumer.assignment()] == [None, None]
    assert store.event_ids() == []


async def test_background_work_runs_between_polls_while_records_keep_coming(log: EmbeddedLog) -> None:
    """An overlapped write must progress while the loop is busy: the log's poll does not suspend."""
    await append_events(log.producer(), make_events(300, sessions=1))
    loop = asyncio.get_running_loop()
    background: list[int] = []  # how many records had been submitted when the callback ran
    submitted: list[int] = []

    class Strategy:
        async def submit(self, item: object) -> None:
            submitted.append(1)
            if len(submitted) == 1:
                loop.call_soon(lambda: background.append(len(submitted)))

        async def poll(self) -> None:
            pass

        async def join(self) -> None:
            pass

        async def close(self) -> None:
            pass

    stop = asyncio.Event()
    consumer = log.consumer("audit", [TOPIC_EVENTS])
    task = asyncio.create_task(run_consumer(consumer, Strategy(), stop, max_records=100, poll_timeout_s=0.01))
    await until(lambda: len(submitted) == 300, what="reading everything")
    stop.set()
    await task
    await consumer.close()
    assert background == [100]  # right after the first poll's records, not after all three polls
