"""The embedded log's producer and consumer, satisfying `eventlog.base.Producer` / `Consumer`."""

from __future__ import annotations

import asyncio
import contextlib
import zlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from eventlog.base import LogCorrupt, LogUnavailable, Record, TopicPartition
from eventlog.embedded.offsets import GroupOffsets
from eventlog.embedded.partition import PartitionLog
from eventlog.embedded.reader import PartitionCursor
from eventlog.embedded.writer import Entry, Settle

if TYPE_CHECKING:
    from eventlog.embedded.log import EmbeddedLog


class EmbeddedProducer:
    """A handle on the log's one group-commit writer; any number may share it (and its flushes).

    The partition of a keyed record is CRC-32(key) mod partitions, so a key always lands in the
    same partition and keeps its order; records without a key go round-robin.
    """

    def __init__(self, log: EmbeddedLog) -> None:
        self._log = log
        self._round_robin = 0

    async def start(self) -> None:
        self._log.check_writable()

    async def append(self, topic: str, key: bytes | None, value: bytes) -> None:
        await self.append_batch(topic, [(key, value)])

    async def append_batch(self, topic: str, records: Sequence[tuple[bytes | None, bytes]]) -> None:
        if not records:
            return
        writer = self._log.check_writable()
        partitions = await self._log.partitions(topic)
        await writer.append(self._entries(partitions, records))

    def submit_batch(self, topic: str, records: Sequence[tuple[bytes | None, bytes]], settle: Settle) -> bool:
        """`append_batch` without a task of its own: take the records now and call `settle` later.

        `settle(None)` runs on the loop once they are durable, `settle(error)` if they never will be
        (exactly once, whatever happens to the caller). Returns False, taking nothing, when the
        topic is not open yet (its creation needs a thread): use `append_batch` then. Raises what
        `append_batch` raises when the records cannot be taken at all.
        """
        writer = self._log.check_writable()
        partitions = self._log.open_partitions(topic)
        if partitions is None:
            return False
        if records:
            writer.submit(self._entries(partitions, records), settle)
        else:
            settle(None)
        return True

    def _entries(self, partitions: list[PartitionLog], records: Sequence[tuple[bytes | None, bytes]]) -> list[Entry]:
        n = len(partitions)
        if n == 1:
            only = partitions[0]
            return [(only, key, value) for key, value in records]
        entries: list[Entry] = []
        for key, value in records:
            if key is None:
                self._round_robin += 1
                p = self._round_robin % n
            else:
                p = zlib.crc32(key) % n
            entries.append((partitions[p], key, value))
        return entries

    async def close(self) -> None:
        """Nothing to release: the log owns the writer (closing the log flushes what is queued)."""


class EmbeddedConsumer:
    """The only member of its group, so it is assigned every partition of its topics.

    Starts at the group's committed offsets, or at the earliest retained offset where none is
    committed (the log is the source of truth: a new projection replays everything). Positions are
    not committed automatically; a crash before `commit` replays, never skips.
    """

    def __init__(self, log: EmbeddedLog, group_id: str, topics: Sequence[str]) -> None:
        self._log = log
        self.group_id = group_id
        self._topics = list(dict.fromkeys(topics))
        self._offsets = GroupOffsets(log.root, group_id)
        self._committed: dict[TopicPartition, int] = {}
        self._cursors: dict[TopicPartition, PartitionCursor] = {}
        self._started = False
        self._closed = False
        self._turn = 0
        self._topic_set = frozenset(self._topics)
        self._appended = asyncio.Event()  # set by the log when records of our topics become readable

    async def start(self) -> None:
        self._log.check_open()
        if self._started:
            return
        self._offsets.acquire()
        try:
            self._committed = self._offsets.load()
            await self._discover()
        except BaseException:
            self._offsets.release()
            raise
        self._started = True
        self._log.register(self)

    async def poll(self, max_records: int, timeout_s: float) -> list[Record]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(timeout_s, 0.0)
        appended = self._appended
        while True:
            self._check()
            appended.clear()  # before reading, so records made readable after the read wake the wait
            if self._log.read_only:
                await self._discover()
            records = self._read(max(max_records, 1))
            if records:
                return records
            remaining = deadline - loop.time()
            if remaining <= 0:
                return []
            if self._log.read_only:
                remaining = min(remaining, self._log.config.poll_interval_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(appended.wait(), remaining)

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        self._check()
        for tp, offset in offsets.items():
            if tp.topic not in self._topics or offset < 0:
                raise ValueError(f"cannot commit {tp}@{offset}: not a partition of {self._topics} or negative")
        self._committed.update(offsets)
        await self._offsets.save(self._committed)

    async def committed(self, partition: TopicPartition) -> int | None:
        self._check()
        return self._committed.get(partition)

    async def seek_to_beginning(self) -> None:
        self._check()
        for cursor in self._cursors.values():
            cursor.seek(cursor.plog.start_offset)

    def assignment(self) -> set[TopicPartition]:
        return set(self._cursors)

    def reads_any(self, topics: set[str]) -> bool:
        return not self._topic_set.isdisjoint(topics)

    def wake(self) -> None:
        """The log made records readable (or closed): a waiting `poll` looks again."""
        self._appended.set()

    def committed_offsets(self) -> dict[TopicPartition, int]:
        """The group's committed offsets, from memory: those loaded at `start`, then each `commit`'s
        (a commit's own from when it was called, before its write is durable)."""
        return dict(self._committed)

    def position(self, partition: TopicPartition) -> int:
        """The offset the next `poll` reads in this partition (not a protocol method)."""
        return self._cursors[partition].next_offset

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for cursor in self._cursors.values():
            cursor.close()
        self._offsets.release()
        self._log.unregister(self)

    def _check(self) -> None:
        if self._closed:
            raise LogUnavailable(f"consumer of group {self.group_id!r} is closed")
        if not self._started:
            raise LogUnavailable(f"consumer of group {self.group_id!r} is not started")
        self._log.check_open()

    async def _discover(self) -> None:
        """Assign every partition of the topics (a read-only log sees topics appear later)."""
        max_body = self._log.config.limits.max_record_bytes
        for topic in self._topics:
            partitions = await self._log.partitions(topic, create=not self._log.read_only)
            for plog in partitions:
                tp = TopicPartition(topic, plog.partition)
                if tp not in self._cursors:
                    start = self._committed.get(tp, plog.start_offset)
                    self._cursors[tp] = PartitionCursor(plog, max_body, start)

    def _read(self, max_records: int) -> list[Record]:
        cursors = list(self._cursors.values())
        if not cursors:
            return []
        # Start at a different partition each poll so one busy partition cannot starve the rest.
        self._turn = (self._turn + 1) % len(cursors)
        out: list[Record] = []
        for cursor in cursors[self._turn :] + cursors[: self._turn]:
            try:
                out.extend(cursor.read(max_records - len(out)))
            except LogCorrupt:
                if out:
                    # Return what was read (those cursors moved on); the rotation makes the damaged
                    # partition come first in a later poll, where the error is raised with nothing lost.
                    return out
                raise
            if len(out) >= max_records:
                break
        return out
