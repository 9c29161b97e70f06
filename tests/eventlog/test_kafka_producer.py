"""KafkaProducer against a real broker (Tansu): durability settings on the wire, failures, recovery."""

from __future__ import annotations

import asyncio
import io
import struct
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiokafka.protocol import produce  # type: ignore[import-untyped]

from eventlog.base import LogUnavailable
from eventlog.kafka import KafkaConsumer, KafkaProducer
from tests.eventlog.backends import read_n
from tests.eventlog.kafka_fixture import TansuBroker, kafka_settings, unique

pytestmark = pytest.mark.integration

ZSTD = 4  # record batch attributes, bits 0-2
PRODUCE_REQUESTS = {v: getattr(produce, f"ProduceRequest_v{v}") for v in range(3, 9)}


def capture_produce_requests(producer: KafkaProducer) -> list[Any]:
    """Every produce request the producer writes from now on onto its open broker connections (aiokafka's
    and the direct path's own), as the broker reads it: decoded from the bytes on the wire by
    aiokafka's own request schemas (so the direct path's hand-written encoding is checked against them)."""
    seen: list[Any] = []

    def capturing(original: Any) -> Any:
        def write(data: bytes) -> None:
            api_key, version = struct.unpack_from(">hh", data, 4)
            if api_key == 0:  # produce
                (client_id_length,) = struct.unpack_from(">h", data, 12)
                seen.append(PRODUCE_REQUESTS[version].decode(io.BytesIO(data[14 + max(0, client_id_length):])))
            original(data)

        return write

    for conn in producer._producer.client._conns.values():
        conn._writer.write = capturing(conn._writer.write)
    links = producer._direct._links if producer._direct is not None else None
    for own in getattr(links, "_conns", {}).values():
        own._write = capturing(own._write)
    return seen


def codec(batch: bytes) -> int:
    return int.from_bytes(batch[21:23], "big") & 0x7  # record batch attributes, bits 0-2


def batches(request: Any) -> list[bytes]:
    return [bytes(records) for _topic, partitions in request.topics for _p, records in partitions]


@pytest.fixture
async def producer(kafka_bootstrap: str) -> AsyncIterator[KafkaProducer]:
    producer = KafkaProducer(kafka_settings(kafka_bootstrap))
    await producer.start()
    yield producer
    await producer.close()


async def test_appends_wait_for_all_replicas_and_are_zstd_compressed(producer: KafkaProducer) -> None:
    topic = unique("acks")
    await producer.append(topic, b"k", b"warm-up")  # creates the topic, fetches metadata
    requests = capture_produce_requests(producer)
    await producer.append(topic, b"k", b"x" * 5000)
    assert requests, "append returned without a produce request"
    assert {r.required_acks for r in requests} == {-1}, "acks=all is -1 on the wire"
    assert [codec(batch) for batch in batches(requests[-1])] == [ZSTD]


@pytest.mark.parametrize("min_bytes", [4096, 0])
async def test_batches_under_compression_min_bytes_go_uncompressed(kafka_bootstrap: str, min_bytes: int) -> None:
    producer = KafkaProducer(kafka_settings(kafka_bootstrap, compression_min_bytes=min_bytes))
    await producer.start()
    topic = unique("small")
    await producer.append(topic, b"k", b"warm-up")
    requests = capture_produce_requests(producer)
    await producer.append_batch(topic, [(b"k", b"y" * 700), (b"k", b"z" * 700)])  # a call's two events
    assert [codec(batch) for r in requests for batch in batches(r)] == [ZSTD if min_bytes == 0 else 0]
    await producer.close()


async def test_concurrent_appends_share_produce_requests(producer: KafkaProducer) -> None:
    topic = unique("batching")
    await producer.append(topic, b"k", b"warm-up")
    requests = capture_produce_requests(producer)
    n = 500
    await asyncio.gather(*(producer.append(topic, f"session-{i % 20}".encode(), b"e" * 200) for i in range(n)))
    assert 1 <= len(requests) <= n // 10, f"{n} concurrent appends took {len(requests)} produce requests"


async def test_idempotence_is_honoured_and_a_broker_refusing_it_is_named(kafka_bootstrap: str) -> None:
    producer = KafkaProducer(kafka_settings(kafka_bootstrap, enable_idempotence=True))
    with pytest.raises(LogUnavailable, match="enable_idempotence: false") as refused:
        await producer.start()
    assert "InitProducerId" in str(refused.value)
    assert refused.value.retryable is False, "waiting will not make the broker support it"
    with pytest.raises(LogUnavailable, match="enable_idempotence"):  # appends say the same, not hang
        await producer.append(unique("idem"), b"k", b"v")
    await producer.close()

    plain = KafkaProducer(kafka_settings(kafka_bootstrap, enable_idempotence=False))
    await plain.start()
    assert plain._producer._txn_manager is None, "enable_idempotence=False must reach aiokafka"
    await plain.close()


async def test_a_frozen_broker_fails_the_append_within_the_request_timeout(tansu_private: TansuBroker) -> None:
    producer = KafkaProducer(kafka_settings(tansu_private.bootstrap, request_timeout_ms=1000))
    await producer.start()
    topic = unique("frozen")
    await producer.append(topic, b"k", b"before")
    with tansu_private.frozen():
        started = time.monotonic()
        with pytest.raises(LogUnavailable, match=rf"append to '{topic}' failed: \w+Error") as failed:
            await producer.append(topic, b"k", b"while frozen")
        elapsed = time.monotonic() - started
    assert elapsed < 2.5, f"took {elapsed:.1f}s with request_timeout_ms=1000"
    assert failed.value.retryable is True
    await producer.append(topic, b"k", b"after")  # the same producer recovers once the broker answers
    await producer.close()


async def test_a_producer_started_during_an_outage_connects_on_a_later_append(tansu_private: TansuBroker) -> None:
    tansu_private.kill()
    producer = KafkaProducer(kafka_settings(tansu_private.bootstrap, request_timeout_ms=1000))
    started = time.monotonic()
    with pytest.raises(LogUnavailable, match="kafka: admin request failed"):
        await producer.start()
    assert time.monotonic() - started < 5
    tansu_private.start()
    topic = unique("late")
    await producer.append(topic, b"k", b"v")
    await producer.close()


# linger 0 (the default): the first append after the restart usually goes out on a new connection
# before anything re-creates the topic, and Tansu acknowledges it into the topic it lost, then drops
# it when a metadata request re-creates the topic; the producer must notice the lost connection and
# send again. With a linger, aiokafka's metadata refresh usually re-creates the topic first.
@pytest.mark.parametrize("linger_ms", [0, 2])
async def test_appends_recover_after_the_broker_restarts_empty(tansu_private: TansuBroker, linger_ms: int) -> None:
    settings = kafka_settings(tansu_private.bootstrap, request_timeout_ms=1000, linger_ms=linger_ms)
    producer = KafkaProducer(settings)
    await producer.start()
    topic = unique("restart")
    await producer.append(topic, b"k", b"lost with the broker")
    tansu_private.restart()  # memory-only: topics and records are gone

    async def append_with_retries() -> int:
        for attempt in range(1, 11):
            try:
                await producer.append(topic, b"k", b"after restart")
                return attempt
            except LogUnavailable:
                await asyncio.sleep(0.1)
        raise AssertionError("append never succeeded after the broker came back")

    attempts = await asyncio.wait_for(append_with_retries(), 60)
    assert attempts <= 3
    consumer = KafkaConsumer(settings, unique("g"), [topic])
    await consumer.start()
    assert [r.value for r in await read_n(consumer, 1)] == [b"after restart"]
    # Which side recreated the topic is a race: Tansu (like Apache Kafka with its default
    # auto.create.topics.enable=true) creates a topic a client asks metadata for, with broker defaults,
    # and aiokafka's metadata refresh after the failed produce usually asks first.
    assert consumer.assignment(), "the topic exists again"
    await consumer.close()
    await producer.close()


async def test_a_record_the_broker_can_never_take_is_not_retryable(kafka_bootstrap: str) -> None:
    producer = KafkaProducer(kafka_settings(kafka_bootstrap, max_request_bytes=64 * 1024))
    await producer.start()
    with pytest.raises(LogUnavailable, match="MessageSizeTooLarge") as refused:
        await producer.append(unique("big"), b"k", b"x" * 200_000)
    assert refused.value.retryable is False
    await producer.close()


async def test_append_batch_keeps_order_and_empty_batches_are_free(
    producer: KafkaProducer, kafka_bootstrap: str
) -> None:
    topic = unique("batch")
    await producer.append_batch(topic, [])
    await producer.append_batch(topic, [(b"one-key", str(i).encode()) for i in range(100)])
    consumer = KafkaConsumer(kafka_settings(kafka_bootstrap), unique("g"), [topic])
    await consumer.start()
    assert [int(r.value) for r in await read_n(consumer, 100)] == list(range(100))
    await consumer.close()


async def test_a_closed_producer_refuses_appends(kafka_bootstrap: str) -> None:
    producer = KafkaProducer(kafka_settings(kafka_bootstrap))
    await producer.start()
    await producer.close()
    with pytest.raises(LogUnavailable, match="closed") as refused:
        await producer.append(unique("closed"), b"k", b"v")
    assert refused.value.retryable is False
