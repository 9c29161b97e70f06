"""Embedded log: group commit, fail-closed flushes, bounded memory."""

from __future__ import annotations

import asyncio
import errno
import os
import threading
from pathlib import Path

import pytest

from eventlog.base import LogError, LogUnavailable
from eventlog.embedded import EmbeddedLog, LogLimits, flush_io
from tests.eventlog.backends import read_until_quiet


async def values(log: EmbeddedLog, group: str, topic: str = "t") -> list[bytes]:
    consumer = log.consumer(group, [topic])
    await consumer.start()
    try:
        return [r.value for r in await read_until_quiet(consumer, quiet_s=0.1)]
    finally:
        await consumer.close()


# Where the write+fsync runs: always on the loop (a bound no flush reaches) or always on the thread.
WHERE = pytest.mark.parametrize("bound", [60.0, None], ids=["inline", "thread"])


def failing(err: int) -> object:
    def sync(fd: int) -> None:
        raise OSError(err, os.strerror(err))

    return sync


@WHERE
async def test_a_failed_fsync_fails_every_waiter_and_stops_the_log_until_reopened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bound: float | None
) -> None:
    async with EmbeddedLog(tmp_path, limits=LogLimits(inline_flush_max_s=bound)) as log:
        producer = log.producer()
        await producer.append("t", b"k", b"durable")
        monkeypatch.setattr(flush_io, "_sync", failing(errno.EIO))
        results = await asyncio.gather(
            *(producer.append("t", b"k", f"lost-{i}".encode()) for i in range(10)), return_exceptions=True
        )
        assert all(isinstance(r, LogUnavailable) for r in results), results
        assert log.stats.failed_flushes == 1
        monkeypatch.undo()
        with pytest.raises(LogUnavailable, match="reopen"):  # even with the disk back: the page cache is suspect
            await producer.append("t", b"k", b"refused")
        assert await values(log, "g1") == [b"durable"]
    async with EmbeddedLog(tmp_path) as log:
        await log.producer().append("t", b"k", b"after reopen")
        assert await values(log, "g2") == [b"durable", b"after reopen"]


@WHERE
async def test_a_failed_write_is_rolled_back_and_the_log_keeps_working(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bound: float | None
) -> None:
    def half_then_full(fd: int, data: memoryview, position: int) -> int:
        if len(data) > 8:
            return os.pwrite(fd, data[: len(data) // 2], position)  # a short write; the retry hits ENOSPC
        raise OSError(errno.ENOSPC, "No space left on device")

    async with EmbeddedLog(tmp_path, limits=LogLimits(inline_flush_max_s=bound)) as log:
        producer = log.producer()
        await producer.append("t", b"k", b"first")
        monkeypatch.setattr(flush_io, "_pwrite", half_then_full)
        results = await asyncio.gather(
            *(producer.append("t", b"k", b"x" * 100) for _ in range(5)), return_exceptions=True
        )
        assert all(isinstance(r, LogUnavailable) and "No space" in str(r) for r in results), results
        monkeypatch.undo()
        await producer.append("t", b"k", b"second")  # no reopen needed, no gap in offsets
        consumer = log.consumer("g", ["t"])
        await consumer.start()
        records = await read_until_quiet(consumer, quiet_s=0.1)
        assert [(r.offset, r.value) for r in records] == [(0, b"first"), (1, b"second")]


async def test_appends_beyond_max_pending_are_refused_not_buffered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = threading.Event()
    real_sync = flush_io._sync

    def slow_sync(fd: int) -> None:
        disk.wait(10)
        real_sync(fd)

    monkeypatch.setattr(flush_io, "_sync", slow_sync)
    # On the flush thread, where a slow disk sends the flushes: the loop keeps taking appends meanwhile.
    async with EmbeddedLog(tmp_path, limits=LogLimits(max_pending_records=5, inline_flush_max_s=None)) as log:
        producer = log.producer()
        waiting = [asyncio.create_task(producer.append("t", b"k", str(i).encode())) for i in range(5)]
        await asyncio.sleep(0.05)  # the first flush is stuck in fsync, the rest queue behind it
        with pytest.raises(LogUnavailable, match="log full"):
            await producer.append("t", b"k", b"one too many")
        disk.set()
        await asyncio.gather(*waiting)
        await producer.append("t", b"k", b"room again")
        assert len(await values(log, "g")) == 6


async def test_a_record_over_the_size_limit_is_refused(tmp_path: Path) -> None:
    async with EmbeddedLog(tmp_path, limits=LogLimits(max_record_bytes=1024)) as log:
        with pytest.raises(LogError, match="max_record_bytes") as info:
            await log.producer().append("t", None, b"x" * 2000)
        assert not isinstance(info.value, LogUnavailable), "retrying cannot help: not retryable"


async def test_appends_started_in_order_are_stored_in_order(tmp_path: Path) -> None:
    async with EmbeddedLog(tmp_path) as log:
        producer = log.producer()
        await asyncio.gather(*(producer.append("t", b"session", str(i).encode()) for i in range(300)))
        assert [int(v) for v in await values(log, "g")] == list(range(300))


async def test_group_commit_batches_even_when_appenders_keep_coming(tmp_path: Path) -> None:
    async with EmbeddedLog(tmp_path) as log:
        producer = log.producer()

        async def appender(n: int) -> None:
            for i in range(25):
                await producer.append("t", f"k{n}".encode(), str(i).encode())

        await asyncio.gather(*(appender(n) for n in range(32)))
        stats = log.stats
        assert stats.records == 800
        assert stats.fsyncs == stats.flushes  # one partition: one fsync per flush
        assert stats.fsyncs <= 800 / 8, f"{stats.fsyncs} fsyncs for 800 appends from 32 appenders"


async def test_a_cancelled_append_leaves_the_log_working(tmp_path: Path) -> None:
    async with EmbeddedLog(tmp_path) as log:
        producer = log.producer()
        for topic in ("new", "new"):  # cancelled while the topic is created, then while waiting for the disk
            task = asyncio.create_task(producer.append(topic, b"k", b"maybe"))
            await asyncio.sleep(0)
            task.cancel()
            await producer.append(topic, b"k", b"surely")
        got = await values(log, "g", "new")
        assert got.count(b"surely") == 2 and set(got) <= {b"maybe", b"surely"}


async def test_closing_flushes_what_is_queued_and_refuses_later_appends(tmp_path: Path) -> None:
    log = EmbeddedLog(tmp_path)
    await log.open()
    await log.create_topic("t")
    producer = log.producer()
    pending = [asyncio.create_task(producer.append("t", b"k", str(i).encode())) for i in range(50)]
    await asyncio.sleep(0)
    await log.close()
    await asyncio.gather(*pending)  # all acknowledged: close waited for their flush
    with pytest.raises(LogUnavailable):
        await producer.append("t", b"k", b"late")
    async with EmbeddedLog(tmp_path) as log:
        assert len(await values(log, "g")) == 50


async def test_partitions_are_spread_by_key_and_fsynced_once_per_flush_each(tmp_path: Path) -> None:
    async with EmbeddedLog(tmp_path, partitions=3) as log:
        producer = log.producer()
        await producer.append_batch("t", [(f"k{i}".encode(), b"v") for i in range(30)])
        assert log.stats.flushes == 1
        assert log.stats.fsyncs == 3
        ends = await log.end_offsets("t")
        assert sum(ends.values()) == 30 and all(ends.values())


@pytest.mark.parametrize(("bound", "on_thread"), [(60.0, 0), (0.0, 9), (None, 10)])
async def test_a_flush_slower_than_the_bound_sends_the_next_ones_to_the_thread(
    tmp_path: Path, bound: float | None, on_thread: int
) -> None:
    async with EmbeddedLog(tmp_path, limits=LogLimits(inline_flush_max_s=bound)) as log:
        await log.create_topic("t")
        producer = log.producer()
        for i in range(10):
            await producer.append("t", b"k", str(i).encode())
        assert (log.stats.flushes, log.stats.thread_flushes) == (10, on_thread)
        assert await values(log, "g") == [str(i).encode() for i in range(10)]


async def test_an_append_to_an_idle_writer_is_durable_when_submit_returns(tmp_path: Path) -> None:
    # Nobody to share a flush with: the writer flushes inline at once, so the caller does not sleep.
    async with EmbeddedLog(tmp_path) as log:
        await log.create_topic("t")
        producer = log.producer()
        outcomes: list[LogError | None] = []
        assert producer.submit_batch("t", [(b"k", b"v0")], outcomes.append)
        assert outcomes == [None]
        assert log.stats.flushes == 1 and log.stats.records == 1
        # Appends made right after it (concurrent callers) are grouped as before: one flush, one pass later.
        assert producer.submit_batch("t", [(b"k", b"v1")], outcomes.append)
        assert producer.submit_batch("t", [(b"k", b"v2")], outcomes.append)
        assert outcomes == [None]
        await producer.append("t", b"k", b"v3")
        assert outcomes == [None, None, None]
        assert log.stats.flushes == 2
        assert await values(log, "g") == [b"v0", b"v1", b"v2", b"v3"]


async def test_after_a_shared_flush_a_lone_append_is_gathered_not_flushed_alone(tmp_path: Path) -> None:
    async with EmbeddedLog(tmp_path) as log:
        await log.create_topic("t")
        producer = log.producer()
        loop = asyncio.get_running_loop()
        settled = {v: loop.create_future() for v in (b"a", b"b", b"c", b"d")}

        def submit(value: bytes) -> None:
            assert producer.submit_batch("t", [(b"k", value)], settled[value].set_result)

        for value in (b"a", b"b", b"c"):  # "a" finds the writer idle; "b" and "c" share the next flush
            submit(value)
        await asyncio.gather(settled[b"b"], settled[b"c"])
        assert log.stats.flushes == 2
        await asyncio.sleep(0.05)  # the writer goes idle
        submit(b"d")
        assert not settled[b"d"].done(), "flushed alone at once although the last flush was shared"
        assert await settled[b"d"] is None
        assert log.stats.flushes == 3
        assert await values(log, "g") == [b"a", b"b", b"c", b"d"]


async def test_one_caller_at_a_time_is_flushed_at_once_however_soon_it_comes_back(tmp_path: Path) -> None:
    # At concurrency 1 a call's next append comes an upstream round trip after its last flush, often
    # sooner than a flush takes: two lone flushes in a row say nobody else is appending.
    async with EmbeddedLog(tmp_path, limits=LogLimits(inline_flush_max_s=60.0)) as log:
        await log.create_topic("t")
        producer = log.producer()
        loop = asyncio.get_running_loop()
        settled = {v: loop.create_future() for v in (b"a", b"b", b"c", b"d", b"e", b"f")}

        def submit(value: bytes) -> None:
            assert producer.submit_batch("t", [(b"k", value)], settled[value].set_result)

        submit(b"a")
        submit(b"b")  # shares the next flush with "c"
        submit(b"c")
        await asyncio.gather(settled[b"b"], settled[b"c"])
        await asyncio.sleep(0)  # the writer goes idle (one loop pass after its last flush)
        submit(b"d")
        assert not settled[b"d"].done(), "after a shared flush a lone append is gathered"
        await settled[b"d"]
        await asyncio.sleep(0)
        submit(b"e")
        assert not settled[b"e"].done(), "one lone flush is not yet one caller at a time"
        await settled[b"e"]
        await asyncio.sleep(0)
        submit(b"f")
        assert settled[b"f"].done(), "after two lone flushes an append is flushed inside submit"
        assert log.stats.flushes == 5
        assert await values(log, "g") == [b"a", b"b", b"c", b"d", b"e", b"f"]
