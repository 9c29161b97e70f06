"""Embedded log: what a crash or damaged disk leaves behind is detected, never read as an event."""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import pytest

from eventlog.base import LogCorrupt, Record, TopicPartition
from eventlog.embedded import EmbeddedLog
from eventlog.embedded.segment import OVERHEAD
from tests.eventlog.backends import read_until_quiet

_groups = itertools.count()


def first_segment(root: Path, topic: str = "t", partition: int = 0) -> Path:
    return root / topic / str(partition) / f"{0:020d}.log"


async def read_everything(log: EmbeddedLog, topic: str = "t") -> list[Record]:
    consumer = log.consumer(f"check-{next(_groups)}", [topic])
    await consumer.start()
    try:
        return await read_until_quiet(consumer, quiet_s=0.1)
    finally:
        await consumer.close()


async def append_one_by_one(root: Path, n: int, **options: object) -> None:
    async with EmbeddedLog(root, **options) as log:  # type: ignore[arg-type]
        producer = log.producer()
        for i in range(n):
            await producer.append("t", b"k", f"record-{i:02d}".encode())


def flip_byte(path: Path, position: int) -> None:
    data = bytearray(path.read_bytes())
    data[position] ^= 0x55
    path.write_bytes(bytes(data))


async def test_a_torn_tail_is_truncated_and_every_complete_record_survives(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    await append_one_by_one(tmp_path, 20)
    seg = first_segment(tmp_path)
    data = seg.read_bytes()
    record_size = OVERHEAD + len(b"k") + len(b"record-19")
    garbage = b"\xc7\x10\x00\x00\x01\x00garbage"
    seg.write_bytes(data[:-5] + garbage)  # the last record cut short, then junk, as a crash mid-write leaves
    torn = record_size - 5 + len(garbage)

    with caplog.at_level(logging.WARNING, logger="mcpgw.eventlog.embedded"):
        async with EmbeddedLog(tmp_path) as log:
            assert f"truncating {torn} bytes" in caplog.text
            records = await read_everything(log)
            assert [r.value for r in records] == [f"record-{i:02d}".encode() for i in range(19)]
            assert [r.offset for r in records] == list(range(19))
            await log.producer().append("t", b"k", b"after")
            assert (await log.end_offsets("t"))[TopicPartition("t", 0)] == 20
            last = (await read_everything(log))[-1]
            assert (last.offset, last.value) == (19, b"after")
    assert seg.stat().st_size == len(data) - record_size + OVERHEAD + len(b"k") + len(b"after")


@pytest.mark.parametrize("tail", [b"\xc7", b"\xc7\x10\x00\x00", b"\x00" * 4096, b"\xff" * 37])
async def test_junk_after_the_last_record_is_dropped(tmp_path: Path, tail: bytes) -> None:
    await append_one_by_one(tmp_path, 5)
    seg = first_segment(tmp_path)
    clean = seg.stat().st_size
    with seg.open("ab") as f:
        f.write(tail)
    async with EmbeddedLog(tmp_path) as log:
        assert len(await read_everything(log)) == 5
        assert seg.stat().st_size == clean
        await log.producer().append("t", b"k", b"next")
        assert [r.offset for r in await read_everything(log)] == list(range(6))


async def test_preallocated_zeros_left_by_a_writer_that_died_are_dropped_without_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    await append_one_by_one(tmp_path, 5)
    seg = first_segment(tmp_path)
    clean = seg.stat().st_size
    with seg.open("ab") as f:
        f.write(bytes(1 << 20))  # what a killed writer leaves after its last flush
    with caplog.at_level(logging.INFO, logger="mcpgw.eventlog.embedded"):
        async with EmbeddedLog(tmp_path) as log:
            assert [r.offset for r in await read_everything(log)] == list(range(5))
            await log.producer().append("t", b"k", b"next")
            assert [r.value for r in await read_everything(log)][-1] == b"next"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert f"dropping {1 << 20} preallocated bytes" in caplog.text
    assert seg.stat().st_size == clean + OVERHEAD + len(b"k") + len(b"next")


async def test_a_torn_frame_in_preallocated_space_is_truncated_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    await append_one_by_one(tmp_path, 5)
    seg = first_segment(tmp_path)
    clean = seg.stat().st_size
    with seg.open("ab") as f:
        f.write(b"\xc7\x10\x00\x00\x00\x40torn" + bytes(8192))  # a frame cut short, then unused zeros
    with caplog.at_level(logging.WARNING, logger="mcpgw.eventlog.embedded"):
        async with EmbeddedLog(tmp_path) as log:
            assert f"truncating {10 + 8192} bytes" in caplog.text
            assert [r.offset for r in await read_everything(log)] == list(range(5))
    assert seg.stat().st_size == clean


async def test_a_hole_inside_the_last_unacknowledged_flush_is_a_torn_tail(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with EmbeddedLog(tmp_path) as log:
        producer = log.producer()
        for i in range(5):
            await producer.append("t", b"k", f"single-{i}".encode())
        await producer.append_batch("t", [(b"k", f"batched-{i}".encode()) for i in range(10)])
    seg = first_segment(tmp_path)
    single, batched = OVERHEAD + 1 + len(b"single-0"), OVERHEAD + 1 + len(b"batched-0")
    # Power loss can persist later pages of a flush but not earlier ones: damage the 3rd batched record.
    flip_byte(seg, 5 * single + 2 * batched + OVERHEAD + 3)
    with caplog.at_level(logging.WARNING, logger="mcpgw.eventlog.embedded"):
        async with EmbeddedLog(tmp_path) as log:
            values = [r.value for r in await read_everything(log)]
    assert values == [f"single-{i}".encode() for i in range(5)] + [b"batched-0", b"batched-1"]
    assert f"truncating {8 * batched} bytes" in caplog.text


async def test_damage_to_acknowledged_records_of_the_active_segment_refuses_to_open(tmp_path: Path) -> None:
    await append_one_by_one(tmp_path, 10)
    seg = first_segment(tmp_path)
    size = seg.stat().st_size
    flip_byte(seg, OVERHEAD + 4)  # inside the first record; nine later flushes prove it was durable
    with pytest.raises(LogCorrupt, match="refusing to truncate"):
        await EmbeddedLog(tmp_path).open()
    assert seg.stat().st_size == size, "nothing may be truncated"
    # The failed open released its lock: once the file is restored the log opens.
    flip_byte(seg, OVERHEAD + 4)
    async with EmbeddedLog(tmp_path) as log:
        assert len(await read_everything(log)) == 10


async def test_a_corrupt_record_in_a_closed_segment_raises_on_read(tmp_path: Path) -> None:
    await append_one_by_one(tmp_path, 30, segment_bytes=256)
    segments = sorted((tmp_path / "t" / "0").glob("*.log"))
    assert len(segments) >= 3
    record = OVERHEAD + 1 + len(b"record-00")
    flip_byte(segments[0], 2 * record + OVERHEAD + 2)  # the value of the 3rd record
    async with EmbeddedLog(tmp_path, segment_bytes=256) as log:  # opens: only the last segment is checked
        consumer = log.consumer("g", ["t"])
        await consumer.start()
        good = await consumer.poll(100, 0.1)
        assert [r.offset for r in good] == [0, 1]  # the records before the damage come first
        with pytest.raises(LogCorrupt, match=r"checksum mismatch at byte"):
            await consumer.poll(100, 0.1)
        with pytest.raises(LogCorrupt):  # and again: never skipped
            await consumer.poll(100, 0.1)


async def test_a_committed_position_past_a_truncated_tail_resumes_at_the_end(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with EmbeddedLog(tmp_path) as log:
        producer = log.producer()
        for i in range(4):
            await producer.append("t", b"k", f"r{i}".encode())
        consumer = log.consumer("g", ["t"])
        await consumer.start()
        await consumer.commit({TopicPartition("t", 0): 4})
    seg = first_segment(tmp_path)
    seg.write_bytes(seg.read_bytes()[: -(OVERHEAD + 3)])  # the last record vanished entirely
    with caplog.at_level(logging.WARNING, logger="mcpgw.eventlog.embedded"):
        async with EmbeddedLog(tmp_path) as log:
            consumer = log.consumer("g", ["t"])
            await consumer.start()
            assert await consumer.poll(10, 0.05) == []
            assert "past the end of the log" in caplog.text
            await log.producer().append("t", b"k", b"new")
            assert [(r.offset, r.value) for r in await consumer.poll(10, 1.0)] == [(3, b"new")]


async def test_unreadable_committed_offsets_are_reported(tmp_path: Path) -> None:
    async with EmbeddedLog(tmp_path) as log:
        consumer = log.consumer("g", ["t"])
        await consumer.start()
        await consumer.commit({TopicPartition("t", 0): 0})
        await consumer.close()
        (tmp_path / ".groups" / "g.json").write_bytes(b'{"offsets": {"t": {"0": "x')
        with pytest.raises(LogCorrupt, match="committed offsets"):
            await log.consumer("g", ["t"]).start()
