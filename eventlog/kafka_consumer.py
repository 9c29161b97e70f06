"""The Kafka backend's readers (aiokafka): `KafkaConsumer` (a consumer group member) and
`KafkaTopicReader` (every partition, outside any group), and `end_offsets` (where topics end now).
Offsets are committed only explicitly.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer  # type: ignore[import-untyped]
from aiokafka import TopicPartition as KafkaTopicPartition
from aiokafka.abc import ConsumerRebalanceListener  # type: ignore[import-untyped]
from aiokafka.errors import KafkaError  # type: ignore[import-untyped]

from eventlog.base import LogUnavailable, Record, TopicPartition
from eventlog.kafka_admin import ensure_topics, unavailable
from eventlog.kafka_settings import KafkaSettings

__all__ = ["KafkaConsumer", "KafkaTopicReader", "RevokeCallback", "end_offsets"]

log = logging.getLogger("mcpgw.eventlog.kafka")

RevokeCallback = Callable[[set[TopicPartition]], Awaitable[None]]

_CLIENT_ERRORS = (KafkaError, OSError)
# How long `end_offsets` waits for the record before each end it was told (see there).
END_CHECK_S = 2.0


class KafkaConsumer:
    """A member of consumer group `group_id` reading `topics`; offsets are committed only explicitly.

    `on_revoke(partitions)` runs before this member gives partitions up, in a rebalance and in
    `close()`: flush what was read from them and `commit` it there, or the next owner replays it.
    It runs on aiokafka's group task, concurrently with the caller's own `poll` loop, so the two
    must share a lock around "process batch + commit". If it raises, the error is logged and the
    partitions are given up anyway (uncommitted records are replayed, never lost).
    """

    def __init__(
        self, settings: KafkaSettings, group_id: str, topics: Sequence[str], *, on_revoke: RevokeCallback | None = None
    ) -> None:
        self._settings = settings
        self._group_id = group_id
        self._topics = list(topics)
        self._on_revoke = on_revoke
        self._consumer: Any = None
        self._rewind_on_assign = False
        self._joined = asyncio.Event()

    async def start(self) -> None:
        if self._consumer is not None:
            return
        settings = self._settings
        if settings.create_topics:
            # Also here, not only in the producer: a group subscribed to an absent topic would sit
            # unassigned until its next metadata refresh (5 minutes) after the topic appears.
            await ensure_topics(settings, self._topics)
        group = settings.consumer
        connection = settings.client_kwargs()
        # aiokafka waits for a JoinGroup answer only request_timeout_ms, but brokers hold it until the
        # group settles, up to the rebalance timeout (= session timeout here); a shorter wait loops
        # forever on RequestTimedOut. Same rule as the Java client; consumers are off the hot path.
        connection["request_timeout_ms"] = max(settings.request_timeout_ms, group.session_timeout_ms + 5_000)
        consumer = AIOKafkaConsumer(
            **connection,
            group_id=self._group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            # Producers here are not transactional; read_committed only matters if one ever is,
            # and then aborted records must not become audit rows.
            isolation_level="read_committed",
            session_timeout_ms=group.session_timeout_ms,
            heartbeat_interval_ms=group.heartbeat_interval_ms,
            max_poll_interval_ms=group.max_poll_interval_ms,
            fetch_max_wait_ms=group.fetch_max_wait_ms,
            max_partition_fetch_bytes=group.max_partition_fetch_bytes,
        )
        consumer.subscribe(self._topics, listener=_Listener(self))
        self._consumer = consumer  # before start: the listener may run as soon as the group is joined
        try:
            await consumer.start()
        except _CLIENT_ERRORS as exc:
            self._consumer = None
            await consumer.stop()
            raise unavailable(f"consumer {self._group_id!r} start failed", exc) from exc
        # Return as a member, like the embedded log: callers may then read `assignment()`, and a
        # first short `poll` is not spent joining. Brokers hold a join up to the rebalance timeout.
        join_s = group.session_timeout_ms / 1000 + settings.request_timeout_ms / 1000
        try:
            await asyncio.wait_for(self._joined.wait(), join_s)
        except TimeoutError:
            log.warning(
                "kafka: consumer of group %s not assigned partitions within %.1fs; still joining",
                self._group_id,
                join_s,
            )

    async def poll(self, max_records: int, timeout_s: float) -> list[Record]:
        return await _poll(self._started(), max_records, timeout_s, f"poll by {self._group_id!r}")

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        if not offsets:
            return
        consumer = self._started()
        try:
            await consumer.commit({KafkaTopicPartition(tp.topic, tp.partition): o for tp, o in offsets.items()})
        except _CLIENT_ERRORS as exc:
            # Typically CommitFailedError/IllegalStateError after a rebalance took the partition:
            # its new owner replays from the last commit, so nothing is lost, but retrying won't help.
            raise unavailable(f"commit by {self._group_id!r} failed", exc) from exc

    async def committed(self, partition: TopicPartition) -> int | None:
        consumer = self._started()
        try:
            offset = await consumer.committed(KafkaTopicPartition(partition.topic, partition.partition))
        except _CLIENT_ERRORS as exc:
            raise unavailable(f"reading {self._group_id!r} committed offset failed", exc) from exc
        return int(offset) if offset is not None else None

    async def seek_to_beginning(self) -> None:
        """Rewind the partitions assigned now, or, before the group's first assignment, that one."""
        consumer = self._started()
        if consumer.assignment():
            await consumer.seek_to_beginning()
        else:
            self._rewind_on_assign = True

    def rewind_at_next_assignment(self) -> None:
        """Read the partitions of the next assignment from their beginning (not a protocol method).

        For a consumer whose state is rebuilt from the log after a rebalance: call it from the
        revoke callback, since `seek_to_beginning` there would rewind the partitions being given up.
        """
        self._rewind_on_assign = True

    def assignment(self) -> set[TopicPartition]:
        if self._consumer is None:
            return set()
        return {TopicPartition(tp.topic, tp.partition) for tp in self._consumer.assignment()}

    async def close(self) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        try:
            # aiokafka does not call the rebalance listener on stop, yet leaving gives partitions up.
            await self._revoked(self.assignment())
        finally:
            self._consumer = None
            await consumer.stop()

    def _started(self) -> Any:
        return _started(self._consumer, f"consumer of group {self._group_id!r}")

    async def _revoked(self, partitions: set[TopicPartition]) -> None:
        if self._on_revoke is None or not partitions:
            return
        try:
            await self._on_revoke(partitions)
        except Exception:
            log.exception(
                "kafka: on_revoke failed for %s in group %s; their uncommitted records will be "
                "replayed by the next owner",
                sorted((p.topic, p.partition) for p in partitions),
                self._group_id,
            )

    async def _assigned(self, partitions: list[Any]) -> None:
        if self._rewind_on_assign and partitions and self._consumer is not None:
            self._rewind_on_assign = False
            await self._consumer.seek_to_beginning(*partitions)
        self._joined.set()


class KafkaTopicReader:
    """Reads every partition of `topics` from the beginning, outside any consumer group.

    For projections every process must hold whole (the ingress blocklist over `mcp.decisions`):
    partitions are assigned by hand, positions live in memory only, nothing is committed, so each
    reader sees every record and a restarted one reads them all again.

    `fetch_max_wait_ms` bounds how long the broker holds an empty fetch, so a record reaches readers
    well within a second of being appended (Kafka answers a held fetch as soon as data comes in;
    Tansu within the wait: 5-110 ms after the append with 250). It is also what an idle reader
    costs: each fetch is a round trip the gateway pays CPU for, and a gateway's idle CPU is paid by
    its calls. Tansu on loopback, an idle ingress's reader over mcp.decisions: 16 ms of CPU per
    second with 50 (every fetch answered empty after the wait), 4.5 with 250.
    """

    def __init__(self, settings: KafkaSettings, topics: Sequence[str], *, fetch_max_wait_ms: int = 250) -> None:
        self._settings = settings
        self._topics = list(dict.fromkeys(topics))
        self._fetch_max_wait_ms = fetch_max_wait_ms
        self._consumer: Any = None
        self._partitions: list[Any] = []

    async def start(self) -> None:
        if self._consumer is not None:
            return
        settings = self._settings
        if settings.create_topics:
            await ensure_topics(settings, self._topics)
        consumer = AIOKafkaConsumer(
            **settings.client_kwargs(),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            fetch_max_wait_ms=self._fetch_max_wait_ms,
            max_partition_fetch_bytes=settings.consumer.max_partition_fetch_bytes,
        )
        try:
            await consumer.start()
            await consumer.topics()  # loads the cluster's metadata, so the partition counts are known
            partitions: list[Any] = []
            for topic in self._topics:
                numbers = consumer.partitions_for_topic(topic)
                if not numbers:
                    raise LogUnavailable(f"kafka: topic {topic!r} does not exist (or has no partitions)")
                partitions.extend(KafkaTopicPartition(topic, n) for n in sorted(numbers))
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
        except _CLIENT_ERRORS as exc:
            await consumer.stop()
            raise unavailable(f"reader of {self._topics} failed to start", exc) from exc
        except LogUnavailable:
            await consumer.stop()
            raise
        self._consumer = consumer
        self._partitions = partitions

    async def poll(self, max_records: int, timeout_s: float) -> list[Record]:
        return await _poll(self._started(), max_records, timeout_s, f"poll of {self._topics}")

    async def end_offsets(self) -> dict[TopicPartition, int]:
        consumer = self._started()
        try:
            ends = await consumer.end_offsets(self._partitions)
        except _CLIENT_ERRORS as exc:
            raise unavailable(f"reading the end offsets of {self._topics} failed", exc) from exc
        return {TopicPartition(tp.topic, tp.partition): int(offset) for tp, offset in ends.items()}

    async def position(self, partition: TopicPartition) -> int:
        consumer = self._started()
        try:
            return int(await consumer.position(KafkaTopicPartition(partition.topic, partition.partition)))
        except _CLIENT_ERRORS as exc:
            raise unavailable(f"reading the position in {partition} failed", exc) from exc

    async def seek_to_beginning(self) -> None:
        await self._started().seek_to_beginning(*self._partitions)

    def assignment(self) -> set[TopicPartition]:
        return {TopicPartition(tp.topic, tp.partition) for tp in self._partitions} if self._consumer else set()

    async def close(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()

    def _started(self) -> Any:
        return _started(self._consumer, f"reader of {self._topics}")


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, owner: KafkaConsumer) -> None:
        self._owner = owner

    async def on_partitions_revoked(self, revoked: list[Any]) -> None:
        await self._owner._revoked({TopicPartition(tp.topic, tp.partition) for tp in revoked})

    async def on_partitions_assigned(self, assigned: list[Any]) -> None:
        await self._owner._assigned(list(assigned))


def _started(consumer: AIOKafkaConsumer | None, what: str) -> Any:
    if consumer is None:
        error = LogUnavailable(f"kafka: {what} is not started or is closed")
        error.retryable = False
        raise error
    return consumer


async def _poll(consumer: AIOKafkaConsumer, max_records: int, timeout_s: float, what: str) -> list[Record]:
    try:
        batches = await consumer.getmany(timeout_ms=max(0, int(timeout_s * 1000)), max_records=max_records)
    except _CLIENT_ERRORS as exc:
        raise unavailable(f"{what} failed", exc) from exc
    return [
        # A compaction tombstone has no value; this log never writes one, but others might.
        Record(r.topic, r.partition, r.offset, r.key, r.value if r.value is not None else b"", r.timestamp)
        for records in batches.values()
        for r in records
    ]


async def end_offsets(settings: KafkaSettings, topics: Sequence[str]) -> dict[TopicPartition, int]:
    """Per partition of `topics`, the offset after its last record now (an absent topic has none).

    What a consumer has read everything once its position reaches. Read, not only asked: Tansu
    (0.6) answers ListOffsets(latest) with the first offset of the partition's last batch + 1 (seen:
    17 for a partition holding 20 records), so each answer is checked by fetching from the offset
    before it. A broker that answers right returns that one record and the end stands; Tansu
    returns the rest of the batch, whose last record + 1 is the end. A fetch that brings nothing
    within END_CHECK_S (the last offsets compacted away, or transaction markers) keeps the answer.
    """
    consumer = AIOKafkaConsumer(
        **settings.client_kwargs(),
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",  # as the group consumers read: the end they can reach
        fetch_max_wait_ms=100,
        max_partition_fetch_bytes=settings.consumer.max_partition_fetch_bytes,
    )
    try:
        await consumer.start()
        await consumer.topics()  # loads the cluster's metadata, so the partition counts are known
        partitions = [KafkaTopicPartition(topic, n) for topic in dict.fromkeys(topics)
                      for n in sorted(consumer.partitions_for_topic(topic) or ())]
        if not partitions:
            return {}
        ends = {tp: int(offset) for tp, offset in (await consumer.end_offsets(partitions)).items()}
        pending = {tp for tp, end in ends.items() if end > 0}
        if pending:
            consumer.assign(sorted(pending))
            for tp in pending:
                consumer.seek(tp, ends[tp] - 1)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + END_CHECK_S
            while pending and loop.time() < deadline:
                batches = await consumer.getmany(*pending, timeout_ms=200)
                for tp, records in batches.items():
                    if records:
                        ends[tp] = max(ends[tp], records[-1].offset + 1)
                        pending.discard(tp)
    except _CLIENT_ERRORS as exc:
        raise unavailable(f"reading the end offsets of {list(topics)} failed", exc) from exc
    finally:
        await consumer.stop()
    return {TopicPartition(tp.topic, tp.partition): end for tp, end in ends.items()}
