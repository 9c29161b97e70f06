"""Unit tests of the pipeline steps, one at a time: no log, no store (fakes of the next step)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from consumers.pipeline import (
    Batch,
    ConsumerMetrics,
    Filter,
    Insert,
    InvalidRatio,
    Map,
    Message,
    ReplayGuard,
    RetryPolicy,
    Skipped,
    TooManyInvalid,
    ValuesBatch,
)
from consumers.store.base import StoreQueryError, StoreUnavailable
from eventlog.base import Record, TopicPartition

FAST = RetryPolicy(initial_s=0.001, max_s=0.004)


def rec(offset: int, partition: int = 0, value: bytes = b"v") -> Record:
    return Record("t", partition, offset, None, value, 0)


class Sink:
    """The next step, recording what it is handed."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self.polls = self.joins = self.closes = 0

    async def submit(self, item: Any) -> None:
        self.items.append(item)

    async def poll(self) -> None:
        self.polls += 1

    async def join(self) -> None:
        self.joins += 1

    async def close(self) -> None:
        self.closes += 1


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_batch_cuts_at_max_rows_per_partition_and_names_its_offsets() -> None:
    sink = Sink()
    batch: Batch[int] = Batch(sink, max_rows=3, max_wait_s=60)
    for offset in range(7):
        await batch.submit(Message(rec(offset, partition=offset % 2), offset))
    # partition 0 got offsets 0, 2, 4 (full), partition 1 got 1, 3, 5 (full); 6 waits in partition 0.
    assert [(b.partition.partition, b.first, b.last, list(b.values)) for b in sink.items] == [
        (0, 0, 4, [0, 2, 4]),
        (1, 1, 5, [1, 3, 5]),
    ]
    assert [b.dedup_token for b in sink.items] == ["t:0:0-4", "t:1:1-5"]
    assert batch.held == 1
    await batch.join()
    assert sink.items[-1] == ValuesBatch(TopicPartition("t", 0), 6, 6, [6], after_assignment=False)
    assert sink.joins == 1 and batch.held == 0


async def test_batch_cuts_at_max_wait_on_poll() -> None:
    sink, clock = Sink(), Clock()
    batch: Batch[int] = Batch(sink, max_rows=100, max_wait_s=1.0, clock=clock)
    await batch.submit(Message(rec(0), 0))
    clock.now += 0.6
    await batch.submit(Message(rec(1), 1))
    await batch.poll()
    assert sink.items == [] and sink.polls == 1
    clock.now += 0.5  # 1.1 s after the first record of the batch: the age counts from there
    await batch.poll()
    assert [(b.first, b.last) for b in sink.items] == [(0, 1)]
    await batch.poll()
    assert len(sink.items) == 1  # nothing open, nothing handed on


async def test_skipped_records_count_and_extend_the_range_without_values() -> None:
    sink = Sink()
    batch: Batch[str] = Batch(sink, max_rows=3, max_wait_s=60)
    await batch.submit(Skipped(rec(10)))
    await batch.submit(Message(rec(11), "a"))
    await batch.submit(Skipped(rec(12)))
    await batch.submit(Skipped(rec(13)))
    await batch.join()
    assert [(b.first, b.last, list(b.values)) for b in sink.items] == [(10, 12, ["a"]), (13, 13, [])]


async def test_first_batch_per_partition_after_assignment_is_marked() -> None:
    sink = Sink()
    batch: Batch[int] = Batch(sink, max_rows=1, max_wait_s=60)
    for offset in (0, 1):
        await batch.submit(Message(rec(offset), offset))
    await batch.submit(Message(rec(0, partition=1), 0))
    await batch.join()  # a revoke: what comes next belongs to a new assignment
    await batch.submit(Message(rec(2), 2))
    assert [b.after_assignment for b in sink.items] == [True, False, True, True]


async def test_close_drops_open_batches() -> None:
    sink = Sink()
    batch: Batch[int] = Batch(sink, max_rows=10, max_wait_s=60)
    await batch.submit(Message(rec(0), 0))
    await batch.close()
    assert sink.items == [] and sink.closes == 1 and batch.held == 0


async def test_map_and_filter_pass_skips_on() -> None:
    sink = Sink()
    chain: Filter[int] = Filter(lambda v: v % 2 == 0, Map(lambda v: v * 10, sink))
    await chain.submit(Message(rec(0), 2))
    await chain.submit(Message(rec(1), 3))
    await chain.submit(Skipped(rec(2)))
    assert [(type(i).__name__, i.record.offset, getattr(i, "value", None)) for i in sink.items] == [
        ("Message", 0, 20),
        ("Skipped", 1, None),
        ("Skipped", 2, None),
    ]


def test_invalid_ratio_needs_min_messages_then_trips() -> None:
    guard = InvalidRatio(max_ratio=0.5, min_messages=10, window=100)
    for _ in range(9):
        guard.observe(False)  # 9 of 9, but too few to judge
    with pytest.raises(TooManyInvalid, match=r"10 of the last 10 messages"):
        guard.observe(False)


def test_invalid_ratio_is_a_sliding_window() -> None:
    guard = InvalidRatio(max_ratio=0.5, min_messages=10, window=10)
    for _ in range(5):
        guard.observe(False)
    for _ in range(5):
        guard.observe(True)  # 5 of 10: at the limit, not over
    for _ in range(5):
        guard.observe(True)  # the invalid ones slide out
    assert guard.invalid == 0
    for _ in range(5):
        guard.observe(False)
    with pytest.raises(TooManyInvalid):
        guard.observe(False)  # 6 of the last 10


async def test_insert_writes_with_the_token_then_hands_on() -> None:
    sink, metrics = Sink(), ConsumerMetrics()
    calls: list[tuple[list[int], str]] = []

    async def write(values: Sequence[int], token: str) -> None:
        calls.append((list(values), token))

    insert = Insert(write, sink, metrics, retry=FAST)
    batch = ValuesBatch(TopicPartition("t", 3), 5, 9, [1, 2])
    await insert.submit(batch)
    await insert.submit(ValuesBatch(TopicPartition("t", 3), 10, 11, []))  # all skipped: commit, no write
    assert calls == [([1, 2], "t:3:5-9")]
    assert [b.last for b in sink.items] == [9, 11]
    assert (metrics.inserted, metrics.batches) == (2, 1)


async def test_insert_waits_out_retryable_errors_paused_and_gives_up_on_others() -> None:
    sink, metrics = Sink(), ConsumerMetrics()
    errors: list[Exception] = [StoreUnavailable("down"), StoreUnavailable("still down")]
    paused: list[bool] = []

    async def write(values: Sequence[int], token: str) -> None:
        paused.append(metrics.paused)
        if errors:
            raise errors.pop(0)

    insert = Insert(write, sink, metrics, retry=FAST)
    await insert.submit(ValuesBatch(TopicPartition("t", 0), 0, 0, [1]))
    assert paused == [False, True, True] and not metrics.paused
    assert metrics.retries == 2 and len(sink.items) == 1

    errors.append(StoreQueryError("bad column"))
    with pytest.raises(StoreQueryError):
        await insert.submit(ValuesBatch(TopicPartition("t", 0), 1, 1, [2]))
    assert len(sink.items) == 1  # not handed to the commit


async def test_insert_backoff_is_capped() -> None:
    metrics = ConsumerMetrics()
    delays: list[float] = []
    loop = asyncio.get_running_loop()
    last = loop.time()

    async def write(values: Sequence[int], token: str) -> None:
        nonlocal last
        delays.append(loop.time() - last)
        last = loop.time()
        if len(delays) < 8:
            raise StoreUnavailable("down")

    await Insert(write, Sink(), metrics, retry=RetryPolicy(0.002, 0.01)).submit(
        ValuesBatch(TopicPartition("t", 0), 0, 0, [1])
    )
    assert max(delays) < 0.1 and sum(delays[-3:]) >= 0.03  # capped at 10 ms, and really waited


async def test_replay_guard_checks_until_a_batch_has_new_values() -> None:
    sink, metrics = Sink(), ConsumerMetrics()
    written = {0, 1, 2, 3}
    checked: list[list[int]] = []

    async def unwritten(values: Sequence[int]) -> Sequence[int]:
        checked.append(list(values))
        return [v for v in values if v not in written]

    guard = ReplayGuard(unwritten, sink, metrics, retry=FAST)
    tp = TopicPartition("t", 0)
    await guard.submit(ValuesBatch(tp, 0, 1, [0, 1], after_assignment=True))  # all written: keep checking
    await guard.submit(ValuesBatch(tp, 2, 2, []))  # only skipped records: nothing to check
    await guard.submit(ValuesBatch(tp, 3, 5, [2, 3, 4]))  # the earlier run's last write ends inside
    await guard.submit(ValuesBatch(tp, 6, 7, [5, 6]))  # not checked any more
    assert checked == [[0], [0, 1], [2], [2, 3, 4]]  # the first value alone, then the batch
    assert [(b.first, b.last, list(b.values)) for b in sink.items] == [
        (0, 1, []),
        (2, 2, []),
        (3, 5, [4]),
        (6, 7, [5, 6]),
    ]
    assert metrics.already_written == 4


class GatedWriter:
    """A writer whose writes wait for `release()`, one gate per write, in order."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.gates: list[asyncio.Event] = []
        self.failures: list[Exception] = []

    async def __call__(self, values: Sequence[int], token: str) -> None:
        self.started.append(token)
        gate = asyncio.Event()
        self.gates.append(gate)
        await gate.wait()
        if self.failures:
            raise self.failures.pop(0)

    def release(self) -> None:
        self.gates[-1].set()


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_overlapping_insert_returns_while_writing_and_commits_after_the_write() -> None:
    sink, metrics, write = Sink(), ConsumerMetrics(), GatedWriter()
    insert = Insert(write, sink, metrics, retry=FAST, overlap=True)
    tp = TopicPartition("t", 0)
    await insert.submit(ValuesBatch(tp, 0, 9, [1]))  # returns with the write started, not done
    assert write.started == ["t:0:0-9"] and sink.items == []
    await insert.poll()  # the write has not returned: nothing to commit yet
    assert sink.items == []
    write.release()
    await settle()
    await insert.poll()
    assert [b.last for b in sink.items] == [9] and metrics.batches == 1

    # The next batch's write starts only after the previous batch went on to the commit.
    await insert.submit(ValuesBatch(tp, 10, 19, [2]))
    second = asyncio.create_task(insert.submit(ValuesBatch(tp, 20, 29, [3])))
    await settle()
    assert write.started == ["t:0:0-9", "t:0:10-19"] and not second.done()
    write.release()
    await second
    await settle()
    assert write.started[-1] == "t:0:20-29" and [b.last for b in sink.items] == [9, 19]
    write.release()
    await insert.join()
    assert [b.last for b in sink.items] == [9, 19, 29] and sink.joins == 1


async def test_overlapping_insert_keeps_commits_in_offset_order_for_empty_batches() -> None:
    sink, write = Sink(), GatedWriter()
    insert = Insert(write, sink, ConsumerMetrics(), retry=FAST, overlap=True)
    tp = TopicPartition("t", 0)
    await insert.submit(ValuesBatch(tp, 0, 9, [1]))
    empty = asyncio.create_task(insert.submit(ValuesBatch(tp, 10, 19, [])))  # all skipped: waits for 0-9
    await settle()
    assert not empty.done() and sink.items == []
    write.release()
    await empty
    assert [b.last for b in sink.items] == [9, 19]


async def test_an_overlapped_write_s_error_surfaces_at_the_next_call_and_commits_nothing() -> None:
    sink, write = Sink(), GatedWriter()
    insert = Insert(write, sink, ConsumerMetrics(), retry=FAST, overlap=True)
    write.failures.append(StoreQueryError("refused"))
    await insert.submit(ValuesBatch(TopicPartition("t", 0), 0, 9, [1]))
    await settle()
    write.release()
    await settle()
    with pytest.raises(StoreQueryError):
        await insert.poll()
    assert sink.items == [] and sink.polls == 0

    # Not retryable, so the consumer stops there; at a submit instead of a poll, no new write starts.
    write.failures.append(StoreQueryError("refused"))
    await insert.submit(ValuesBatch(TopicPartition("t", 0), 0, 9, [1]))
    await settle()
    write.release()
    with pytest.raises(StoreQueryError):
        await insert.submit(ValuesBatch(TopicPartition("t", 0), 10, 19, [2]))
    assert sink.items == [] and write.started == ["t:0:0-9", "t:0:0-9"]


async def test_close_abandons_an_overlapped_write_uncommitted() -> None:
    sink, write = Sink(), GatedWriter()
    insert = Insert(write, sink, ConsumerMetrics(), retry=FAST, overlap=True)
    await insert.submit(ValuesBatch(TopicPartition("t", 0), 0, 9, [1]))
    await settle()
    await insert.close()
    assert sink.items == [] and sink.closes == 1 and write.started == ["t:0:0-9"]
    await insert.join()  # nothing left in flight
    assert sink.items == []


async def test_replay_guard_stops_at_a_first_value_the_store_does_not_hold() -> None:
    # Written values are a prefix: an unwritten first value means a fresh batch, checked no further.
    sink, metrics = Sink(), ConsumerMetrics()
    checked: list[list[int]] = []

    async def unwritten(values: Sequence[int]) -> Sequence[int]:
        checked.append(list(values))
        return list(values)

    guard = ReplayGuard(unwritten, sink, metrics, retry=FAST)
    tp = TopicPartition("t", 0)
    await guard.submit(ValuesBatch(tp, 0, 2, [0, 1, 2], after_assignment=True))
    await guard.submit(ValuesBatch(tp, 3, 4, [3, 4]))
    assert checked == [[0]]
    assert [list(b.values) for b in sink.items] == [[0, 1, 2], [3, 4]] and metrics.already_written == 0
