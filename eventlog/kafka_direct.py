"""Produce requests sent past aiokafka's accumulator, straight to the partition leaders.

`KafkaProducer` uses this only without idempotence (whose sequence numbers live in aiokafka's
accumulator: production Apache Kafka keeps that path). Without it the accumulator only batches,
and its sender task cost each append task wake-ups: on Tansu over loopback at c=1, a produce of a
call's two events took 0.43 ms and 0.27 ms client CPU here against 0.65 and 0.47 ms through it.

What the accumulator path promised holds here too:
- acks=all; the broker's bound on a request is request_timeout_ms.
- Keys go to the partitions aiokafka's default partitioner (and the Java client) picks: murmur2
  over the sorted partition ids, so switching idempotence on or off moves no key.
- One produce request (per broker) in flight at a time; appends arriving meanwhile share the next
  one. A request carries one record batch per partition (Kafka's rule since produce v3), records in
  the order `send` was called, so per-partition order is call order, across retries too: a request's
  retriable failures go back to the head of the queue and nothing overtakes them.
- Retriable errors (a lost connection, a moved leader, an unknown topic) are retried after a
  backoff and a metadata refresh until request_timeout_ms after the append began (aiokafka's batch
  expiry), then the last error is raised; other errors are raised at once. A request unanswered
  after request_timeout_ms closes its connection (as aiokafka's client does) and counts as lost.

`submit` takes records without a task: the request goes out at once when the sender is idle and
the leader's connection is up (else it queues); the answer settles the append through a callback,
which also sends what queued meanwhile. Only the slow cases (connecting, a retry's backoff, a
leader to look up) run in a driver task. Requests (encoded by `kafka_wire`) go over the sender's
own connection to each leader (`kafka_conn`, answers settled in `data_received`; a lost one is
reported to `on_lost`), with SASL over aiokafka's (`kafka_wire.AiokafkaLinks`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import time
from collections.abc import Callable, Sequence
from typing import Any

from aiokafka import TopicPartition  # type: ignore[import-untyped]
from aiokafka.errors import KafkaError, MessageSizeTooLargeError, for_code  # type: ignore[import-untyped]
from aiokafka.partitioner import DefaultPartitioner  # type: ignore[import-untyped]
from aiokafka.record.default_records import (  # type: ignore[import-untyped]
    DefaultRecordBatch,
    DefaultRecordBatchBuilder,
)

from eventlog.base import LogUnavailable, settle_future
from eventlog.kafka_conn import LeaderLinks
from eventlog.kafka_settings import KafkaSettings
from eventlog.kafka_wire import AiokafkaLinks, key_partition

_CODECS = {
    None: 0,
    "gzip": DefaultRecordBatch.CODEC_GZIP,
    "snappy": DefaultRecordBatch.CODEC_SNAPPY,
    "lz4": DefaultRecordBatch.CODEC_LZ4,
    "zstd": DefaultRecordBatch.CODEC_ZSTD,
}
_RETRY_BACKOFF_S = 0.1  # aiokafka's retry_backoff_ms default
_KEY_CACHE_LIMIT = 50_000  # (topic, key) -> partition: murmur2 is pure Python
_UNBOUNDED = 2**31 - 1  # chunks are cut to max_batch_bytes before they reach a builder

Records = Sequence[tuple[bytes | None, bytes]]
Settle = Callable[[BaseException | None], None]
# Per leader, per partition, the chunks of one request.
Requests = dict[int, dict[TopicPartition, list["_Chunk"]]]


class _Append:
    """One `send`/`submit`: settled once, when every chunk of it is acknowledged or at its first failure."""

    __slots__ = ("done", "expires", "pending", "settle")

    def __init__(self, settle: Settle, expires: float) -> None:
        self.settle = settle
        self.pending = 0
        self.expires = expires
        self.done = False

    def chunk_done(self) -> None:
        self.pending -= 1
        if self.pending == 0 and not self.done:
            self.done = True
            self.settle(None)

    def fail(self, error: BaseException) -> None:
        if not self.done:
            self.done = True
            self.settle(error)


class _Chunk:
    """Records of one append for one partition, small enough for one batch."""

    __slots__ = ("append", "records", "size", "tp")

    def __init__(self, tp: TopicPartition, append: _Append) -> None:
        self.tp = tp
        self.records: list[tuple[bytes | None, bytes]] = []
        self.size = 0
        self.append = append


class DirectSender:
    def __init__(self, producer: Any, settings: KafkaSettings, on_lost: Callable[[], None]) -> None:
        self._producer = producer
        self._client = producer.client
        client_id = settings.client_id.encode()
        security = settings.security
        self._links: LeaderLinks | AiokafkaLinks
        if security.security_protocol.startswith("SASL_"):
            self._links = AiokafkaLinks(self._client, client_id, settings.request_timeout_ms)
        else:
            ssl = security.client_kwargs().get("ssl_context")
            self._links = LeaderLinks(self._client, client_id, settings.request_timeout_ms, ssl, on_lost)
        self._codec = _CODECS[settings.compression]
        self._compress_from = settings.compression_min_bytes
        self._timeout_s = settings.request_timeout_ms / 1000
        self._max_batch = settings.max_batch_bytes
        self._max_request = settings.max_request_bytes
        self._partitioner = DefaultPartitioner()
        self._partition_of: dict[tuple[str, bytes, int], int] = {}
        self._queue: collections.deque[_Chunk] = collections.deque()
        # A round in flight or the driver task alive: new appends queue behind it.
        self._busy = False
        self._driver: asyncio.Task[None] | None = None
        self._idle: asyncio.Future[None] | None = None  # `close` waiting for the rounds in flight
        self._closed = False

    def submit(self, topic: str, records: Records, settle: Settle) -> bool:
        """Queue the records (sending them now when idle); `settle` is called once, on the loop, with
        None when all are acknowledged or the error. False: the topic's partitions are not known
        yet (nothing was taken; `send` waits for them)."""
        partitions = self._client.cluster.partitions_for_topic(topic)
        if not partitions:
            return False
        self._enqueue(topic, records, sorted(partitions), settle)
        return True

    async def send(self, topic: str, records: Records) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        partitions = self._client.cluster.partitions_for_topic(topic)
        if not partitions:
            partitions = await self._producer.partitions_for(topic)  # waits for metadata, bounded
        append = self._enqueue(topic, records, sorted(partitions), functools.partial(settle_future, future))
        try:
            await future
        except asyncio.CancelledError:
            # The caller gave up (its deadline): send nothing more of it; what is in flight stays so.
            append.fail(LogUnavailable("kafka: the append was abandoned"))
            raise

    async def close(self) -> None:
        """Wait for what is queued or in flight (bounded by the retry deadline), then refuse what is left."""
        if self._busy:
            self._idle = asyncio.get_running_loop().create_future()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._idle), self._timeout_s + 1.0)
        self._closed = True
        driver = self._driver
        if driver is not None and not driver.done():
            driver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await driver
        while self._queue:
            self._queue.popleft().append.fail(LogUnavailable("kafka: producer closed before the append was sent"))
        await self._links.close()

    def _enqueue(self, topic: str, records: Records, ordered: list[int], settle: Settle) -> _Append:
        append = _Append(settle, asyncio.get_running_loop().time() + self._timeout_s)
        chunks = self._chunks(topic, records, ordered, append)
        append.pending = len(chunks)
        self._queue.extend(chunks)
        if not self._busy:
            # Idle, so the queue held nothing before: send now, without a task.
            self._busy = True
            self._fire()
        return append

    def _chunks(self, topic: str, records: Records, ordered: list[int], append: _Append) -> list[_Chunk]:
        count = len(ordered)
        current: dict[int, _Chunk] = {}
        chunks: list[_Chunk] = []
        for key, value in records:
            size = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, [])
            if size > self._max_request:
                raise MessageSizeTooLargeError(
                    f"a record of {size} bytes is larger than max_request_bytes ({self._max_request})"
                )
            partition = self._partition(topic, key, ordered, count)
            chunk = current.get(partition)
            if chunk is None or chunk.size + size > self._max_batch:
                chunk = current[partition] = _Chunk(TopicPartition(topic, partition), append)
                chunks.append(chunk)
            chunk.records.append((key, value))
            chunk.size += size
        return chunks

    def _partition(self, topic: str, key: bytes | None, ordered: list[int], count: int) -> int:
        if key is None:
            available = list(self._client.cluster.available_partitions_for_topic(topic) or ())
            return int(self._partitioner(None, ordered, available))
        cached = self._partition_of.get((topic, key, count))
        if cached is None:
            if len(self._partition_of) >= _KEY_CACHE_LIMIT:
                self._partition_of.clear()
            cached = self._partition_of[(topic, key, count)] = key_partition(key, ordered)
        return cached

    # -- rounds: one request per leader from the queue's head -------------------------------------------

    def _fire(self) -> None:
        """Start the next round from a callback when every leader's connection is up; else the driver does."""
        requests, taken, leaderless = self._take()
        if not taken and not leaderless:
            self._set_idle()
            return
        if leaderless or not all(self._links.connection(node) is not None for node in requests):
            self._queue.extendleft(reversed(taken))
            self._start_driver(0.0)
            return
        self._launch(requests, taken, self._fired)

    def _fired(self, retry_in: float) -> None:
        if self._closed:  # what a retry would have resent: nobody sends it any more
            while self._queue:
                self._queue.popleft().append.fail(LogUnavailable("kafka: producer closed during an append"))
            self._set_idle()
        elif retry_in:
            self._start_driver(retry_in)
        else:
            self._fire()

    def _start_driver(self, retry_in: float) -> None:
        self._driver = asyncio.ensure_future(self._drive(retry_in))

    def _set_idle(self) -> None:
        self._busy = False
        if self._idle is not None and not self._idle.done():
            self._idle.set_result(None)

    async def _drive(self, retry_in: float) -> None:
        """The slow path: backoff and metadata before a retry, connecting, leaders to look up. A round
        sent to known leaders is carried on by its answers' callbacks (a busy queue kept this alive)."""
        handed_over = False
        try:
            while self._queue:
                if retry_in:
                    await asyncio.sleep(retry_in)
                    async with asyncio.timeout(self._timeout_s):
                        await self._client._maybe_wait_metadata()
                requests, taken, leaderless = self._take()
                if leaderless:
                    self._client.force_metadata_update()
                if not taken:
                    if leaderless and asyncio.get_running_loop().time() >= self._queue[0].append.expires:
                        self._queue[0].append.fail(LogUnavailable(f"kafka: no leader for {self._queue[0].tp}"))
                    retry_in = _RETRY_BACKOFF_S if leaderless else 0.0
                    continue
                for node in requests:
                    with contextlib.suppress(KafkaError, OSError, TimeoutError):  # not ready: that request fails
                        async with asyncio.timeout(self._timeout_s):
                            await self._links.ready(node)
                if not leaderless:
                    handed_over = True
                    self._launch(requests, taken, self._fired)
                    return
                answered: asyncio.Future[float] = asyncio.get_running_loop().create_future()
                self._launch(requests, taken, functools.partial(settle_future, answered))
                # Cancelled (closing) while waiting here: the answer still settles the appends.
                retry_in = (await answered) or _RETRY_BACKOFF_S
        except BaseException as exc:
            error = exc if isinstance(exc, Exception) else LogUnavailable("kafka: producer closed during an append")
            while self._queue:
                self._queue.popleft().append.fail(error)
            raise
        finally:
            if not handed_over:
                self._set_idle()

    def _take(self) -> tuple[Requests, list[_Chunk], bool]:
        """The queue's head for one request per leader: per partition one batch, in queue order."""
        requests: Requests = {}
        taken: list[_Chunk] = []
        batch_sizes: dict[TopicPartition, int] = {}
        total = 0
        cluster = self._client.cluster
        queue = self._queue
        while queue:
            chunk = queue[0]
            if chunk.append.done:  # failed (or its caller gave up): send nothing more of it
                queue.popleft()
                continue
            leader = cluster.leader_for_partition(chunk.tp)
            if leader is None or leader < 0:
                return requests, taken, True
            used = batch_sizes.get(chunk.tp, 0)
            if taken and (used + chunk.size > self._max_batch or total + chunk.size > self._max_request):
                break  # stop here, not skip: what follows may be the same partition's next records
            batch_sizes[chunk.tp] = used + chunk.size
            total += chunk.size
            requests.setdefault(leader, {}).setdefault(chunk.tp, []).append(chunk)
            taken.append(queue.popleft())
        return requests, taken, False

    def _launch(self, requests: Requests, taken: list[_Chunk], then: Callable[[float], None]) -> None:
        """Send one request per leader; once all are answered, settle the chunks and call `then` with
        the backoff before a retry (or 0)."""
        failed: dict[int, BaseException] = {}  # id(chunk) -> its error
        outstanding = len(requests)

        def answered(batches: dict[TopicPartition, list[_Chunk]], answer: Any) -> None:
            nonlocal outstanding
            self._answered(batches, answer, failed)
            outstanding -= 1
            if outstanding == 0:
                then(self._settle_round(taken, failed))

        for node, batches in requests.items():
            self._transmit(node, batches, answered)

    def _settle_round(self, taken: list[_Chunk], failed: dict[int, BaseException]) -> float:
        retry = [chunk for chunk in taken if id(chunk) in failed and not chunk.append.done]
        if not retry:
            return 0.0
        now = asyncio.get_running_loop().time()
        for chunk in retry:
            if now >= chunk.append.expires or not getattr(failed[id(chunk)], "retriable", False):
                chunk.append.fail(failed[id(chunk)])
        retry = [chunk for chunk in retry if not chunk.append.done]
        if not retry:
            return 0.0
        self._queue.extendleft(reversed(retry))
        return _RETRY_BACKOFF_S

    def _transmit(self, node: int, batches: dict[TopicPartition, list[_Chunk]],
                  answered: Callable[[dict[TopicPartition, list[_Chunk]], Any], None]) -> None:
        """Send one produce request to `node`; `answered` gets the response or the error, on the loop."""
        topics: dict[str, list[tuple[int, bytes | bytearray]]] = {}
        timestamp = int(time.time() * 1000)
        for tp, chunks in batches.items():
            codec = self._codec if sum(chunk.size for chunk in chunks) >= self._compress_from else 0
            builder = DefaultRecordBatchBuilder(2, codec, 0, -1, -1, 0, _UNBOUNDED)
            offset = 0
            for chunk in chunks:
                for key, value in chunk.records:
                    builder.append(offset, timestamp=timestamp, key=key, value=value, headers=[])
                    offset += 1
            topics.setdefault(tp.topic, []).append((tp.partition, builder.build()))
        self._links.transmit(node, list(topics.items()), functools.partial(answered, batches))

    def _answered(
        self, batches: dict[TopicPartition, list[_Chunk]], answer: Any, failed: dict[int, BaseException]
    ) -> None:
        if isinstance(answer, BaseException):
            if getattr(answer, "invalid_metadata", False):
                self._client.force_metadata_update()
            for chunks in batches.values():
                for chunk in chunks:
                    failed[id(chunk)] = answer
            return
        settled: set[TopicPartition] = set()
        for topic, partitions in answer.topics:
            for info in partitions:
                tp = TopicPartition(topic, info[0])
                answered = batches.get(tp)
                if answered is None:
                    continue
                settled.add(tp)
                if info[1] == 0:
                    for chunk in answered:
                        chunk.append.chunk_done()
                    continue
                error = for_code(info[1])()
                if getattr(error, "invalid_metadata", False):
                    self._client.force_metadata_update()
                for chunk in answered:
                    failed[id(chunk)] = error
        for tp in batches.keys() - settled:
            for chunk in batches[tp]:
                failed[id(chunk)] = KafkaError(f"the produce response has no answer for {tp}")
