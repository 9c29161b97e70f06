"""The direct path's own broker connection (eventlog/kafka_conn.py).

Framing, answer order and failures are driven by a scripted broker (a real TCP server speaking just
ApiVersions and produce, since Tansu cannot be made to split, merge or misnumber its answers);
the rest runs against Tansu: the producer's appends go over these connections, and a connection
lost with a request in flight fails it and counts as a loss.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]
from aiokafka.errors import CorrelationIdError, KafkaConnectionError, RequestTimedOutError  # type: ignore[import-untyped]
from aiokafka.protocol.admin import ApiVersionResponse_v0  # type: ignore[import-untyped]
from aiokafka.protocol.produce import ProduceResponse_v7  # type: ignore[import-untyped]

from eventlog.base import LogUnavailable
from eventlog.kafka import KafkaProducer
from eventlog.kafka_conn import LeaderLinks, ProduceConnection, connect
from eventlog.kafka_direct import DirectSender
from eventlog.kafka_settings import KafkaSecurity
from eventlog.kafka_wire import AiokafkaLinks, ProduceAnswer
from tests.eventlog.kafka_fixture import TansuBroker, kafka_settings, unique
from tests.eventlog.test_kafka_submit import Outcomes

TOPICS = [("t", [(0, b"batch")])]


def frame(correlation_id: int, body: bytes) -> bytes:
    return struct.pack(">ii", len(body) + 4, correlation_id) + body


def produce_answer(correlation_id: int, error_code: int = 0) -> bytes:
    return frame(correlation_id, ProduceResponse_v7(topics=[("t", [(0, error_code, 7, -1, 0)])],
                                                    throttle_time_ms=0).encode())


class ScriptedBroker:
    """Answers ApiVersions (produce v3-v9) itself; produce requests' correlation ids go to `requests`,
    and the test writes the answers (or none) on `writer`."""

    def __init__(self) -> None:
        self.requests: asyncio.Queue[int] = asyncio.Queue()
        self.writer: asyncio.StreamWriter | None = None
        self.port = 0
        self._server: asyncio.Server | None = None
        self._serving: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        task = asyncio.current_task()
        assert task is not None
        self._serving.add(task)
        try:
            while True:
                (size,) = struct.unpack(">i", await reader.readexactly(4))
                api_key, _version, correlation_id = struct.unpack_from(">hhi", await reader.readexactly(size))
                if api_key == 18:
                    versions = ApiVersionResponse_v0(error_code=0, api_versions=[(0, 3, 9), (18, 0, 3)])
                    writer.write(frame(correlation_id, versions.encode()))
                else:
                    self.requests.put_nowait(correlation_id)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
        finally:
            self._serving.discard(task)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        assert self._server is not None
        self._server.close()
        await asyncio.wait_for(asyncio.gather(*self._serving), 10)
        await self._server.wait_closed()


class Answers:
    def __init__(self) -> None:
        self.got: list[Any] = []
        self.closed: list[bool] = []
        self._changed = asyncio.Event()

    def answer(self, answer: Any) -> None:
        self.got.append(answer)
        self._changed.set()

    def on_closed(self, conn: ProduceConnection, lost: bool) -> None:
        self.closed.append(lost)

    async def wait(self, n: int) -> list[Any]:
        async with asyncio.timeout(10):
            while len(self.got) < n:
                self._changed.clear()
                await self._changed.wait()
        return self.got


@pytest.fixture
async def broker() -> AsyncIterator[ScriptedBroker]:
    scripted = ScriptedBroker()
    await scripted.start()
    yield scripted
    await scripted.close()


async def opened(broker: ScriptedBroker, answers: Answers, timeout_s: float = 10.0) -> ProduceConnection:
    conn = await connect(1, "127.0.0.1", broker.port, None, b"test", timeout_s, answers.on_closed)
    assert conn.version == 7, "the highest produce version both sides speak, up to 7"
    return conn


async def test_an_answer_split_across_reads_is_put_back_together(broker: ScriptedBroker) -> None:
    answers = Answers()
    conn = await opened(broker, answers)
    conn.produce(TOPICS, 1000, answers.answer)
    data = produce_answer(await broker.requests.get())
    for i in range(len(data)):  # one byte per read: the size prefix and the body both split
        conn.data_received(data[i:i + 1])
    assert [a.topics for a in await answers.wait(1)] == [[("t", [(0, 0)])]]
    conn.close(KafkaConnectionError("done"), lost=False)
    assert answers.closed == [False]


async def test_several_answers_in_one_read_settle_in_request_order(broker: ScriptedBroker) -> None:
    answers = Answers()
    conn = await opened(broker, answers)
    for _ in range(3):
        conn.produce(TOPICS, 1000, answers.answer)
    ids = [await broker.requests.get() for _ in range(3)]
    assert broker.writer is not None
    broker.writer.write(b"".join(produce_answer(cid, error_code=n) for n, cid in enumerate(ids)))
    got = await answers.wait(3)
    assert all(isinstance(a, ProduceAnswer) for a in got)
    assert [a.topics[0][1][0][1] for a in got] == [0, 1, 2]
    # Two answers and the start of a third in one read, the rest in the next.
    for _ in range(3):
        conn.produce(TOPICS, 1000, answers.answer)
    data = b"".join([produce_answer(await broker.requests.get()) for _ in range(3)])
    conn.data_received(data[:-5])
    assert len(answers.got) == 5
    conn.data_received(data[-5:])
    assert len(answers.got) == 6
    conn.close(KafkaConnectionError("done"), lost=False)


async def test_a_connection_lost_mid_flight_fails_what_awaits_an_answer(broker: ScriptedBroker) -> None:
    answers = Answers()
    conn = await opened(broker, answers)
    conn.produce(TOPICS, 1000, answers.answer)
    conn.produce(TOPICS, 1000, answers.answer)
    await broker.requests.get()
    assert broker.writer is not None
    broker.writer.close()
    got = await answers.wait(2)
    assert all(isinstance(a, KafkaConnectionError) for a in got), got
    assert conn.closed and answers.closed == [True], "reported as a loss"
    conn.produce(TOPICS, 1000, answers.answer)  # on a closed connection: an error, not a hang
    assert isinstance((await answers.wait(3))[2], KafkaConnectionError)


async def test_a_mismatched_correlation_id_is_a_clear_error_not_a_hang(broker: ScriptedBroker) -> None:
    answers = Answers()
    conn = await opened(broker, answers)
    conn.produce(TOPICS, 1000, answers.answer)
    conn.produce(TOPICS, 1000, answers.answer)
    first = await broker.requests.get()
    assert broker.writer is not None
    broker.writer.write(produce_answer(first + 1))
    got = await answers.wait(2)
    assert isinstance(got[0], CorrelationIdError)
    assert f"sent {first}, received {first + 1}" in str(got[0])
    assert isinstance(got[1], CorrelationIdError | KafkaConnectionError)
    assert conn.closed and answers.closed == [True]


async def test_a_malformed_answer_or_an_unasked_one_closes_the_connection(broker: ScriptedBroker) -> None:
    answers = Answers()
    conn = await opened(broker, answers)
    conn.produce(TOPICS, 1000, answers.answer)
    conn.data_received(frame(await broker.requests.get(), b"\x00\x00\x00\x05tr"))
    assert isinstance((await answers.wait(1))[0], KafkaConnectionError)
    assert conn.closed and answers.closed == [True]
    other = await opened(broker, answers)
    other.data_received(produce_answer(99))
    assert other.closed and answers.closed == [True, True]


async def test_an_unanswered_request_times_out_and_closes_the_connection(broker: ScriptedBroker) -> None:
    answers = Answers()
    conn = await opened(broker, answers, timeout_s=0.2)
    conn.produce(TOPICS, 200, answers.answer)
    await broker.requests.get()  # taken, never answered
    assert isinstance((await answers.wait(1))[0], RequestTimedOutError)
    assert conn.closed and answers.closed == [True]


async def test_an_idle_connection_is_closed_by_us_and_not_counted_as_a_loss(broker: ScriptedBroker) -> None:
    answers = Answers()
    gone = asyncio.Event()

    def on_closed(conn: ProduceConnection, lost: bool) -> None:
        answers.on_closed(conn, lost)
        gone.set()

    conn = await connect(1, "127.0.0.1", broker.port, None, b"test", 10.0, on_closed, idle_s=0.05)
    conn.produce(TOPICS, 1000, answers.answer)
    conn.data_received(produce_answer(await broker.requests.get()))
    await asyncio.wait_for(gone.wait(), 10)
    assert conn.closed and answers.closed == [False], "an idle drop loses nothing"
    assert isinstance((await answers.wait(1))[0], ProduceAnswer)


async def test_appends_go_over_the_senders_own_connections_and_sasl_keeps_aiokafkas(kafka_bootstrap: str) -> None:
    producer = KafkaProducer(kafka_settings(kafka_bootstrap))
    await producer.start()
    await producer.append(unique("own"), b"k", b"v")
    assert producer._direct is not None
    links = producer._direct._links
    assert isinstance(links, LeaderLinks) and links._conns, "the append went over an own connection"
    await producer.close()
    assert not links._conns

    sasl = kafka_settings(kafka_bootstrap, security=KafkaSecurity(
        security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN", sasl_plain_username="u",
        sasl_plain_password="p"))  # fmt: skip
    unstarted = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    assert isinstance(DirectSender(unstarted, sasl, lambda: None)._links, AiokafkaLinks)


async def test_a_broker_dying_mid_flight_fails_the_append_and_counts_a_loss(tansu_private: TansuBroker) -> None:
    producer = KafkaProducer(kafka_settings(tansu_private.bootstrap, request_timeout_ms=1_000))
    await producer.start()
    topic = unique("dying")
    await producer.append(topic, b"k", b"warm-up")
    losses = producer._losses
    outcomes = Outcomes()
    tansu_private.freeze()  # the request is sent, never answered
    assert producer.submit_batch(topic, [(b"k", b"v")], outcomes.settle(0))
    assert tansu_private.process is not None
    tansu_private.process.kill()  # while stopped: it never runs again to answer
    tansu_private.process.wait(10)
    settled = await outcomes.wait(timeout_s=30)
    assert isinstance(settled[0], LogUnavailable), settled
    assert producer._losses > losses, "the lost connection is counted: topics are checked again"
    await producer.close()
