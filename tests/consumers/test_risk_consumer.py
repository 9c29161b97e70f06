"""The risk consumer over a real embedded log with the real engine: events in, scores and blocks out.

What the consumer publishes is checked against the engine itself run over the same events in log
order (the engine is deterministic): the consumer must neither drop, reorder nor repeat anything,
across a restart too. The traffic: a quiet principal (alice) and one bursting far over the request
rate the default settings tolerate (mallory), which the engine blocks.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from consumers.pipeline import RetryPolicy, parse_dead_letter
from consumers.risk.engine import RiskEngine
from consumers.risk_consumer import RISK_TOPICS, RevokeRelay, RiskConsumer, RiskConsumerSettings, score_key
from eventlog.base import TOPIC_DEAD_LETTER, TOPIC_DECISIONS, TOPIC_EVENTS, TOPIC_RISK, Record, TopicPartition
from eventlog.embedded import EmbeddedLog
from eventlog.kafka import KafkaConsumer, KafkaProducer, KafkaTopicReader
from eventlog.kafka_admin import ensure_topics
from eventlog.kafka_settings import TopicSettings
from mcpgw.risk_runtime import risk_kafka_settings
from schemas.codec import DecisionCodec, EventCodec, RiskScoreCodec
from schemas.decisions import Decision, DecisionAction, DecisionScope, DecisionSource
from schemas.events import Direction, EventType, GatewayEvent, Kind, new_event_id
from schemas.risk import RiskScore
from tests.consumers.support import T0_US, until
from tests.eventlog.kafka_fixture import kafka_settings, unique

FAST = RetryPolicy(initial_s=0.001, max_s=0.01)
EVENTS = TopicPartition(TOPIC_EVENTS, 0)


@pytest.fixture
async def log(tmp_path: Path) -> AsyncIterator[EmbeddedLog]:
    # One partition: the consumer then sees the events in exactly the order the expectation does.
    async with EmbeddedLog(tmp_path / "log", partitions=1) as opened:
        yield opened


def call(principal: str, ts_us: int, session: str, tool: str = "files__read_file") -> GatewayEvent:
    return GatewayEvent(EventType.AGENT_MESSAGE_RECEIVED, Kind.REQUEST, Direction.AGENT_TO_GATEWAY,
                        event_id=new_event_id(), ts_us=ts_us, session_id=session, tenant="acme", principal=principal,
                        server="files", method="tools/call", tool=tool, jsonrpc_id=str(ts_us),
                        payload=b'{"jsonrpc":"2.0","id":1,"method":"tools/call"}')


def quiet(start_us: int, seconds: int) -> list[GatewayEvent]:
    """alice and mallory each make one call every 2 s, over varied tools: ordinary use."""
    return sorted((call(who, start_us + i * 2_000_000 + offset, f"{who}-1", ("time__now", "files__list")[i % 2])
                   for who, offset in (("alice", 0), ("mallory", 1000)) for i in range(seconds // 2)),
                  key=lambda e: e.ts_us)


def burst(start_us: int, seconds: int, per_s: int) -> list[GatewayEvent]:
    """mallory calls `per_s` times a second (the engine judges a rate only after a warm-up of history)."""
    gap = 1_000_000 // per_s
    return [call("mallory", start_us + i * gap, f"mallory-{i % 3}") for i in range(seconds * per_s)]


def traffic() -> list[GatewayEvent]:
    return quiet(T0_US, 70) + burst(T0_US + 70_000_000, 3, 100)


def expected(events: list[GatewayEvent]) -> tuple[list[RiskScore], list[Decision]]:
    engine = RiskEngine()
    scores: list[RiskScore] = []
    decisions: list[Decision] = []
    for event in events:
        assessment = engine.observe(event)
        scores += assessment.scores
        decisions += assessment.decisions
    return scores, decisions


async def append(log: EmbeddedLog, events: list[GatewayEvent] | list[tuple[bytes, bytes]]) -> None:
    codec = EventCodec()
    records = [e if isinstance(e, tuple) else (e.session_id.encode(), codec.encode(e)) for e in events]
    await log.producer().append_batch(TOPIC_EVENTS, records)


async def read(log: EmbeddedLog, topic: str) -> list[Record]:
    reader = log.consumer(f"reader-{new_event_id()}", [topic])
    await reader.start()
    try:
        out: list[Record] = []
        while batch := await reader.poll(10_000, 0.05):
            out.extend(batch)
        return out
    finally:
        await reader.close()


async def published(log: EmbeddedLog) -> tuple[list[RiskScore], list[Decision]]:
    scores, decisions = RiskScoreCodec(), DecisionCodec()
    return ([scores.decode(r.value) for r in await read(log, TOPIC_RISK)],
            [decisions.decode(r.value) for r in await read(log, TOPIC_DECISIONS)])


async def consume(log: EmbeddedLog) -> RiskConsumer:
    """Run a fresh risk consumer (a restart, when one ran before) until it committed all of mcp.events."""
    end = (await log.end_offsets(TOPIC_EVENTS))[EVENTS]
    consumer = log.consumer("risk", RISK_TOPICS)
    risk = RiskConsumer(consumer, log.producer(), RiskEngine, RiskConsumerSettings(poll_timeout_s=0.01, retry=FAST))
    stop = asyncio.Event()
    task = asyncio.create_task(risk.run(stop))
    try:
        # Caught up: everything new committed, or (no new events) everything old fed to the engine.
        await until(lambda: task.done() or max(risk.metrics.committed.get(EVENTS, 0), risk.risk_metrics.rebuilt) >= end,
                    20, "the risk consumer to catch up")
    finally:
        stop.set()
        await task
        await consumer.close()
    return risk


def blocks(decisions: list[Decision]) -> list[tuple[DecisionScope, str]]:
    return [(d.scope, d.subject) for d in decisions if d.action is DecisionAction.BLOCK]


async def test_a_burst_is_scored_and_blocked_on_the_topics(log: EmbeddedLog) -> None:
    events = traffic()
    await append(log, events)
    risk = await consume(log)

    want_scores, want_decisions = expected(events)
    scores, decisions = await published(log)
    assert blocks(want_decisions)[:1] == [(DecisionScope.PRINCIPAL, "mallory")], "the traffic should trip the engine"
    assert "alice" not in {d.subject for d in want_decisions}
    assert scores == want_scores and decisions == want_decisions
    assert risk.risk_metrics.scores == len(scores) and risk.risk_metrics.decisions == len(decisions)
    assert risk.risk_metrics.rebuilt == 0

    records = {r.value: r for r in await read(log, TOPIC_RISK)}
    codec = RiskScoreCodec()
    assert all(r.key == score_key(s.tenant, s.principal) for s in scores for r in [records[codec.encode(s)]])
    decision_records = await read(log, TOPIC_DECISIONS)
    assert [r.key for r in decision_records] == [d.compaction_key().encode() for d in decisions]


async def test_a_restart_rebuilds_the_state_and_publishes_nothing_twice(log: EmbeddedLog) -> None:
    first = quiet(T0_US, 70)
    second = burst(T0_US + 70_000_000, 3, 100)
    await append(log, first)
    await consume(log)
    after_first = await published(log)
    assert after_first == expected(first)

    await append(log, second)
    risk = await consume(log)  # a new process: a new engine, fed the first half from the log
    assert risk.risk_metrics.rebuilt == len(first)
    assert await published(log) == expected(first + second)
    # Without the rebuilt state the burst would not have been blocked (no history: still warming up).
    assert blocks(expected(second)[1]) == [] and blocks(expected(first + second)[1]) != []

    nothing_new = await consume(log)  # a third start with no new events publishes nothing
    assert nothing_new.risk_metrics.scores == nothing_new.risk_metrics.decisions == 0
    assert await published(log) == expected(first + second)


async def test_a_poison_event_is_dead_lettered_once_and_the_rest_scored(log: EmbeddedLog) -> None:
    events = traffic()
    codec = EventCodec()
    records = [(e.session_id.encode(), codec.encode(e)) for e in events]
    records.insert(5, (b"mallory-0", b"\xc3\x01" + b"\x00" * 8 + b"not an event"))
    await append(log, records)
    risk = await consume(log)
    assert risk.metrics.dead_lettered == 1
    assert await published(log) == expected(events)
    letters = [parse_dead_letter(r.value) for r in await read(log, TOPIC_DEAD_LETTER)]
    assert [(d.source, d.topic, d.offset) for d in letters] == [("risk", TOPIC_EVENTS, 5)]
    assert "UnknownSchemaError" in letters[0].reason

    again = await consume(log)  # the rebuild skips it: no second dead letter
    assert again.metrics.dead_lettered == 0 and again.risk_metrics.rebuilt == len(records)
    assert len(await read(log, TOPIC_DEAD_LETTER)) == 1


async def test_an_operator_block_is_noted_so_the_engine_does_not_block_again(log: EmbeddedLog) -> None:
    events = traffic()
    operator = Decision(ts=T0_US + 69_000_000, decision_id="op-1", action=DecisionAction.BLOCK,
                        scope=DecisionScope.PRINCIPAL, subject="mallory", tenant="acme", reason="seen on the SOC desk",
                        source=DecisionSource.OPERATOR, actor="soc@example", expires_at=T0_US + 3_600_000_000)
    await log.producer().append(TOPIC_DECISIONS, operator.compaction_key().encode(), DecisionCodec().encode(operator))
    await append(log, events)
    risk = await consume(log)
    assert risk.risk_metrics.decisions_noted == 1

    engine = RiskEngine()
    want: list[RiskScore] = []
    for event in events:
        if event.ts_us >= operator.ts and not engine.active_blocks(operator.ts):
            engine.note_decision(operator)
        want += engine.observe(event).scores
    scores, decisions = await published(log)
    assert decisions == [operator]  # the burst is scored, but mallory is already blocked
    assert scores == want and max(s.score for s in scores if s.principal == "mallory") >= 80


@pytest.mark.integration
async def test_on_kafka_a_rebalance_and_a_restart_rebuild_and_publish_once(kafka_bootstrap: str) -> None:
    events_topic, risk_topic, decisions_topic, dlq = (unique(f"risk-{t}") for t in ("events", "scores", "dec", "dlq"))
    group = unique("risk")
    one = TopicSettings(partitions=1)  # one order of events, so the expectation can be exact
    settings = risk_kafka_settings(kafka_settings(kafka_bootstrap)).model_copy(
        update={"topics": {events_topic: one, risk_topic: one, decisions_topic: one}})
    await ensure_topics(settings, [events_topic, risk_topic, decisions_topic, dlq])
    producer = KafkaProducer(settings)
    codec = EventCodec()
    first, second = quiet(T0_US, 70), burst(T0_US + 70_000_000, 3, 100)
    risk_settings = RiskConsumerSettings(poll_timeout_s=0.02, retry=FAST, risk_topic=risk_topic,
                                         decisions_topic=decisions_topic, dead_letter_topic=dlq)
    events_tp = TopicPartition(events_topic, 0)

    async def member() -> tuple[RiskConsumer, KafkaConsumer, asyncio.Event, asyncio.Task[None]]:
        relay = RevokeRelay()
        consumer = KafkaConsumer(settings, group, [events_topic, decisions_topic], on_revoke=relay)
        risk = RiskConsumer(consumer, producer, RiskEngine, risk_settings)
        relay.target = risk
        stop = asyncio.Event()
        return risk, consumer, stop, asyncio.create_task(risk.run(stop))

    async def read_topic(topic: str) -> list[bytes]:
        reader = KafkaTopicReader(settings, [topic])
        await reader.start()
        try:
            out: list[bytes] = []
            while batch := await reader.poll(10_000, 0.5):
                out += [r.value for r in batch]
            return out
        finally:
            await reader.close()

    try:
        await producer.append_batch(events_topic, [(e.session_id.encode(), codec.encode(e)) for e in first])
        risk, consumer, stop, task = await member()
        await until(lambda: risk.metrics.committed.get(events_tp, 0) >= len(first), 30, "the first half")

        other = KafkaConsumer(settings, group, [events_topic, decisions_topic])
        await other.start()  # the group rebalances: the risk member flushes, then rebuilds from the log
        await until(lambda: risk.risk_metrics.rebuilds >= 2, 30, "a rebuild after the rebalance")
        await other.close()  # and once more when it has every partition again
        await until(lambda: risk.risk_metrics.rebuilds >= 3 and len(consumer.assignment()) == 2, 30, "a rebuild")

        await producer.append_batch(events_topic, [(e.session_id.encode(), codec.encode(e)) for e in second[:150]])
        await until(lambda: risk.metrics.committed.get(events_tp, 0) >= len(first) + 150, 30, "part of the burst")
        stop.set()
        await task
        await consumer.close()
        # Back with every partition, it read the first half again into a fresh engine, publishing none of it.
        assert risk.risk_metrics.rebuilt >= len(first) and risk.risk_metrics.decisions == 1

        await producer.append_batch(events_topic, [(e.session_id.encode(), codec.encode(e)) for e in second[150:]])
        risk, consumer, stop, task = await member()  # a restart: rebuilt from the log, publishing the rest
        await until(lambda: risk.metrics.committed.get(events_tp, 0) >= len(first) + len(second), 30, "the rest")
        assert risk.risk_metrics.rebuilt == len(first) + 150
        stop.set()
        await task
        await consumer.close()

        want_scores, want_decisions = expected(first + second)
        assert blocks(want_decisions) == [(DecisionScope.PRINCIPAL, "mallory")]
        assert [RiskScoreCodec().decode(v) for v in await read_topic(risk_topic)] == want_scores
        assert [DecisionCodec().decode(v) for v in await read_topic(decisions_topic)] == want_decisions
    finally:
        await producer.close()
