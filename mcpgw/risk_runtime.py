"""Running the risk consumer and its projections: in the gateway process (`mcpgw up`) or on their own
(`mcpgw consume risk`).

Three consumers, one role. The risk consumer (group `risk`) reads `mcp.events` and publishes scores
to `mcp.risk` and decisions to `mcp.decisions`; it needs only the log, so it runs while the audit
store is down. The projections (groups `risk-projection`, `decisions-projection`) copy those two
topics into `audit.risk_scores` and `audit.decisions`; they open the store on their own task,
retrying while it is unavailable, and catch up from the topics once it is back.

`replay_projections` (for `mcpgw replay`) reruns the projections from the beginning of their topics
under groups of their own: the tables are projections of the log, so they can be rebuilt from it,
and the writers skip the rows already stored, so a replay writes nothing twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

from consumers.pipeline import ConsumerMetrics, Rebalance, RetryPolicy
from consumers.projections import DECISIONS_PROJECTION, RISK_PROJECTION, Projection, ProjectionSpec
from consumers.risk.engine import RiskEngine
from consumers.risk_consumer import RISK_TOPICS, RevokeRelay, RiskConsumer
from consumers.store.base import AuditStore, StoreError
from eventlog.base import TOPIC_EVENTS, Consumer, Producer
from eventlog.embedded.log import EmbeddedLog
from eventlog.kafka import KafkaConsumer, KafkaProducer
from eventlog.kafka_settings import KafkaSettings
from mcpgw.config import GatewayConfig
from mcpgw.log_ends import Ends, committed_through, of_topic
from mcpgw.stores import store_for

log = logging.getLogger("mcpgw.consumers")

RISK_GROUP = "risk"
# The risk consumer's Kafka fetches: a broker holds an empty fetch this long before answering, and
# that wait is on the path from a triggering event to its block (target: p95 under a second).
RISK_FETCH_MAX_WAIT_MS = 20
STOP_TIMEOUT_S = 35.0
PROJECTION_SPECS: Sequence[ProjectionSpec[Any]] = (RISK_PROJECTION, DECISIONS_PROJECTION)


class RunningRisk:
    """The risk consumer's and the projections' tasks; `close` stops them (the stack calls it)."""

    def __init__(self, risk: RiskConsumer, stop: asyncio.Event, task: asyncio.Task[None],
                 projections_task: asyncio.Task[None] | None) -> None:
        self.risk = risk
        self.stop = stop
        self.task = task
        self.projections_task = projections_task
        self.projections: list[Projection[Any]] = []  # filled once the store is open

    @property
    def tasks(self) -> list[asyncio.Task[None]]:
        return [t for t in (self.task, self.projections_task) if t is not None]

    async def close(self) -> None:
        self.stop.set()
        for task in self.tasks:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(task), STOP_TIMEOUT_S)
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task


def risk_kafka_settings(kafka: KafkaSettings) -> KafkaSettings:
    consumer = kafka.consumer
    fast = consumer.model_copy(update={"fetch_max_wait_ms": min(consumer.fetch_max_wait_ms, RISK_FETCH_MAX_WAIT_MS)})
    return kafka.model_copy(update={"consumer": fast})


async def start_risk(config: GatewayConfig, local_log: EmbeddedLog | None, stack: AsyncExitStack, *,
                     projections: bool = True) -> RunningRisk:
    """Start the risk consumer (and, with `projections`, the store projections); the stack stops them."""
    kafka = config.kafka
    if kafka is None and local_log is None:
        raise RuntimeError("the risk consumer needs the embedded log or Kafka (event_log: memory has no consumers)")
    producer = await _producer(kafka, local_log, stack)
    relay = RevokeRelay()
    risk_kafka = risk_kafka_settings(kafka) if kafka is not None else None
    consumer = _consumer(risk_kafka, local_log, RISK_GROUP, list(RISK_TOPICS), relay)
    stack.push_async_callback(consumer.close)
    settings = config.risk
    risk = RiskConsumer(consumer, producer, lambda: RiskEngine(settings))
    relay.target = risk
    stop = asyncio.Event()
    task = asyncio.create_task(risk.run(stop), name="risk-consumer")
    task.add_done_callback(lambda t: _report(t, "the risk consumer"))
    projections_task = None
    running = RunningRisk(risk, stop, task, None)
    if projections:
        projections_task = asyncio.create_task(_project(config, kafka, local_log, producer, running),
                                               name="risk-projections")
        projections_task.add_done_callback(lambda t: _report(t, "the risk projections"))
        running.projections_task = projections_task
    stack.push_async_callback(running.close)
    log.info("risk consumer (group %s) reading %s", RISK_GROUP, TOPIC_EVENTS)
    return running


async def _project(config: GatewayConfig, kafka: KafkaSettings | None, local_log: EmbeddedLog | None,
                   dlq: Producer, running: RunningRisk) -> None:
    async with AsyncExitStack() as stack:
        store = await _open_store(config, running.stop)
        if store is None:
            return
        stack.push_async_callback(store.close)
        for spec in PROJECTION_SPECS:
            rebalance = Rebalance()
            consumer = _consumer(kafka, local_log, spec.name, [spec.topic], rebalance)
            stack.push_async_callback(consumer.close)
            running.projections.append(Projection(spec, consumer, store, dlq, rebalance=rebalance))
        log.info("risk projections writing %s to %s", ", ".join(s.table for s in PROJECTION_SPECS),
                 type(store).__name__)
        await asyncio.gather(*(p.run(running.stop) for p in running.projections))


async def _open_store(config: GatewayConfig, stop: asyncio.Event) -> AuditStore | None:
    """The opened store, retrying while it is unavailable; None if `stop` came first."""
    retry = RetryPolicy(initial_s=0.5, max_s=30.0)
    delay = retry.initial_s
    failures = 0
    while not stop.is_set():
        store = store_for(config)
        try:
            await store.open()
            return store
        except StoreError as exc:
            if not exc.retryable:
                raise
            failures += 1
            if failures == 1 or failures % 10 == 0:
                log.warning("risk projections: the audit store is unavailable (%s); retrying in %.1fs; scores and "
                            "decisions keep flowing on the log meanwhile", exc, delay)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        delay = min(delay * retry.multiplier, retry.max_s)
    return None


async def _producer(kafka: KafkaSettings | None, local_log: EmbeddedLog | None, stack: AsyncExitStack) -> Producer:
    producer: Producer
    if kafka is not None:
        producer = KafkaProducer(kafka)
    else:
        assert local_log is not None
        producer = local_log.producer()
    await producer.start()
    stack.push_async_callback(producer.close)
    return producer


def _consumer(kafka: KafkaSettings | None, local_log: EmbeddedLog | None, group: str, topics: list[str],
              on_revoke: Any) -> Consumer:
    if kafka is not None:
        return KafkaConsumer(kafka, group, topics, on_revoke=on_revoke)
    assert local_log is not None
    return local_log.consumer(group, topics)


def _report(task: asyncio.Task[None], what: str) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("%s stopped: %s", what, task.exception(), exc_info=task.exception())


@dataclass(frozen=True, slots=True)
class ReplayedProjection:
    table: str
    metrics: ConsumerMetrics
    complete: bool  # committed everything its topic held when the replay started

    def summary(self) -> dict[str, int | bool]:
        m = self.metrics
        # The writer counts what it skipped as `already_written`; `inserted` counts every row handed to it.
        return {"consumed": m.consumed, "inserted": m.inserted - m.already_written,
                "already_stored": m.already_written, "complete": self.complete}


async def replay_projections(kafka: KafkaSettings | None, local_log: EmbeddedLog | None, store: AuditStore,
                             run_id: str, ends: Ends, timeout_s: float) -> list[ReplayedProjection]:
    """Project `mcp.risk` and `mcp.decisions` into an open `store` again, from their beginning.

    Each topic is read under a new group (`<projection>-replay-<run_id>`), on Kafka or else on
    `local_log`, until it has committed through `ends` (where the topics ended when the replay
    started, `log_ends.end_offsets`), or its task failed, or `timeout_s` passed.
    """
    async with AsyncExitStack() as stack:
        dlq = await _producer(kafka, local_log, stack)
        stop = asyncio.Event()
        projections: list[Projection[Any]] = []
        for spec in PROJECTION_SPECS:
            rebalance = Rebalance()
            consumer = _consumer(kafka, local_log, f"{spec.name}-replay-{run_id}", [spec.topic], rebalance)
            stack.push_async_callback(consumer.close)
            projections.append(Projection(spec, consumer, store, dlq, rebalance=rebalance))
        tasks = [asyncio.create_task(p.run(stop), name=f"replay-{p.spec.name}") for p in projections]
        try:
            done = await asyncio.gather(*(committed_through(p.metrics, of_topic(ends, p.spec.topic), timeout_s, task)
                                          for p, task in zip(projections, tasks, strict=True)))
        finally:
            stop.set()
            failures = await asyncio.gather(*tasks, return_exceptions=True)
        for p, failure in zip(projections, failures, strict=True):
            if isinstance(failure, BaseException):
                log.error("replaying %s stopped: %s", p.spec.table, failure)
        return [ReplayedProjection(p.spec.table, p.metrics, ok and not isinstance(failure, BaseException))
                for p, ok, failure in zip(projections, done, failures, strict=True)]
