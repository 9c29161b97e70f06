"""`EmbeddedLog`: a directory of topics, a single-writer lock, one group-commit writer, retention.

Layout under `root`:

    .lock                                   flock'd by the one process that appends (holds its pid)
    .groups/<group>.json, <group>.lock      committed offsets per consumer group, member lock
    <topic>/topic.json                      partition count fixed at creation
    <topic>/<partition>/<base:020d>.log     segments (the active one preallocated with zeros while open)

Opened `read_only=True` (no lock, no recovery, never writes records), the log serves consumers in
another process than the writer; they notice new records by looking at the files every
`poll_interval_s`. Consumers in the writer's own process are woken by each flush at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from eventlog.base import LogCorrupt, LogError, LogUnavailable, Record, TopicPartition
from eventlog.embedded.config import LogConfig, LogLimits, MiB, Retention, TopicConfig, check_topic_name
from eventlog.embedded.consumer import EmbeddedConsumer, EmbeddedProducer
from eventlog.embedded.partition import PartitionLog, fsync_dir
from eventlog.embedded.reader import read_all
from eventlog.embedded.segment import locate
from eventlog.embedded.writer import GroupCommitWriter, LogStats

log = logging.getLogger("mcpgw.eventlog.embedded")


class LogLocked(LogUnavailable):
    """Another process (or another `EmbeddedLog` in this one) is appending to this directory."""


class EmbeddedLog:
    def __init__(
        self,
        root: Path | str,
        partitions: int = 1,
        segment_bytes: int = 64 * MiB,
        retention: Retention | None = None,
        *,
        topics: Mapping[str, TopicConfig] | None = None,
        limits: LogLimits | None = None,
        read_only: bool = False,
        poll_interval_s: float = 0.05,
        retention_interval_s: float | None = 60.0,
    ) -> None:
        base = LogConfig()
        self.root = Path(root)
        self.read_only = read_only
        self.config = LogConfig(
            partitions=partitions,
            segment_bytes=segment_bytes,
            retention=retention or Retention(),
            topics={**base.topics, **(topics or {})},
            limits=limits or LogLimits(),
            poll_interval_s=poll_interval_s,
            retention_interval_s=retention_interval_s,
        )
        self._topics: dict[str, list[PartitionLog]] = {}
        self._creating: dict[str, asyncio.Task[list[PartitionLog]]] = {}
        self._writer: GroupCommitWriter | None = None
        self._lock_fd: int | None = None
        self._consumers: set[EmbeddedConsumer] = set()
        self._retention_task: asyncio.Task[None] | None = None
        self._open = False

    # -- lifecycle -----------------------------------------------------------------------------

    async def open(self) -> None:
        if self._open:
            return
        if not self.read_only:
            await asyncio.to_thread(self._open_writable)
            self._writer = GroupCommitWriter(self.config.limits, self._notify)
            self._writer.start()
            if self.config.retention_interval_s is not None:
                self._retention_task = asyncio.create_task(self._retention_loop(), name="eventlog-retention")
        self._open = True

    async def close(self) -> None:
        """Flush queued appends, stop consumers, release the lock. Reopen with `open()`."""
        if not self._open:
            return
        if self._writer is not None:
            await self._writer.close()
        self._open = False
        if self._retention_task is not None:
            self._retention_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retention_task
        for consumer in list(self._consumers):
            await consumer.close()
        self._notify(None)  # wake polls so they observe the close
        for partitions in self._topics.values():
            for p in partitions:
                p.close()
        self._topics.clear()
        self._writer = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    async def __aenter__(self) -> EmbeddedLog:
        await self.open()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def _open_writable(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise LogLocked(f"event log {self.root} is locked by another writer (pid {holder})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._lock_fd = fd
        try:
            for entry in sorted(os.scandir(self.root), key=lambda e: e.name):
                if entry.is_dir() and (Path(entry.path) / "topic.json").exists():
                    self._topics[entry.name] = self._load_topic(entry.name, create=True)
        except BaseException:
            for partitions in self._topics.values():
                for p in partitions:
                    p.close()
            self._topics.clear()
            os.close(fd)
            self._lock_fd = None
            raise

    # -- the handles ---------------------------------------------------------------------------

    def producer(self) -> EmbeddedProducer:
        if self.read_only:
            raise LogError(f"event log {self.root} is open read-only")
        return EmbeddedProducer(self)

    def consumer(self, group_id: str, topics: Sequence[str]) -> EmbeddedConsumer:
        for topic in topics:
            check_topic_name(topic)
        return EmbeddedConsumer(self, group_id, topics)

    @property
    def stats(self) -> LogStats:
        """Flush and fsync counters of the current opening (empty for a read-only log)."""
        return self._writer.stats if self._writer is not None else LogStats()

    # -- topics, queries and maintenance --------------------------------------------------------

    async def create_topic(self, topic: str, config: TopicConfig | None = None) -> None:
        """Set a topic's configuration and create it now (else it is created at first use).

        A topic that already exists on disk keeps its partition count (see `TopicConfig`).
        """
        check_topic_name(topic)
        if config is not None:
            self.config.topics[topic] = config
        if not self.read_only:
            await self.partitions(topic)


    async def beginning_offsets(self, topic: str) -> dict[TopicPartition, int]:
        return {TopicPartition(topic, p.partition): p.start_offset for p in await self.partitions(topic, create=False)}

    async def end_offsets(self, topic: str) -> dict[TopicPartition, int]:
        """Per partition, the offset the next record will get (a read-only log counts whole frames)."""
        out: dict[TopicPartition, int] = {}
        for p in await self.partitions(topic, create=False):
            if p.writable or not p.segments:
                out[TopicPartition(topic, p.partition)] = p.high_watermark
                continue
            seg = p.active
            fd = os.open(seg.path, os.O_RDONLY)
            try:
                out[TopicPartition(topic, p.partition)] = locate(fd, seg.index, seg.base_offset, 2**63, seg.size)[1]
            finally:
                os.close(fd)
        return out

    async def latest_by_key(self, topic: str) -> dict[bytes, Record]:
        """The latest record of every key (what Kafka's compaction converges to); unkeyed records skipped.

        The embedded log does not rewrite segments to compact them: a compacted topic keeps every
        record (retention never trims it) and this scan folds them; fine for low-volume topics such
        as `mcp.decisions`. An empty value is returned as is: the caller decides what a tombstone is.
        """
        latest: dict[bytes, Record] = {}
        for p in await self.partitions(topic, create=False):
            for record in read_all(p, self.config.limits.max_record_bytes):
                if record.key is not None:
                    latest[record.key] = record
        return latest

    def enforce_retention(self, now: float | None = None) -> int:
        """Apply every topic's retention now (also done every `retention_interval_s`); records dropped."""
        self.check_writable()
        now = time.time() if now is None else now
        return sum(p.apply_retention(now) for parts in self._topics.values() for p in parts)

    # -- for the producer and consumers ---------------------------------------------------------

    def check_open(self) -> None:
        if not self._open:
            raise LogUnavailable(f"event log {self.root} is not open")

    def check_writable(self) -> GroupCommitWriter:
        self.check_open()
        if self._writer is None:
            raise LogError(f"event log {self.root} is open read-only")
        return self._writer

    async def partitions(self, topic: str, create: bool = True) -> list[PartitionLog]:
        """The topic's partitions: created on first use when writable, rescanned when read-only."""
        self.check_open()
        if self.read_only:
            if topic not in self._topics and (self.root / topic / "topic.json").exists():
                self._topics[topic] = self._load_topic(topic, create=False)
            for p in self._topics.get(topic, []):
                p.refresh()
            return self._topics.get(topic, [])
        if topic not in self._topics:
            if not create:
                return []
            creating = self._creating.get(topic)
            if creating is None:
                creating = self._creating[topic] = asyncio.create_task(self._create_topic(topic))
            # Shielded: a cancelled caller must not abandon the creation halfway (the thread goes on),
            # and every concurrent caller waits for the same one.
            return await asyncio.shield(creating)
        return self._topics[topic]

    def open_partitions(self, topic: str) -> list[PartitionLog] | None:
        """A writable log's partitions of `topic` if it is open already (no I/O, no waiting)."""
        return self._topics.get(topic) if self._open and not self.read_only else None

    def high_watermarks(self) -> dict[TopicPartition, int]:
        """Per partition of every topic this writable log has open (every topic written or read since
        it opened), the offset the next record will get: held in memory, no I/O. Empty when the log is
        read-only (its ends are read from disk: `end_offsets`) or closed."""
        if not self._open or self.read_only:
            return {}
        return {TopicPartition(topic, p.partition): p.high_watermark
                for topic, partitions in list(self._topics.items()) for p in partitions}

    async def _create_topic(self, topic: str) -> list[PartitionLog]:
        try:
            partitions = await asyncio.to_thread(self._load_topic, topic, True)
            if not self._open:  # closed meanwhile
                for p in partitions:
                    p.close()
                raise LogUnavailable(f"event log {self.root} is not open")
            self._topics[topic] = partitions
            return partitions
        finally:
            del self._creating[topic]

    def committed_offsets(self) -> dict[str, dict[TopicPartition, int]]:
        """By group, the committed offsets of every consumer of this log that is started and not closed
        (no I/O): also those a group committed before this opening, which it has not committed again."""
        return {consumer.group_id: consumer.committed_offsets() for consumer in list(self._consumers)}

    def register(self, consumer: EmbeddedConsumer) -> None:
        self._consumers.add(consumer)

    def unregister(self, consumer: EmbeddedConsumer) -> None:
        self._consumers.discard(consumer)

    def _notify(self, topics: set[str] | None) -> None:
        """Records of `topics` became readable (None: anything changed, e.g. the log closed)."""
        # Only the consumers of those topics: a consumer of another topic woken by every flush of
        # the event stream would read nothing, at a task switch or two per flush.
        for consumer in self._consumers:
            if topics is None or consumer.reads_any(topics):
                consumer.wake()

    def _load_topic(self, topic: str, create: bool) -> list[PartitionLog]:
        resolved = self.config.resolve(topic)
        directory = self.root / topic
        meta_path = directory / "topic.json"
        if meta_path.exists():
            try:
                stored = int(json.loads(meta_path.read_bytes())["partitions"])
            except (ValueError, KeyError, TypeError) as exc:
                raise LogCorrupt(f"{meta_path}: unreadable topic metadata ({exc})") from exc
            if stored != resolved.partitions:
                log.warning(
                    "topic %s keeps its %d partitions (configured: %d): changing the count would move keys "
                    "to other partitions and break their order", topic, stored, resolved.partitions,
                )
            resolved = type(resolved)(stored, resolved.segment_bytes, resolved.retention, resolved.compacted)
        elif create:
            directory.mkdir(parents=True, exist_ok=True)
            tmp = directory / "topic.json.tmp"
            tmp.write_bytes(json.dumps({"partitions": resolved.partitions, "compacted": resolved.compacted}).encode())
            with tmp.open("rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, meta_path)
            fsync_dir(directory)
            fsync_dir(self.root)
        else:
            return []
        partitions = [
            PartitionLog(topic, n, directory / str(n), resolved, writable=not self.read_only)
            for n in range(resolved.partitions)
        ]
        if not self.read_only:
            opened: list[PartitionLog] = []
            try:
                for p in partitions:
                    p.recover(self.config.limits.max_record_bytes)
                    opened.append(p)
            except BaseException:
                for p in opened:
                    p.close()
                raise
            fsync_dir(directory)
        return partitions

    async def _retention_loop(self) -> None:
        assert self.config.retention_interval_s is not None
        while True:
            await asyncio.sleep(self.config.retention_interval_s)
            try:
                self.enforce_retention()
            except (OSError, LogError) as exc:
                log.error("event log retention failed (will retry): %s", exc)
