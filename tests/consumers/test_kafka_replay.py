"""`mcpgw replay` on Kafka (a real Tansu broker, a real chDB store, the real command): it reads every
topic to the end it had when the replay started, says so (`complete: true`, exit 0), and a second
replay writes nothing and is complete too. Also `end_offsets` against Tansu's short ListOffsets answer.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from eventlog.base import TOPIC_DEAD_LETTER, TOPIC_DECISIONS, TOPIC_EVENTS, TOPIC_RISK, TopicPartition
from eventlog.kafka import KafkaProducer
from eventlog.kafka_admin import ensure_topics
from eventlog.kafka_consumer import end_offsets
from eventlog.kafka_settings import TopicSettings
from schemas.codec import DecisionCodec, RiskScoreCodec
from tests.consumers.support import append_events, kafka_chdb_config, make_events
from tests.consumers.test_projections import decisions, scores
from tests.eventlog.kafka_fixture import TansuBroker, kafka_settings, unique
from tests.support.durable import mcpgw_argv
from tests.support.gateway import REPO

pytestmark = pytest.mark.integration

EVENTS, SCORES, DECISIONS = 120, 30, 8


async def test_end_offsets_are_where_the_records_end_even_when_tansu_answers_short(kafka_bootstrap: str) -> None:
    topic, empty = unique("ends"), unique("ends-empty")
    settings = kafka_settings(kafka_bootstrap).model_copy(
        update={"topics": {topic: TopicSettings(partitions=2), empty: TopicSettings(partitions=1)}})
    await ensure_topics(settings, [topic, empty])
    producer = KafkaProducer(settings)
    await producer.start()
    try:
        # Batches of several records per partition: Tansu's ListOffsets answers the last batch's start + 1.
        for n in range(4):
            await producer.append_batch(topic, [(f"k{i}".encode(), b"v") for i in range(9)])
            await producer.append(topic, f"single-{n}".encode(), b"v")
    finally:
        await producer.close()
    ends = await end_offsets(settings, [topic, empty, unique("absent")])
    assert sum(end for tp, end in ends.items() if tp.topic == topic) == 40
    assert ends[TopicPartition(empty, 0)] == 0
    assert {tp.topic for tp in ends} == {topic, empty}


def replay(config: Path) -> dict[str, Any]:
    done = subprocess.run([*mcpgw_argv(), "--log-level", "WARNING", "replay", "-c", str(config)], cwd=REPO,
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)  # fmt: skip
    assert done.returncode == 0, (done.stdout, done.stderr)
    summary: dict[str, Any] = json.loads(done.stdout)
    return summary


async def test_a_replay_on_kafka_reads_everything_says_complete_and_a_second_writes_nothing(
        tmp_path: Path, tansu_private: TansuBroker) -> None:
    settings = kafka_settings(tansu_private.bootstrap)
    await ensure_topics(settings, [TOPIC_EVENTS, TOPIC_RISK, TOPIC_DECISIONS, TOPIC_DEAD_LETTER])
    producer = KafkaProducer(settings)
    await producer.start()
    try:
        events = make_events(EVENTS, sessions=6)
        for start in range(0, EVENTS, 40):  # several batches per partition
            await append_events(producer, events[start:start + 40])
        score_codec, decision_codec = RiskScoreCodec(), DecisionCodec()
        await producer.append_batch(TOPIC_RISK, [(f"{s.tenant}:{s.principal}".encode(), score_codec.encode(s))
                                                 for s in scores(SCORES)])
        await producer.append_batch(TOPIC_DECISIONS, [(d.compaction_key().encode(), decision_codec.encode(d))
                                                      for d in decisions(DECISIONS)])
    finally:
        await producer.close()
    config = kafka_chdb_config(tmp_path, tansu_private.bootstrap, "mcpgw-replay-test")

    first = replay(config)
    assert first["complete"] is True, first
    assert (first["consumed"], first["inserted"], first["already_stored"]) == (EVENTS, EVENTS, 0), first
    assert first["projections"] == {
        "audit.risk_scores": {"consumed": SCORES, "inserted": SCORES, "already_stored": 0, "complete": True},
        "audit.decisions": {"consumed": DECISIONS, "inserted": DECISIONS, "already_stored": 0, "complete": True},
    }

    second = replay(config)
    assert second["complete"] is True, second
    assert (second["consumed"], second["inserted"], second["already_stored"]) == (EVENTS, 0, EVENTS), second
    assert second["projections"] == {
        "audit.risk_scores": {"consumed": SCORES, "inserted": 0, "already_stored": SCORES, "complete": True},
        "audit.decisions": {"consumed": DECISIONS, "inserted": 0, "already_stored": DECISIONS, "complete": True},
    }
