"""Embedded log: the directory lock, read-only readers, groups, topic layout, retention, compaction."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path

import pytest

from eventlog.base import TOPIC_DECISIONS, LogError, LogUnavailable, TopicPartition
from eventlog.embedded import EmbeddedLog, LogLocked, Retention, TopicConfig
from eventlog.embedded.segment import OVERHEAD, encode, scan_tail
from tests.eventlog.backends import next_offsets, read_n, read_until_quiet


async def test_a_second_writer_on_the_same_directory_is_refused(tmp_path: Path) -> None:
    async with EmbeddedLog(tmp_path):
        with pytest.raises(LogLocked, match=f"pid {os.getpid()}"):
            await EmbeddedLog(tmp_path).open()
    async with EmbeddedLog(tmp_path) as again:  # released on close
        await again.producer().append("t", None, b"ok")


async def test_a_read_only_log_sees_another_writers_records_across_segment_rolls(tmp_path: Path) -> None:
    async with EmbeddedLog(tmp_path, segment_bytes=300) as writer_log:
        producer = writer_log.producer()
        await producer.append("t", b"k", b"before the reader")
        async with EmbeddedLog(tmp_path, read_only=True, poll_interval_s=0.01) as reader_log:
            with pytest.raises(LogError):
                reader_log.producer()
            consumer = reader_log.consumer("g", ["t"])
            await consumer.start()
            assert [r.value for r in await read_n(consumer, 1)] == [b"before the reader"]
            for i in range(40):  # ~10 segments: the reader must follow the rolls it only sees on disk
                await producer.append("t", b"k", f"v{i:02d}".encode() + b"." * 40)
            records = await read_n(consumer, 40, timeout_s=5)
            assert [r.value[:3] for r in records] == [f"v{i:02d}".encode() for i in range(40)]
            assert len(list((tmp_path / "t" / "0").glob("*.log"))) > 5
            await consumer.commit(next_offsets(records))  # a read-only log still keeps group offsets
        consumer = writer_log.consumer("g", ["t"])
        await consumer.start()
        assert await consumer.poll(10, 0.05) == []


async def test_a_read_only_log_waits_for_topics_that_do_not_exist_yet(tmp_path: Path) -> None:
    async with EmbeddedLog(tmp_path) as writer_log, EmbeddedLog(tmp_path, read_only=True, poll_interval_s=0.01) as ro:
        consumer = ro.consumer("g", ["later"])
        await consumer.start()
        assert consumer.assignment() == set()
        await writer_log.producer().append("later", b"k", b"v")
        assert [r.value for r in await read_n(consumer, 1)] == [b"v"]
        assert consumer.assignment() == {TopicPartition("later", 0)}


async def test_a_group_has_one_member_at_a_time(tmp_path: Path) -> None:
    async with EmbeddedLog(tmp_path) as log:
        first = log.consumer("audit", ["t"])
        await first.start()
        with pytest.raises(LogUnavailable, match="already has an active member"):
            await log.consumer("audit", ["t"]).start()
        await first.close()
        second = log.consumer("audit", ["t"])
        await second.start()  # the member left: another may join


async def test_the_partition_count_is_fixed_at_creation(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with EmbeddedLog(tmp_path, partitions=2) as log:
        await log.producer().append_batch("t", [(f"k{i}".encode(), b"v") for i in range(10)])
    with caplog.at_level(logging.WARNING, logger="mcpgw.eventlog.embedded"):
        async with EmbeddedLog(tmp_path, partitions=5) as log:
            assert set(await log.end_offsets("t")) == {TopicPartition("t", 0), TopicPartition("t", 1)}
            await log.producer().append("u", b"k", b"v")
            assert len(await log.end_offsets("u")) == 5  # new topics take the new setting
    assert "keeps its 2 partitions (configured: 5)" in caplog.text


async def test_invalid_topic_names_are_refused(tmp_path: Path) -> None:
    async with EmbeddedLog(tmp_path) as log:
        for bad in ("", ".groups", "a/b", "..", "x" * 300):
            with pytest.raises(ValueError, match="invalid topic name"):
                await log.producer().append(bad, None, b"v")


async def test_retention_by_age_deletes_closed_segments_and_readers_resume_at_the_earliest(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with EmbeddedLog(
        tmp_path, segment_bytes=200, retention=Retention(max_age_s=3600), retention_interval_s=None
    ) as log:
        producer = log.producer()
        for i in range(30):
            await producer.append("t", b"k", f"{i:02d}".encode() + b"." * 40)
        segments = sorted((tmp_path / "t" / "0").glob("*.log"))
        assert len(segments) > 3
        assert log.enforce_retention() == 0  # nothing is an hour old yet
        dropped = log.enforce_retention(now=time.time() + 7200)
        remaining = sorted((tmp_path / "t" / "0").glob("*.log"))
        assert remaining == segments[-1:], "every closed segment goes, the active one stays"
        assert dropped == int(remaining[0].stem)
        assert (await log.beginning_offsets("t"))[TopicPartition("t", 0)] == dropped
        consumer = log.consumer("late", ["t"])
        await consumer.start()
        await consumer.commit({TopicPartition("t", 0): 1})
        await consumer.close()
        consumer = log.consumer("late", ["t"])
        await consumer.start()
        with caplog.at_level(logging.WARNING, logger="mcpgw.eventlog.embedded"):
            records = await read_until_quiet(consumer, quiet_s=0.1)
        assert [r.offset for r in records] == list(range(dropped, 30))
        assert f"offset 1 was deleted by retention; resuming at the earliest retained offset {dropped}" in caplog.text


async def test_retention_by_size_never_deletes_the_active_segment(tmp_path: Path) -> None:
    async with EmbeddedLog(tmp_path, segment_bytes=200, retention=Retention(max_bytes=0)) as log:
        producer = log.producer()
        for i in range(20):
            await producer.append("t", b"k", f"{i:02d}".encode() + b"." * 40)
        log.enforce_retention()
        assert len(list((tmp_path / "t" / "0").glob("*.log"))) == 1
        await producer.append("t", b"k", b"still appending")
        consumer = log.consumer("g", ["t"])
        await consumer.start()
        assert (await read_until_quiet(consumer, quiet_s=0.1))[-1].value == b"still appending"


async def test_a_reader_in_a_segment_being_deleted_resumes_at_the_earliest(tmp_path: Path) -> None:
    async with EmbeddedLog(tmp_path, segment_bytes=200, retention=Retention(max_bytes=400)) as log:
        producer = log.producer()
        for i in range(30):
            await producer.append("t", b"k", f"{i:02d}".encode() + b"." * 40)
        consumer = log.consumer("g", ["t"])
        await consumer.start()
        first = await consumer.poll(2, 0.1)
        assert [r.offset for r in first] == [0, 1]
        log.enforce_retention()
        rest = await read_until_quiet(consumer, quiet_s=0.1)
        start = (await log.beginning_offsets("t"))[TopicPartition("t", 0)]
        assert start > 2 and [r.offset for r in rest] == list(range(start, 30))


async def test_a_compacted_topic_keeps_every_record_and_folds_to_the_latest_per_key(tmp_path: Path) -> None:
    async with EmbeddedLog(
        tmp_path, segment_bytes=200, retention=Retention(max_bytes=0, max_age_s=0), partitions=3
    ) as log:
        producer = log.producer()
        for i in range(30):
            await producer.append(TOPIC_DECISIONS, f"principal:p{i % 4}".encode(), f"block-{i}".encode())
        await producer.append(TOPIC_DECISIONS, None, b"unkeyed")
        assert log.enforce_retention(now=time.time() + 10) == 0  # compacted: retention never trims it
        latest = await log.latest_by_key(TOPIC_DECISIONS)
        assert {k: r.value for k, r in latest.items()} == {
            b"principal:p0": b"block-28", b"principal:p1": b"block-29",
            b"principal:p2": b"block-26", b"principal:p3": b"block-27",
        }  # fmt: skip
        consumer = log.consumer("g", [TOPIC_DECISIONS])
        await consumer.start()
        assert len(await read_until_quiet(consumer, quiet_s=0.1)) == 31


async def test_a_topic_can_be_configured_as_compacted(tmp_path: Path) -> None:
    topics = {"state": TopicConfig(compacted=True, partitions=2)}
    async with EmbeddedLog(tmp_path, segment_bytes=100, retention=Retention(max_bytes=0), topics=topics) as log:
        for i in range(10):
            await log.producer().append("state", b"key", str(i).encode())
        log.enforce_retention()
        assert (await log.latest_by_key("state"))[b"key"].value == b"9"
        assert sum((await log.end_offsets("state")).values()) == 10
        assert sum((await log.beginning_offsets("state")).values()) == 0


async def test_using_a_closed_log_raises_log_unavailable(tmp_path: Path) -> None:
    log = EmbeddedLog(tmp_path)
    await log.open()
    consumer = log.consumer("g", ["t"])
    await consumer.start()
    producer = log.producer()
    await log.close()
    with pytest.raises(LogUnavailable):
        await producer.append("t", None, b"v")
    with pytest.raises(LogUnavailable):
        await consumer.poll(1, 0.01)
    with pytest.raises(LogUnavailable):
        await log.consumer("g", ["t"]).start()


async def test_records_larger_than_a_read_chunk_round_trip(tmp_path: Path) -> None:
    big = os.urandom(3 * 1024 * 1024)
    async with EmbeddedLog(tmp_path, segment_bytes=1024 * 1024) as log:
        producer = log.producer()
        await producer.append_batch("t", [(b"k", b"small-0"), (b"k", big), (b"k", b"small-1")])
        await producer.append("t", b"k", big)
        consumer = log.consumer("g", ["t"])
        await consumer.start()
        records = await read_n(consumer, 4)
        assert [r.value for r in records] == [b"small-0", big, b"small-1", big]
        await consumer.commit({TopicPartition("t", 0): 2})
    async with EmbeddedLog(tmp_path) as log:  # resuming behind a big record seeks over it
        consumer = log.consumer("g", ["t"])
        await consumer.start()
        assert [r.value for r in await read_n(consumer, 2)] == [b"small-1", big]


async def test_resuming_deep_inside_a_large_segment(tmp_path: Path) -> None:
    async with EmbeddedLog(tmp_path) as log:
        producer = log.producer()
        for chunk in range(20):
            await producer.append_batch("t", [(b"k", f"{chunk * 100 + i:05d}".encode() * 40) for i in range(100)])
        consumer = log.consumer("g", ["t"])
        await consumer.start()
        await consumer.commit({TopicPartition("t", 0): 1501})
    for _ in range(2):  # after a restart the sparse index is rebuilt by the first seek
        async with EmbeddedLog(tmp_path) as log:
            consumer = log.consumer("g", ["t"])
            await consumer.start()
            first = (await read_n(consumer, 1))[0]
            assert (first.offset, first.value[:5]) == (1501, b"01501")
            await consumer.seek_to_beginning()
            assert (await read_n(consumer, 1))[0].offset == 0


async def test_a_read_only_reader_waits_for_a_frame_still_being_written(tmp_path: Path) -> None:
    async with EmbeddedLog(tmp_path) as log:
        await log.producer().append("t", b"k", b"complete")
    seg = tmp_path / "t" / "0" / f"{0:020d}.log"
    frame = encode(1, int(time.time() * 1000), seg.stat().st_size, b"k", b"written in two steps")
    async with EmbeddedLog(tmp_path, read_only=True, poll_interval_s=0.01) as reader:
        consumer = reader.consumer("g", ["t"])
        await consumer.start()
        with seg.open("ab") as f:
            f.write(frame[:20])
        assert [r.value for r in await read_until_quiet(consumer, quiet_s=0.05)] == [b"complete"]
        with seg.open("ab") as f:
            f.write(frame[20:])
        assert [r.value for r in await read_n(consumer, 1)] == [b"written in two steps"]


async def test_cancelled_commits_never_leave_a_torn_offsets_file(tmp_path: Path) -> None:
    tp = TopicPartition("t", 0)
    async with EmbeddedLog(tmp_path) as log:
        consumer = log.consumer("g", ["t"])
        await consumer.start()
        for n in range(20):
            task = asyncio.create_task(consumer.commit({tp: n}))
            await asyncio.sleep(0)
            if n % 2:
                task.cancel()
        await consumer.commit({tp: 100})
        await consumer.close()
        again = log.consumer("g", ["t"])
        await again.start()
        assert await again.committed(tp) == 100


async def test_the_active_segment_is_preallocated_and_cut_back_to_its_records_on_close(tmp_path: Path) -> None:
    seg = tmp_path / "t" / "0" / f"{0:020d}.log"
    values = [f"record-{i}".encode() for i in range(3)]
    async with EmbeddedLog(tmp_path) as log:
        producer = log.producer()
        for value in values:
            await producer.append("t", b"k", value)
        records_size = 3 * (OVERHEAD + 1 + len(values[0]))
        assert seg.stat().st_size > records_size, "zeros written ahead of the records"
        # Another process's reader sees the zeros as "not written yet", never as damage.
        async with EmbeddedLog(tmp_path, read_only=True, poll_interval_s=0.01) as reader_log:
            assert (await reader_log.end_offsets("t"))[TopicPartition("t", 0)] == 3
            consumer = reader_log.consumer("g", ["t"])
            await consumer.start()
            assert [r.value for r in await read_until_quiet(consumer, quiet_s=0.05)] == values
            await producer.append("t", b"k", b"later")
            assert [r.value for r in await read_n(consumer, 1)] == [b"later"]
            assert await consumer.poll(10, 0.05) == []
    assert seg.stat().st_size == records_size + OVERHEAD + 1 + len(b"later")


async def test_a_rolled_segment_ends_at_its_last_record(tmp_path: Path) -> None:
    async with EmbeddedLog(tmp_path, segment_bytes=1000) as log:
        producer = log.producer()
        for i in range(60):
            await producer.append("t", b"k", f"v{i:02d}".encode() + b"." * 40)
        segments = sorted((tmp_path / "t" / "0").glob("*.log"))
        assert len(segments) > 2
        for n, path in enumerate(segments[:-1]):  # checked while the writer is still open
            scan = scan_tail(path, int(path.stem), 1 << 20)
            assert (scan.bad_bytes, scan.valid_size) == (0, path.stat().st_size), path.name
            assert scan.next_offset == int(segments[n + 1].stem)
