"""The Kafka backend of the event log (aiokafka): `KafkaProducer`; the readers are in `kafka_consumer`.

Durability: `append` returns once every in-sync replica has the record (acks=all, fixed; see
`KafkaSettings.acks`). Concurrent appends share produce requests. With idempotence each append
enqueues with aiokafka's `send()` and awaits its own delivery future, so the accumulator batches
whatever arrives within `linger_ms`; without it (and with `linger_ms` 0) appends skip the
accumulator and its sender task: `kafka_direct` writes produce requests onto its own connection
to each leader (`kafka_conn`), with the same ordering, batching and retry rules, at ~0.2 ms less
per append. There
`submit_batch` takes an append without a task of its own (see `SubmittingProducer` in
eventlog/base.py): its acknowledgement settles it from a callback.

Delivery is at-least-once: a failed `append_batch` may have written a prefix of its records, and
without idempotence a retry after a lost acknowledgement can write a record twice; consumers
dedupe by event id (and ClickHouse by insert token).

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
import functools
import logging
from collections.abc import Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]
from aiokafka.conn import CloseReason  # type: ignore[import-untyped]
from aiokafka.errors import BrokerResponseError, KafkaError  # type: ignore[import-untyped]

from eventlog.base import LogError, LogUnavailable
from eventlog.kafka_admin import describe_error, ensure_topics, unavailable
from eventlog.kafka_consumer import KafkaConsumer, KafkaTopicReader, RevokeCallback
from eventlog.kafka_direct import DirectSender
from eventlog.kafka_settings import KafkaSettings

__all__ = ["KafkaConsumer", "KafkaProducer", "KafkaSettings", "KafkaTopicReader", "RevokeCallback"]

log = logging.getLogger("mcpgw.eventlog.kafka")

_CLIENT_ERRORS = (KafkaError, OSError)


class KafkaProducer:
    """Appends keyed records to Kafka topics; see the module docstring for what `append` promises."""

    def __init__(self, settings: KafkaSettings) -> None:
        self._settings = settings
        self._producer: Any = None
        self._direct: DirectSender | None = None
        self._start_lock = asyncio.Lock()
        # Topic -> `_losses` when its check started: a topic is checked again after any connection loss.
        self._ensured: dict[str, int] = {}
        # Broker connections closed so far (see `_watch_connections`).
        self._losses = 0
        self._ensuring: dict[str, asyncio.Future[None]] = {}
        self._closed = False
        self._resending: set[asyncio.Task[None]] = set()
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
        await self._send_again(producer, topic, records, deadline)

    def submit_batch(self, topic: str, records: Sequence[tuple[bytes | None, bytes]],
                     settle: Callable[[LogError | None], None]) -> bool:
        """Take the records now and call `settle` once, on the loop, with None when they are durable
        or the error (a `LogUnavailable`); False: nothing was taken (not started yet, a topic to
        check, an idempotent producer, metadata to load), use `append_batch`."""
        direct = self._direct
        if direct is None or not records or (self._settings.create_topics and self._ensured.get(topic) != self._losses):
            return False
        settled = functools.partial(self._submitted, topic, records, self._losses, settle)
        try:
            return direct.submit(topic, records, settled)
        except _CLIENT_ERRORS as exc:  # a record too large: refused before anything was sent
            raise unavailable(f"append to {topic!r} failed", exc) from exc

    def _submitted(self, topic: str, records: Sequence[tuple[bytes | None, bytes]], losses: int,
                   settle: Callable[[LogError | None], None], error: BaseException | None) -> None:
        if error is not None:
            self._ensured.pop(topic, None)  # as in `_send`
            settle(error if isinstance(error, LogError) else unavailable(f"append to {topic!r} failed", error))
        elif self._losses == losses:
            settle(None)
        else:  # a connection broke meanwhile: what `append_batch` does then, in a task of its own
            deadline = asyncio.get_running_loop().time() + self._deadline_s
            again = asyncio.ensure_future(self._send_again(self._producer, topic, records, deadline))
            self._resending.add(again)
            again.add_done_callback(functools.partial(self._sent_again, settle))

    def _sent_again(self, settle: Callable[[LogError | None], None], task: asyncio.Task[None]) -> None:
        self._resending.discard(task)
        error = LogUnavailable("kafka: producer closed during an append") if task.cancelled() else task.exception()
        if error is None or isinstance(error, LogError):
            settle(error)
        else:
            settle(LogUnavailable(f"kafka: sending an append again failed: {error!r}"))

    async def _send_again(
        self, producer: Any, topic: str, records: Sequence[tuple[bytes | None, bytes]], deadline: float
    ) -> None:
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
                    if self._direct is not None:
                        await self._direct.send(topic, records)
                        return
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
        direct, self._direct = self._direct, None
        if direct is not None:
            await direct.close()
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
            if not settings.enable_idempotence and settings.linger_ms == 0:
                self._direct = DirectSender(producer, settings, self._count_loss)
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

    def _count_loss(self) -> None:
        self._losses += 1

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
