"""The Kafka backend of the event log (aiokafka): `KafkaProducer` and `KafkaConsumer`.

Durability: `append` returns once every in-sync replica has the record (acks=all, fixed; see
`KafkaSettings.acks`). Concurrent appends share produce requests: each append enqueues with
`send()` and awaits its own delivery future, so the accumulator batches whatever arrives within
`linger_ms`. Delivery is at-least-once: a failed `append_batch` may have written a prefix of its
records, and without idempotence a retry after a lost acknowledgement can write a record twice;
consumers dedupe by event id (and ClickHouse by insert token).

Failures surface as `LogUnavailable` naming the broker's error, never swallowed. Instances whose
`retryable` is False are refusals that waiting will not fix (record too large, authorization,
a broker refusing idempotent producers). A producer whose `start` failed retries it on the next
append, so a gateway that started during a broker outage recovers without a restart.

With `create_topics` (the default) absent topics are created, with their configured policies,
before first use, and checked again after a failed append or a lost broker connection. A topic lost
while in use (a memory-only dev broker restarted) may instead be recreated by the broker itself with
its defaults, because aiokafka's metadata requests always allow auto-creation: production brokers
should run with auto.create.topics.enable=false (Apache Kafka's default is true). Without
idempotence, an append during which a connection broke is sent again once (see `append_batch`): a
restarted broker may have acknowledged it and lost it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # type: ignore[import-untyped]
from aiokafka import TopicPartition as KafkaTopicPartition
from aiokafka.abc import ConsumerRebalanceListener  # type: ignore[import-untyped]
from aiokafka.conn import CloseReason  # type: ignore[import-untyped]
from aiokafka.errors import BrokerResponseError, KafkaError  # type: ignore[import-untyped]

from eventlog.base import LogUnavailable, Record, TopicPartition
from eventlog.kafka_admin import describe_error, ensure_topics, unavailable
from eventlog.kafka_settings import KafkaSettings

__all__ = ["KafkaConsumer", "KafkaProducer", "KafkaSettings", "KafkaTopicReader", "RevokeCallback"]

log = logging.getLogger("mcpgw.eventlog.kafka")

RevokeCallback = Callable[[set[TopicPartition]], Awaitable[None]]

_CLIENT_ERRORS = (KafkaError, OSError)


class KafkaProducer:
    """Appends keyed records to Kafka topics; see the module docstring for what `append` promises."""

    def __init__(self, settings: KafkaSettings) -> None:
        self._settings = settings
        self._producer: Any = None
        self._start_lock = asyncio.Lock()
        # Topic -> `_losses` when its check started: a topic is checked again after any connection loss.
        self._ensured: dict[str, int] = {}
        # Broker connections closed so far (see `_watch_connections`).
        self._losses = 0
        self._ensuring: dict[str, asyncio.Future[None]] = {}
        self._closed = False
        # aiokafka bounds each stage (metadata, buffer space, acknowledgement) by request_timeout_ms;
        # this outer bound only guards against a stage that does not, so an append can never hang.
        self._deadline_s = 3 * settings.request_timeout_ms / 1000 + 1.0

    async def start(self) -> None:
        await self._connected()

    async def append(self, topic: str, key: bytes | None, value: bytes) -> None:
        await self.append_batch(topic, [(key, value)])

    async def append_batch(self, topic: str, records: Sequence[tuple[bytes | None, bytes]]) -> None:
        if not records:
            return
        producer = await self._connected()
        deadline = asyncio.get_running_loop().time() + self._deadline_s
        losses = self._losses
        if self._settings.create_topics and self._ensured.get(topic) != losses:
            await self._ensure_topic(topic)
        await self._send(producer, topic, records, deadline)
        if self._losses == losses or self._settings.enable_idempotence:
            return
        # A connection broke while this batch was in flight, so it may have been acknowledged by a
        # broker that had just restarted empty: Tansu (memory storage) acknowledges a produce to a
        # topic it no longer has, then loses the record when a metadata request re-creates the
        # topic. Check the topic and send the batch again; a duplicate is the at-least-once case
        # consumers already dedupe. Not with idempotence, which promises no duplicates (and which
        # only brokers that keep their topics and refuse unknown ones support, Tansu does not).
        log.warning("kafka: connection lost during an append to %r; checking the topic and sending again", topic)
        losses = self._losses
        if self._settings.create_topics:
            await self._ensure_topic(topic)
        await self._send(producer, topic, records, deadline)
        if self._losses != losses:
            raise LogUnavailable(f"kafka: connections to the broker kept breaking during an append to {topic!r}")

    async def _send(
        self, producer: Any, topic: str, records: Sequence[tuple[bytes | None, bytes]], deadline: float
    ) -> None:
        # One future settled by the delivery callbacks, not asyncio.wait: this is the whole of a
        # strict-mode hop's own cost, and wait() builds a waiter, a timer and a set per call.
        # Cancelling aiokafka's delivery futures would not unsend their records, only hide their
        # outcome, so the deadline cancels the wait for `settled`, never them.
        settled: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
        pending = len(records)

        def delivered(future: asyncio.Future[Any]) -> None:
            nonlocal pending
            pending -= 1
            if future.cancelled():
                error: BaseException | None = LogUnavailable(f"kafka: delivery to {topic!r} was cancelled")
            else:
                error = future.exception()  # retrieved even when nobody waits any more
            if not settled.done() and (error is not None or pending == 0):
                settled.set_result(error)

        try:
            try:
                async with asyncio.timeout_at(deadline):
                    for key, value in records:
                        (await producer.send(topic, value=value, key=key)).add_done_callback(delivered)
                    error = await settled
            except TimeoutError:
                error = LogUnavailable(f"kafka: append to {topic!r} not acknowledged within {self._deadline_s:.1f}s")
            if error is not None:
                raise error
        except _CLIENT_ERRORS as exc:
            # Re-check the topic next time: the usual cause of a missing topic is a broker that lost it.
            self._ensured.pop(topic, None)
            raise unavailable(f"append to {topic!r} failed", exc) from exc
        except LogUnavailable:
            self._ensured.pop(topic, None)
            raise

    async def close(self) -> None:
        self._closed = True
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                await producer.stop()  # flushes what is buffered, bounded by request_timeout_ms
            except _CLIENT_ERRORS as exc:
                log.warning("kafka: producer stopped with an error: %s", exc)

    async def _ensure_topic(self, topic: str) -> None:
        # Single flight: the first burst of appends to a topic shares one check (and its failure),
        # instead of each opening an admin connection.
        creation = self._ensuring.get(topic)
        if creation is None:
            creation = asyncio.ensure_future(self._check_topic(topic))
            self._ensuring[topic] = creation
            creation.add_done_callback(lambda _: self._ensuring.pop(topic, None))
        # shield: one cancelled append must not cancel the check the others are waiting for.
        await asyncio.shield(creation)

    async def _check_topic(self, topic: str) -> None:
        losses = self._losses
        await ensure_topics(self._settings, [topic])
        self._ensured[topic] = losses

    async def _connected(self) -> Any:
        if self._producer is not None:
            return self._producer
        if self._closed:
            error = LogUnavailable("kafka: producer is closed")
            error.retryable = False
            raise error
        async with self._start_lock:
            if self._producer is None:
                self._producer = await self._start_producer()
        return self._producer

    async def _start_producer(self) -> Any:
        settings = self._settings
        if settings.create_topics:
            losses = self._losses
            await ensure_topics(settings, settings.topics)
            self._ensured.update(dict.fromkeys(settings.topics, losses))
        producer = None
        try:
            producer = AIOKafkaProducer(
                **settings.client_kwargs(),
                acks=settings.acks,
                enable_idempotence=settings.enable_idempotence,
                linger_ms=settings.linger_ms,
                compression_type=settings.compression,
                max_batch_size=settings.max_batch_bytes,
                max_request_size=settings.max_request_bytes,
            )
            self._watch_connections(producer)
            await producer.start()
        except _CLIENT_ERRORS as exc:
            if producer is not None:
                await producer.stop()
            if settings.enable_idempotence and isinstance(exc, BrokerResponseError):
                # The only broker request a producer start makes beyond metadata is InitProducerId.
                error = LogUnavailable(
                    f"kafka: the broker refused an idempotent producer (InitProducerId: {describe_error(exc)}); "
                    "brokers without idempotence support (e.g. Tansu) need enable_idempotence: false "
                    "in the kafka event_log settings"
                )
                error.retryable = False
                raise error from exc
            raise unavailable("producer start failed", exc) from exc
        return producer

    def _watch_connections(self, producer: Any) -> None:
        # aiokafka reports every closed broker connection to its client's `_on_connection_closed`
        # (a connection takes the bound method when it opens, so this must run before `start`).
        # A lost connection may mean a restarted broker that lost its topics: count it, so topics
        # are checked again before the next append and an append it interrupted is sent again.
        client = producer.client
        original = getattr(client, "_on_connection_closed", None)
        if original is None:
            log.warning("kafka: aiokafka does not report closed connections; topics are checked only after failures")
            return

        def closed(conn: Any, reason: Any) -> None:
            # Not an idle connection aiokafka dropped, nor our own shutdown: those lose nothing, and
            # counting them would re-send (duplicate) an append in flight on another connection.
            if reason not in (CloseReason.IDLE_DROP, CloseReason.SHUTDOWN):
                self._losses += 1
            original(conn, reason)

        client._on_connection_closed = closed


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
    reader sees every record and a restarted one reads them all again. `fetch_max_wait_ms` is
    short so a record reaches readers well within a second of being appended.
    """

    def __init__(self, settings: KafkaSettings, topics: Sequence[str], *, fetch_max_wait_ms: int = 50) -> None:
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
