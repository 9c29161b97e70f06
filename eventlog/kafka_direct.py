"""Produce requests written straight onto aiokafka's broker connection, past its accumulator.

`KafkaProducer` uses this only without idempotence: an idempotent producer's sequence numbers live
in aiokafka's accumulator, so that path stays for it (production Apache Kafka). Without idempotence
the accumulator only batches, and its sender task costs each append extra task wake-ups: on Tansu
over loopback at concurrency 1, one produce of a call's two events took 0.43 ms round trip and
0.27 ms client CPU this way against 0.65 ms and 0.47 ms through `AIOKafkaProducer.send`.

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
  expiry), then the last error is raised; other errors are raised at once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Sequence
from typing import Any

from aiokafka import TopicPartition  # type: ignore[import-untyped]
from aiokafka.errors import KafkaError, MessageSizeTooLargeError, for_code  # type: ignore[import-untyped]
from aiokafka.partitioner import DefaultPartitioner  # type: ignore[import-untyped]
from aiokafka.protocol.produce import ProduceRequest  # type: ignore[import-untyped]
from aiokafka.record.default_records import (  # type: ignore[import-untyped]
    DefaultRecordBatch,
    DefaultRecordBatchBuilder,
)

from eventlog.base import LogUnavailable
from eventlog.kafka_settings import KafkaSettings

_CODECS = {
    None: 0,
    "gzip": DefaultRecordBatch.CODEC_GZIP,
    "snappy": DefaultRecordBatch.CODEC_SNAPPY,
    "lz4": DefaultRecordBatch.CODEC_LZ4,
    "zstd": DefaultRecordBatch.CODEC_ZSTD,
}
_RETRY_BACKOFF_S = 0.1  # aiokafka's retry_backoff_ms default
_KEY_CACHE_LIMIT = 50_000  # (topic, key) -> partition; murmur2 is pure Python in aiokafka
_UNBOUNDED = 2**31 - 1  # chunks are cut to max_batch_bytes before they reach a builder

Records = Sequence[tuple[bytes | None, bytes]]


class _Append:
    """One `send`: settled when every chunk of it is acknowledged, or at its first failure."""

    __slots__ = ("expires", "future", "pending")

    def __init__(self, future: asyncio.Future[None], pending: int, expires: float) -> None:
        self.future = future
        self.pending = pending
        self.expires = expires

    def chunk_done(self) -> None:
        self.pending -= 1
        if self.pending == 0 and not self.future.done():
            self.future.set_result(None)

    def fail(self, error: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(error)


class _Chunk:
    """Records of one append for one partition, small enough for one batch."""

    __slots__ = ("append", "records", "size", "tp")

    def __init__(self, tp: TopicPartition, append: _Append) -> None:
        self.tp = tp
        self.records: list[tuple[bytes | None, bytes]] = []
        self.size = 0
        self.append = append


class DirectSender:
    def __init__(self, producer: Any, settings: KafkaSettings) -> None:
        self._producer = producer
        self._client = producer.client
        self._codec = _CODECS[settings.compression]
        self._request_timeout_ms = settings.request_timeout_ms
        self._timeout_s = settings.request_timeout_ms / 1000
        self._max_batch = settings.max_batch_bytes
        self._max_request = settings.max_request_bytes
        self._partitioner = DefaultPartitioner()
        self._partition_of: dict[tuple[str, bytes, int], int] = {}
        self._queue: collections.deque[_Chunk] = collections.deque()
        # A round in progress or the driver task alive: new appends queue behind it.
        self._busy = False
        self._driver: asyncio.Task[None] | None = None

    async def send(self, topic: str, records: Records) -> None:
        loop = asyncio.get_running_loop()
        append = _Append(loop.create_future(), 0, loop.time() + self._timeout_s)
        chunks = await self._chunks(topic, records, append)
        append.pending = len(chunks)
        self._queue.extend(chunks)
        if self._busy:
            await append.future
            return
        # Idle, so the queue held nothing before: this caller sends its own records itself, and
        # the common case (nothing else in flight) takes no task hop at all.
        self._busy = True
        retry_in = 0.0
        try:
            retry_in = await self._round()
        finally:
            if self._queue:
                self._driver = asyncio.ensure_future(self._drive(retry_in))
            else:
                self._busy = False
        await append.future

    async def close(self) -> None:
        """Wait for what is queued (bounded by the retry deadline), then refuse what is left."""
        driver = self._driver
        if driver is not None and not driver.done():
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(driver), self._timeout_s + 1.0)
            driver.cancel()
        while self._queue:
            self._queue.popleft().append.fail(LogUnavailable("kafka: producer closed before the append was sent"))

    async def _chunks(self, topic: str, records: Records, append: _Append) -> list[_Chunk]:
        partitions = self._client.cluster.partitions_for_topic(topic)
        if not partitions:
            partitions = await self._producer.partitions_for(topic)  # waits for metadata, bounded
        ordered = sorted(partitions)
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
            cached = self._partition_of[(topic, key, count)] = int(self._partitioner(key, ordered, ordered))
        return cached

    async def _drive(self, retry_in: float) -> None:
        try:
            while self._queue:
                if retry_in:
                    await asyncio.sleep(retry_in)
                    await self._client._maybe_wait_metadata()
                retry_in = await self._round()
        except BaseException as exc:
            error = exc if isinstance(exc, Exception) else LogUnavailable("kafka: producer closed during an append")
            while self._queue:
                self._queue.popleft().append.fail(error)
            raise
        finally:
            self._busy = False

    def _take(self) -> tuple[dict[int, dict[TopicPartition, list[_Chunk]]], list[_Chunk], bool]:
        """The queue's head for one request per leader: per partition one batch, in queue order."""
        requests: dict[int, dict[TopicPartition, list[_Chunk]]] = {}
        taken: list[_Chunk] = []
        batch_sizes: dict[TopicPartition, int] = {}
        total = 0
        cluster = self._client.cluster
        queue = self._queue
        while queue:
            chunk = queue[0]
            if chunk.append.future.done():  # failed (or its caller gave up): send nothing more of it
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

    async def _round(self) -> float:
        """Send one request per leader from the queue's head; returns the backoff before a retry (or 0)."""
        requests, taken, leaderless = self._take()
        if leaderless:
            self._client.force_metadata_update()
        if not taken:
            if leaderless:
                self._expire(self._queue[0].append, LogUnavailable(f"kafka: no leader for {self._queue[0].tp}"))
                return _RETRY_BACKOFF_S
            return 0.0
        failed: dict[int, BaseException] = {}  # id(chunk) -> its error
        try:
            if len(requests) == 1:
                [(node, batches)] = requests.items()
                try:
                    answer = await self._request(node, batches)
                except (KafkaError, OSError) as exc:
                    answer = exc
                self._answered(batches, answer, failed)
            else:
                nodes = list(requests)
                answers = await asyncio.gather(*(self._request(n, requests[n]) for n in nodes), return_exceptions=True)
                for node, answer in zip(nodes, answers, strict=True):
                    self._answered(requests[node], answer, failed)
        except asyncio.CancelledError:
            for chunk in taken:  # sent or not, nobody will learn which
                chunk.append.fail(LogUnavailable("kafka: append cancelled while its produce request was in flight"))
            raise
        retry = [chunk for chunk in taken if id(chunk) in failed and not chunk.append.future.done()]
        now = asyncio.get_running_loop().time()
        for chunk in retry:
            if now >= chunk.append.expires or not getattr(failed[id(chunk)], "retriable", False):
                chunk.append.fail(failed[id(chunk)])
        retry = [chunk for chunk in retry if not chunk.append.future.done()]
        if not retry and not leaderless:
            return 0.0
        self._queue.extendleft(reversed(retry))
        return _RETRY_BACKOFF_S

    async def _request(self, node: int, batches: dict[TopicPartition, list[_Chunk]]) -> Any:
        topics: dict[str, list[tuple[int, bytearray]]] = {}
        timestamp = int(time.time() * 1000)
        for tp, chunks in batches.items():
            builder = DefaultRecordBatchBuilder(2, self._codec, 0, -1, -1, 0, _UNBOUNDED)
            offset = 0
            for chunk in chunks:
                for key, value in chunk.records:
                    builder.append(offset, timestamp=timestamp, key=key, value=value, headers=[])
                    offset += 1
            topics.setdefault(tp.topic, []).append((tp.partition, builder.build()))
        request = ProduceRequest(
            required_acks=-1, timeout=self._request_timeout_ms, topics=list(topics.items()), transactional_id=None
        )
        return await self._client.send(node, request)

    def _answered(
        self, batches: dict[TopicPartition, list[_Chunk]], answer: Any, failed: dict[int, BaseException]
    ) -> None:
        if isinstance(answer, BaseException):
            if not isinstance(answer, KafkaError | OSError):
                raise answer
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

    def _expire(self, append: _Append, error: BaseException) -> None:
        if asyncio.get_running_loop().time() >= append.expires:
            append.fail(error)
