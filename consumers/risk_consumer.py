"""The risk consumer: `mcp.events` → the risk engine → `mcp.risk` (scores) and `mcp.decisions` (blocks).

    Rebuild ─▶ Decode(EventCodec) ─▶ Map(engine.observe) ─▶ Batch(per poll) ─▶ Insert(publish) ─▶ Commit
      │ offset below the group's            │ CodecError
      │ committed offset                    ▼
      ▼                                 DeadLetter → mcp.events.dlq
    engine.observe, nothing emitted
      │ a record of mcp.decisions
      ▼
    engine.note_decision, in time order with the events (never committed: read whole at every start)

The engine's state is a projection of the log: at every start the consumer reads `mcp.events`
from the beginning. Records below the group's committed offset were assessed and published by an
earlier run, so `Rebuild` only feeds them to the engine (no score, no decision, no dead letter,
no commit) and the engine ends up where it was; from the committed offset on, assessments are
published. A restart therefore neither forgets a principal's history nor publishes twice.

The consumer also reads `mcp.decisions`, so the engine learns of the blocks and unblocks others
took (an operator, a Grafana alert): an unblock forgives the principal's (or tool's) score, which
would otherwise block it again; a tool's unblock also accepts its latest definition. A decision
is noted just before the first event at or after its time, so a replay, however the two topics
interleave, applies it at the same place.

Latency over throughput: whatever one poll returned is published at the end of that poll (the
`Batch` step has no age bound to wait for), scores and decisions concurrently, and only then are
the offsets committed. Delivery is at-least-once: a crash between the publish and the commit
publishes that poll again; score and decision ids derive from the triggering event, so duplicates
are recognisable (the projections drop them).

The engine sees the whole stream, and a principal's events are spread over partitions (they are
keyed by session), so run one member per deployment. On Kafka a rebalance (a standby member
joining or leaving) makes the member rebuild its engine from the beginning of what it is given.

Runs on either log. Embedded (`mcpgw up`): `RiskConsumer(log.consumer("risk", RISK_TOPICS),
log.producer(), engine_factory)`. Kafka (`mcpgw consume risk`): the revoke callback must reach the
consumer, so create it first and pass `risk.on_revoke` to `KafkaConsumer(..., on_revoke=...)`
through a `RevokeRelay` (see mcpgw/risk_runtime.py). The caller closes the consumer and producer.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from consumers.pipeline import (
    Batch,
    Commit,
    ConsumerMetrics,
    Decode,
    Forward,
    Insert,
    Map,
    Rebalance,
    RetryPolicy,
    Step,
    retrying,
    run_consumer,
)
from consumers.pipeline.settings import ConsumerSettings
from consumers.risk.assessment import Assessment
from eventlog.base import (
    TOPIC_DECISIONS,
    TOPIC_EVENTS,
    TOPIC_RISK,
    Consumer,
    Producer,
    Record,
    TopicPartition,
)
from schemas.codec import CodecError, DecisionCodec, EventCodec, RiskScoreCodec
from schemas.decisions import Decision, DecisionSource
from schemas.events import GatewayEvent

log = logging.getLogger("mcpgw.consumers.risk")

# What the risk consumer subscribes to (with the default topic names).
RISK_TOPICS = (TOPIC_EVENTS, TOPIC_DECISIONS)


class Engine(Protocol):
    """What the consumer needs of the risk engine (consumers/risk/engine.py): pure, deterministic."""

    def observe(self, event: GatewayEvent) -> Assessment: ...

    def note_decision(self, decision: Decision) -> None: ...


@dataclass(frozen=True, slots=True)
class RiskConsumerSettings(ConsumerSettings):
    # Short: the loop is the path from a triggering event to its block. Polls wake at once on new
    # records anyway (embedded: on the flush; Kafka: when a fetch returns), this bounds idle turns.
    poll_timeout_s: float = 0.05
    risk_topic: str = TOPIC_RISK
    decisions_topic: str = TOPIC_DECISIONS


@dataclass(slots=True)
class RiskMetrics:
    rebuilt: int = 0  # records fed to the engine only, because an earlier run published for them
    scores: int = 0  # scores published
    decisions: int = 0  # decisions published
    rebuilds: int = 0  # times the engine was rebuilt from the log (start, Kafka reassignment)
    decisions_noted: int = 0  # records of mcp.decisions read (others' decisions are noted by the engine)


def score_key(tenant: str, principal: str) -> bytes:
    """The `mcp.risk` key: a principal's scores stay in order, in one partition."""
    return f"{tenant}:{principal}".encode()


class Publisher:
    """Appends a batch's scores and decisions to their topics; returns once both are durable."""

    def __init__(self, producer: Producer, settings: RiskConsumerSettings, metrics: RiskMetrics) -> None:
        self._producer = producer
        self._settings = settings
        self._metrics = metrics
        self._scores = RiskScoreCodec()
        self._decisions = DecisionCodec()

    async def publish(self, assessments: Sequence[Assessment], _dedup_token: str) -> None:
        scores = [(score_key(s.tenant, s.principal), self._scores.encode(s)) for a in assessments for s in a.scores]
        decided = [d for a in assessments for d in a.decisions]
        decisions = [(d.compaction_key().encode(), self._decisions.encode(d)) for d in decided]
        s = self._settings
        # Concurrently: a decision must not wait behind a large batch of scores.
        await asyncio.gather(
            self._producer.append_batch(s.decisions_topic, decisions),
            self._producer.append_batch(s.risk_topic, scores),
        )
        self._metrics.scores += len(scores)
        self._metrics.decisions += len(decisions)
        for d in decided:
            log.warning("risk engine decided: %s %s %s (tenant %s): %s", d.action, d.scope, d.subject, d.tenant,
                        d.reason)


class EngineFeed:
    """The engine, with others' decisions held back until the event stream reaches their time."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._pending: list[tuple[int, int, Decision]] = []
        self._order = itertools.count()  # ties keep arrival order; Decisions do not compare

    def decision(self, decision: Decision) -> None:
        if decision.source is not DecisionSource.RISK_ENGINE:  # its own are in its state already
            heapq.heappush(self._pending, (decision.ts, next(self._order), decision))

    def observe(self, event: GatewayEvent) -> Assessment:
        pending = self._pending
        while pending and pending[0][0] <= event.ts_us:
            self.engine.note_decision(heapq.heappop(pending)[2])
        return self.engine.observe(event)


class Rebuild(Forward[Record]):
    """The first step: records the group already published for only feed the engine.

    "Already published" is "below the group's committed offset", read for each partition when its
    first record arrives (before this run commits anything there). Undecodable ones were
    dead-lettered by the run that published; they are skipped here without a second dead letter.
    Records of `decisions_topic` go to the feed, never further (an undecodable one is the
    ingress's to report: it skips them too).
    """

    def __init__(
        self,
        consumer: Consumer,
        decode: Callable[[bytes], GatewayEvent],
        feed: EngineFeed,
        decisions_topic: str,
        next_step: Step[Record],
        metrics: RiskMetrics,
        consumer_metrics: ConsumerMetrics,
        retry: RetryPolicy,
    ) -> None:
        super().__init__(next_step)
        self._consumer = consumer
        self._decode = decode
        self._feed = feed
        self._decisions_topic = decisions_topic
        self._decisions = DecisionCodec()
        self._metrics = metrics
        self._consumer_metrics = consumer_metrics
        self._retry = retry
        self._published: dict[TopicPartition, int] = {}

    async def submit(self, item: Record) -> None:
        if item.topic == self._decisions_topic:
            with contextlib.suppress(CodecError):
                self._feed.decision(self._decisions.decode(item.value))
            self._metrics.decisions_noted += 1
            return
        tp = TopicPartition(item.topic, item.partition)
        mark = self._published.get(tp)
        if mark is None:
            committed = await retrying(
                lambda: self._consumer.committed(tp), self._retry, f"reading the committed offset of {tp}",
                self._consumer_metrics,
            )
            mark = self._published[tp] = committed or 0
        if item.offset >= mark:
            await self.next.submit(item)
            return
        with contextlib.suppress(CodecError):
            self._feed.observe(self._decode(item.value))
        self._metrics.rebuilt += 1


class RiskConsumer:
    """Consumes `mcp.events` into scores and decisions; see the module docstring for wiring."""

    def __init__(
        self,
        consumer: Consumer,
        producer: Producer,
        engine_factory: Callable[[], Engine],
        settings: RiskConsumerSettings | None = None,
        *,
        codec: EventCodec | None = None,
    ) -> None:
        self.settings = settings or RiskConsumerSettings()
        self.metrics = ConsumerMetrics()
        self.risk_metrics = RiskMetrics()
        self._consumer = consumer
        self._producer = producer
        self._engine_factory = engine_factory
        self._codec = codec or EventCodec()
        self._reassigned = asyncio.Event()
        self.rebalance = Rebalance()
        self.engine: Engine = engine_factory()

    def _chain(self, engine: Engine) -> Rebuild:
        s = self.settings
        feed = EngineFeed(engine)
        commit = Commit(self._consumer, self.metrics)
        publish = Insert(Publisher(self._producer, s, self.risk_metrics).publish, commit, self.metrics, retry=s.retry)
        batch: Batch[Assessment] = Batch(publish, max_rows=s.max_records_per_poll, max_wait_s=0.0)
        assess = Map(feed.observe, batch)
        decode = Decode(
            self._codec.decode,
            assess,
            s.dead_letter(self._producer, self.metrics, "risk"),
            s.invalid_ratio(),
            self.metrics,
            invalid=(CodecError,),
        )
        return Rebuild(self._consumer, self._codec.decode, feed, s.decisions_topic, decode, self.risk_metrics,
                       self.metrics, s.retry)

    async def on_revoke(self, partitions: set[TopicPartition]) -> None:
        """Kafka's revoke callback: flush and commit, then rebuild the engine for the next assignment."""
        # Set first, so the poll loop stops at its next turn instead of assessing records of the
        # new assignment with an engine that has not seen their history.
        self._reassigned.set()
        await self.rebalance(partitions)
        # The next assignment is read from its beginning (the engine is rebuilt); a seek now would
        # rewind the partitions being given up. Only Kafka revokes, and its consumer has this.
        rewind = getattr(self._consumer, "rewind_at_next_assignment", None)
        if rewind is not None:
            rewind()

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set (then publish what was read and commit), or an error stops it.

        Raises `TooManyInvalid` when too many recent messages were undecodable, `LogUnavailable`
        (not retryable) when a commit fails.
        """
        s = self.settings
        while not stop.is_set():
            self._reassigned.clear()
            await self._consumer.start()
            await self._consumer.seek_to_beginning()
            if self.risk_metrics.rebuilds:
                self.engine = self._engine_factory()
            self.risk_metrics.rebuilds += 1
            cycle = asyncio.Event()
            relay = asyncio.create_task(_first_of(stop, self._reassigned, cycle))
            try:
                await run_consumer(
                    self._consumer,
                    self._chain(self.engine),
                    cycle,
                    rebalance=self.rebalance,
                    max_records=s.max_records_per_poll,
                    poll_timeout_s=s.poll_timeout_s,
                    shutdown_timeout_s=s.shutdown_timeout_s,
                    poll_retry=s.retry,
                )
            finally:
                relay.cancel()
            if self._reassigned.is_set() and not stop.is_set():
                log.info("risk consumer: partitions reassigned; rebuilding the engine from the log")


async def _first_of(a: asyncio.Event, b: asyncio.Event, out: asyncio.Event) -> None:
    waits = {asyncio.ensure_future(a.wait()), asyncio.ensure_future(b.wait())}
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        out.set()
    finally:
        for w in waits:
            w.cancel()


class RevokeRelay:
    """A revoke callback to hand `KafkaConsumer` before the `RiskConsumer` it must reach exists."""

    def __init__(self) -> None:
        self.target: RiskConsumer | None = None

    async def __call__(self, partitions: set[TopicPartition]) -> None:
        if self.target is not None:
            await self.target.on_revoke(partitions)
