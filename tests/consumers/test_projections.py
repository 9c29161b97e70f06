"""The risk and decision projections over a real embedded log into chDB: rows land, replays write nothing twice."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from consumers.pipeline import RetryPolicy, parse_dead_letter
from consumers.projections import (
    DECISIONS_PROJECTION,
    RISK_PROJECTION,
    Projection,
    ProjectionSettings,
    ProjectionSpec,
)
from consumers.store.base import DECISIONS_TABLE, RISK_TABLE, AuditStore
from consumers.store.chdb_store import ChdbStore
from eventlog.base import TOPIC_DEAD_LETTER, TOPIC_DECISIONS, TOPIC_RISK
from eventlog.embedded import EmbeddedLog
from schemas.codec import DecisionCodec, RiskScoreCodec
from schemas.decisions import Decision, DecisionAction, DecisionScope, DecisionSource
from schemas.risk import RiskScore
from tests.consumers.support import T0_US, until

FAST = RetryPolicy(initial_s=0.001, max_s=0.01)


def settings(**overrides: Any) -> ProjectionSettings:
    base: dict[str, Any] = {"max_rows": 50, "max_wait_s": 0.05, "poll_timeout_s": 0.01, "retry": FAST}
    return ProjectionSettings(**{**base, **overrides})


@pytest.fixture
async def chdb(tmp_path: Path) -> AsyncIterator[AuditStore]:
    store = ChdbStore(tmp_path / "store")
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def scores(n: int, principals: int = 3) -> list[RiskScore]:
    return [
        RiskScore(ts=T0_US + i * 1000, score_id=f"score-{i}", tenant="acme", principal=f"agent-{i % principals}",
                  session_id=f"s-{i}" if i % 2 else None, tool="files__read" if i % 3 else None, score=i % 101,
                  reasons=["burst"] if i % 2 else [], signals={"burst": float(i)}, event_id=f"event-{i}",
                  scorer="test")
        for i in range(n)
    ]


def decisions(n: int) -> list[Decision]:
    return [
        Decision(ts=T0_US + i * 1000, decision_id=f"decision-{i}",
                 action=DecisionAction.BLOCK if i % 2 == 0 else DecisionAction.UNBLOCK,
                 scope=DecisionScope.PRINCIPAL, subject=f"agent-{i // 2}", tenant="acme" if i % 3 else None,
                 reason="score over threshold", source=DecisionSource.RISK_ENGINE, actor="risk",
                 expires_at=T0_US + 600_000_000 if i % 2 == 0 else None, risk_score=90 if i % 2 == 0 else None,
                 evidence_event_ids=[f"event-{i}"])
        for i in range(n)
    ]


async def publish_scores(log: EmbeddedLog, values: list[RiskScore]) -> None:
    codec = RiskScoreCodec()
    await log.producer().append_batch(TOPIC_RISK, [(f"{s.tenant}:{s.principal}".encode(), codec.encode(s))
                                                   for s in values])


async def publish_decisions(log: EmbeddedLog, values: list[Decision]) -> None:
    codec = DecisionCodec()
    await log.producer().append_batch(TOPIC_DECISIONS, [(d.compaction_key().encode(), codec.encode(d))
                                                        for d in values])


async def project(log: EmbeddedLog, spec: ProjectionSpec[Any], store: AuditStore, group: str | None = None,
                  **overrides: Any) -> Projection[Any]:
    """Run the projection until it has committed the whole topic, then stop it."""
    ends = await log.end_offsets(spec.topic)
    consumer = log.consumer(group or spec.name, [spec.topic])
    projection = Projection(spec, consumer, store, log.producer(), settings(**overrides))
    stop = asyncio.Event()
    task = asyncio.create_task(projection.run(stop))
    try:
        await until(lambda: task.done() or all(projection.metrics.committed.get(tp, 0) >= end
                                               for tp, end in ends.items() if end), 20, "the projection's commits")
    finally:
        stop.set()
        await task
        await consumer.close()
    return projection


async def column(store: AuditStore, sql: str) -> list[Any]:
    return [row[0] for row in (await store.query(sql)).rows]


async def test_scores_land_in_risk_scores_field_for_field(log: EmbeddedLog, chdb: AuditStore) -> None:
    published = scores(120)
    await publish_scores(log, published)
    projection = await project(log, RISK_PROJECTION, chdb)
    assert projection.metrics.inserted == 120
    result = await chdb.query(f"SELECT * FROM {RISK_TABLE} WHERE score_id = 'score-7'")
    row = dict(zip(result.columns, result.rows[0], strict=True))
    assert row["principal"] == "agent-1" and row["score"] == 7 and row["reasons"] == ["burst"]
    assert row["session_id"] == "s-7" and row["tool"] == "files__read" and row["signals"] == {"burst": 7.0}
    assert row["ts"] == datetime.fromtimestamp((T0_US + 7000) / 1e6, UTC)
    assert sorted(await column(chdb, f"SELECT score_id FROM {RISK_TABLE}")) == sorted(s.score_id for s in published)


async def test_decisions_land_in_decisions_with_nulls_kept(log: EmbeddedLog, chdb: AuditStore) -> None:
    await publish_decisions(log, decisions(10))
    await project(log, DECISIONS_PROJECTION, chdb)
    result = await chdb.query(f"SELECT decision_id, action, tenant, expires_at, risk_score, source FROM "
                              f"{DECISIONS_TABLE} ORDER BY decision_id")
    by_id = {r[0]: r[1:] for r in result.rows}
    assert len(by_id) == 10
    assert by_id["decision-0"] == ("block", None, datetime.fromtimestamp((T0_US + 600_000_000) / 1e6, UTC), 90,
                                   "risk_engine")
    assert by_id["decision-1"] == ("unblock", "acme", None, None, "risk_engine")


async def test_a_replay_writes_nothing_twice_however_it_is_cut(log: EmbeddedLog, chdb: AuditStore) -> None:
    await publish_scores(log, scores(200))
    await publish_decisions(log, decisions(30))
    await project(log, RISK_PROJECTION, chdb, max_rows=64)
    await project(log, DECISIONS_PROJECTION, chdb, max_rows=7)
    # A new group replays both topics from the beginning, with batches cut elsewhere.
    again = await project(log, RISK_PROJECTION, chdb, group="risk-replay", max_rows=37)
    redo = await project(log, DECISIONS_PROJECTION, chdb, group="decisions-replay", max_rows=1000)
    assert again.metrics.already_written == 200 and redo.metrics.already_written == 30
    assert await column(chdb, f"SELECT count() FROM {RISK_TABLE}") == [200]
    assert await column(chdb, f"SELECT count() FROM {DECISIONS_TABLE}") == [30]


async def test_a_republished_score_is_not_written_twice(log: EmbeddedLog, chdb: AuditStore) -> None:
    """An at-least-once producer (the risk consumer after a crash) appends the same scores again."""
    published = scores(40)
    await publish_scores(log, published)
    await project(log, RISK_PROJECTION, chdb)
    await publish_scores(log, published[25:] + scores(45)[40:])  # 15 duplicates, 5 new
    projection = await project(log, RISK_PROJECTION, chdb)
    assert projection.metrics.already_written == 15
    counts = await chdb.query(f"SELECT score_id, count() FROM {RISK_TABLE} GROUP BY score_id HAVING count() > 1")
    assert counts.rows == []
    assert await column(chdb, f"SELECT count() FROM {RISK_TABLE}") == [45]


async def test_a_poison_record_goes_to_the_dead_letter_topic(log: EmbeddedLog, chdb: AuditStore) -> None:
    codec = DecisionCodec()
    good = decisions(4)
    records: list[tuple[bytes | None, bytes]] = [(d.compaction_key().encode(), codec.encode(d)) for d in good]
    records.insert(2, (b"principal:mallory", b"not a decision"))
    await log.producer().append_batch(TOPIC_DECISIONS, records)
    projection = await project(log, DECISIONS_PROJECTION, chdb)
    assert projection.metrics.dead_lettered == 1
    assert sorted(await column(chdb, f"SELECT decision_id FROM {DECISIONS_TABLE}")) == [d.decision_id for d in good]
    reader = log.consumer("dlq-reader", [TOPIC_DEAD_LETTER])
    await reader.start()
    letters = [parse_dead_letter(r.value) for r in await reader.poll(100, 0.1)]
    await reader.close()
    assert [(d.source, d.topic, d.key, d.value) for d in letters] == [
        ("decisions-projection", TOPIC_DECISIONS, b"principal:mallory", b"not a decision")]
    assert "MalformedMessageError" in letters[0].reason
