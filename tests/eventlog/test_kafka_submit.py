"""`submit_batch` on the Kafka producer and on the spooling producer, against a real broker (Tansu).

The path `LogEventSink.record` takes in strict mode: records taken without a task, settled by a
callback. It keeps `append_batch`'s promises: settled only once durable (acks=all), per-key order,
a refusal named, and with a spool: records the broker cannot take go to the spool, in order, and
reach the broker once it is back.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Sequence
from pathlib import Path

import pytest

from eventlog.base import LogError, LogUnavailable
from eventlog.embedded import EmbeddedLog
from eventlog.kafka import KafkaConsumer, KafkaProducer
from eventlog.kafka_settings import TopicSettings
from eventlog.spool import DRAIN_GROUP, SpoolingProducer
from tests.eventlog.backends import read_n
from tests.eventlog.kafka_fixture import TansuBroker, kafka_settings, unique
from tests.eventlog.test_kafka_producer import capture_produce_requests

pytestmark = pytest.mark.integration

Records = Sequence[tuple[bytes | None, bytes]]


class Outcomes:
    """Collects what `settle` callbacks report, and checks each is called exactly once."""

    def __init__(self) -> None:
        self.settled: dict[int, LogError | None] = {}
        self._all = asyncio.Event()
        self.expected = 0

    def settle(self, n: int) -> collections.abc.Callable[[LogError | None], None]:
        self.expected += 1

        def settled(error: LogError | None) -> None:
            assert n not in self.settled, f"append {n} settled twice"
            assert asyncio.get_running_loop()  # on the loop
            self.settled[n] = error
            if len(self.settled) == self.expected:
                self._all.set()

        return settled

    async def wait(self, timeout_s: float = 15) -> dict[int, LogError | None]:
        await asyncio.wait_for(self._all.wait(), timeout_s)
        return self.settled


async def test_submitted_records_are_durable_when_settled_and_keep_per_key_order(kafka_bootstrap: str) -> None:
    topic = unique("submit")
    settings = kafka_settings(kafka_bootstrap, topics={topic: TopicSettings(partitions=3)})
    producer = KafkaProducer(settings)
    await producer.start()
    await producer.append(topic, b"warm", b"up")  # creates the topic and loads its metadata
    requests = capture_produce_requests(producer)
    outcomes = Outcomes()
    sessions, per_session = 10, 20
    for i in range(per_session):  # interleaved, as concurrent calls submit them
        for n in range(sessions):
            records = [(f"s{n}".encode(), f"{n}:{i}:{j}".encode()) for j in range(2)]
            assert producer.submit_batch(topic, records, outcomes.settle(i * sessions + n))
    assert set((await outcomes.wait()).values()) == {None}
    assert {r.required_acks for r in requests} == {-1}, "acks=all on the wire"
    assert len(requests) < sessions * per_session, "appends submitted while a request is in flight share the next"
    consumer = KafkaConsumer(settings, unique("g"), [topic])
    await consumer.start()
    seen: dict[int, list[tuple[int, int]]] = collections.defaultdict(list)
    for record in await read_n(consumer, 1 + sessions * per_session * 2):
        if record.key != b"warm":
            n, i, j = map(int, record.value.decode().split(":"))
            seen[n].append((i, j))
    assert seen == {n: [(i, j) for i in range(per_session) for j in range(2)] for n in range(sessions)}
    await consumer.close()
    await producer.close()


async def test_submit_takes_nothing_it_cannot_send_without_waiting(kafka_bootstrap: str) -> None:
    settings = kafka_settings(kafka_bootstrap)
    producer = KafkaProducer(settings)
    topic = unique("later")
    assert not producer.submit_batch(topic, [(b"k", b"v")], Outcomes().settle(0)), "not started"
    await producer.start()
    # A topic not checked yet (nor its metadata loaded): that takes a coroutine, `append_batch`.
    assert not producer.submit_batch(topic, [(b"k", b"v")], Outcomes().settle(0))
    await producer.append_batch(topic, [(b"k", b"v")])
    outcomes = Outcomes()
    assert producer.submit_batch(topic, [(b"k", b"w")], outcomes.settle(0))
    assert await outcomes.wait() == {0: None}
    with pytest.raises(LogUnavailable) as refused:
        producer.submit_batch(topic, [(b"k", b"x" * (settings.max_request_bytes + 1))], Outcomes().settle(1))
    assert refused.value.retryable is False, "a record the broker can never take is a refusal, not an outage"
    await producer.close()


async def test_a_frozen_broker_settles_a_submitted_append_with_an_error(tansu_private: TansuBroker) -> None:
    producer = KafkaProducer(kafka_settings(tansu_private.bootstrap, request_timeout_ms=1_000))
    await producer.start()
    topic = unique("frozen")
    await producer.append(topic, b"k", b"warm-up")
    outcomes = Outcomes()
    with tansu_private.frozen():
        assert producer.submit_batch(topic, [(b"k", b"v")], outcomes.settle(0))
        settled = await outcomes.wait(timeout_s=30)
    assert isinstance(settled[0], LogUnavailable), settled
    await producer.close()


async def test_the_spool_takes_submitted_records_in_order_while_the_broker_is_down_and_drains_them(
        tansu_private: TansuBroker, tmp_path: Path) -> None:
    settings = kafka_settings(tansu_private.bootstrap, request_timeout_ms=1_000)
    topic = unique("spooled")
    spool_log = EmbeddedLog(tmp_path / "spool")
    await spool_log.open()
    spooling = SpoolingProducer(KafkaProducer(settings), spool_log.producer(),
                                spool_log.consumer(DRAIN_GROUP, [topic]), retry_s=0.2)
    await spooling.start()
    await spooling.append(topic, b"warm", b"up")  # creates the topic; the startup drain switches to Kafka
    assert await spooling.wait_drained(30)
    assert spooling.submit_batch(topic, [(b"k", b"direct")], (direct := Outcomes()).settle(0))
    assert await direct.wait() == {0: None}

    outcomes = Outcomes()
    values = [f"{i:03d}".encode() for i in range(30)]
    taken: list[bool] = []
    with tansu_private.frozen():
        for i, value in enumerate(values):
            taken.append(spooling.submit_batch(topic, [(b"k", value)], outcomes.settle(i)))
            if not taken[-1]:
                await spooling.append_batch(topic, [(b"k", value)])  # spooling already: the coroutine path
                outcomes.settle(i)(None)
        settled = await outcomes.wait(timeout_s=30)
        assert taken[0], "the first append went to the broker: its refusal spooled it from the callback"
        assert set(settled.values()) == {None}, "the spool took what the broker could not"
        assert spooling.spooling and spooling.spooled_total > 0
    assert await spooling.wait_drained(60), "the spool drained once the broker was back"
    consumer = KafkaConsumer(settings, unique("g"), [topic])
    await consumer.start()
    got: list[bytes] = []
    async with asyncio.timeout(30):
        while not set(values) <= set(got):
            got.extend(r.value for r in await consumer.poll(100, 0.5) if r.key == b"k")
    # At least once: a request the frozen broker took before it stopped may be stored twice.
    assert list(dict.fromkeys(got)) == [b"direct", *values]
    await consumer.close()
    await spooling.close()
    await spool_log.close()
