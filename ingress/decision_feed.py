"""The decision subscriber and publisher: `mcp.decisions` kept folded into this replica's blocklist.

At start the feed reads the topic from its beginning up to the end it had when the feed started
(every replica reads every decision: no consumer group shares them out), folds it, and records
one `decision_applied` event summarising what was loaded and what is in force. Only then does the
gateway serve, so a restarted ingress enforces the same blocks. Afterwards it follows the topic
and records a `decision_applied` event for every decision it applies; then `on_block` (the
gateway's stream cut-off, `ingress.block_cutoff`) gets each caller-scope block in force, so the
blocked caller's open streams end in the same pass. Blocks folded at start need no cut: no agent
is connected yet.

`publish` appends a decision (key = its compaction key, value = its Avro encoding) and waits,
bounded, until this replica's feed has applied it, so the admin API's answer means "in force here".
Without a topic (`event_log: memory`, tests and benchmarks) `publish` applies it at once, still
recorded.

A decision that cannot be decoded is skipped with an error in the log and in the audit trail; it
never stops the feed. A topic that cannot be read is retried; the blocks already folded stay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import orjson

from eventlog.base import TOPIC_DECISIONS, LogError, LogUnavailable, Producer, Record, TopicPartition
from ingress.block_reach import reaches_callers
from ingress.blocklist import Applied, Blocklist, describe, until
from ingress.decision_input import decision_json
from ingress.recorder import Recorder, system_context
from ingress.sink import SinkUnavailable
from ingress.upstreams.base import CallContext
from schemas.codec import CodecError, DecisionCodec
from schemas.decisions import Decision, DecisionAction, DecisionScope
from schemas.events import EventType, Outcome

log = logging.getLogger("mcpgw.decisions")

POLL_RECORDS = 500
LIVE_POLL_S = 1.0  # also how often expired blocks are forgotten
RETRY_S = 1.0


class DecisionPublisher(Protocol):
    async def publish(self, decision: Decision) -> None:
        """Record the decision and put it in force; raises LogUnavailable when it cannot be recorded."""


class DecisionReader(Protocol):
    """Every partition of the decisions topic, read from the beginning, positions kept in memory only."""

    async def start(self) -> None: ...

    async def end_offsets(self) -> dict[TopicPartition, int]:
        """Per partition, the offset the next record will get (what "caught up" means now)."""

    async def position(self, partition: TopicPartition) -> int:
        """The offset the next `poll` reads in `partition`."""

    async def poll(self, max_records: int, timeout_s: float) -> list[Record]: ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class DecisionLog:
    """Where decisions live: a started producer for appends and a reader for this replica."""

    producer: Producer
    reader: DecisionReader
    topic: str = TOPIC_DECISIONS


def now_us() -> int:
    return time.time_ns() // 1000


def _context(decision: Decision) -> CallContext:
    """Events about a decision carry its subject in the column of its scope, so they show up in the
    same audit queries as the traffic they affect."""
    ctx = system_context(tenant=decision.tenant or "")
    scope = decision.scope
    if scope is DecisionScope.PRINCIPAL:
        ctx.principal = decision.subject
    elif scope is DecisionScope.SESSION:
        ctx.session_id = decision.subject
    elif scope is DecisionScope.TENANT:
        ctx.tenant = decision.subject
    elif scope is DecisionScope.TOOL:
        ctx.tool = decision.subject
    else:
        ctx.server = decision.subject
    ctx.method = f"decisions/{decision.action}"
    return ctx


class DecisionFeed:
    def __init__(self, blocklist: Blocklist, recorder: Recorder, decision_log: DecisionLog | None = None, *,
                 clock: Callable[[], int] = now_us, rebuild_timeout_s: float = 30.0,
                 apply_timeout_s: float = 5.0, on_block: Callable[[Decision], Awaitable[None]] | None = None) -> None:
        self.blocklist = blocklist
        self.recorder = recorder
        self.log = decision_log
        self.clock = clock
        self.rebuild_timeout_s = rebuild_timeout_s
        self.apply_timeout_s = apply_timeout_s
        self.on_block = on_block
        self.codec = DecisionCodec()
        self.applied = 0  # decisions folded since start, the rebuild included
        self._waiting: dict[str, asyncio.Future[None]] = {}
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle ----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Fold the whole topic (bounded by `rebuild_timeout_s`), then follow it in the background."""
        if self.log is None:
            await self._record_rebuild(0, 0, [])
            return
        reader = self.log.reader
        try:
            async with asyncio.timeout(self.rebuild_timeout_s):
                await reader.start()
                read, skipped = await self._rebuild(reader)
        except TimeoutError:
            await reader.close()
            raise LogUnavailable(f"could not read {self.log.topic} to its end within {self.rebuild_timeout_s:g}s, "
                                 "so the blocklist is unknown; the gateway does not serve without it") from None
        except LogError:
            await reader.close()
            raise
        await self._record_rebuild(read, skipped, self.blocklist.purge(self.clock()))
        self._task = asyncio.create_task(self._follow(reader), name="decision-feed")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.log is not None:
            with contextlib.suppress(LogError, OSError):
                await self.log.reader.close()
        for waiter in self._waiting.values():
            waiter.cancel()

    def active(self) -> list[Decision]:
        return self.blocklist.active(self.clock())

    # -- publishing ---------------------------------------------------------------------------------

    async def publish(self, decision: Decision) -> None:
        if self.log is None:
            await self._apply(decision)
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting[decision.decision_id] = waiter
        try:
            await self.log.producer.append(self.log.topic, decision.compaction_key().encode(),
                                           self.codec.encode(decision))
            try:
                await asyncio.wait_for(asyncio.shield(waiter), self.apply_timeout_s)
            except TimeoutError:
                # Recorded (durable) but not read back yet: it applies as soon as the feed gets to it.
                log.warning("decision %s is recorded but was not applied here within %.1fs", decision.decision_id,
                            self.apply_timeout_s)
        finally:
            self._waiting.pop(decision.decision_id, None)

    # -- reading ------------------------------------------------------------------------------------

    async def _rebuild(self, reader: DecisionReader) -> tuple[int, int]:
        ends = await reader.end_offsets()
        read = skipped = 0
        caught_up = False
        while True:
            if not caught_up:
                positions = {tp: await reader.position(tp) for tp in ends}
                caught_up = all(positions[tp] >= end for tp, end in ends.items())
            # Once at the end, fold what was fetched along with it and stop: some brokers (Tansu)
            # report the end of a partition as the start of its last batch, plus one.
            records = await reader.poll(POLL_RECORDS, 0.0 if caught_up else 0.2)
            if caught_up and not records:
                return read, skipped
            for record in records:
                decision = await self._decode(record)
                if decision is None:
                    skipped += 1
                    continue
                self._fold(decision)
                read += 1

    async def _follow(self, reader: DecisionReader) -> None:
        while True:
            try:
                records = await reader.poll(POLL_RECORDS, LIVE_POLL_S)
            except LogError as exc:
                log.warning("reading %s failed (retrying in %gs; blocks in force stay): %s",
                            self.log.topic if self.log else "decisions", RETRY_S, exc)
                await asyncio.sleep(RETRY_S)
                continue
            for record in records:
                try:
                    decision = await self._decode(record)
                    if decision is not None:
                        await self._apply(decision)
                except Exception:
                    # The feed must outlive any one record: a replica that stops following enforces stale blocks.
                    log.exception("applying the decision at %s[%d]@%d failed", record.topic, record.partition,
                                  record.offset)
            for expired in self.blocklist.purge(self.clock()):
                log.info("decision %s expired: %s is no longer blocked", expired.decision_id, describe(expired))

    async def _decode(self, record: Record) -> Decision | None:
        try:
            return self.codec.decode(record.value)
        except CodecError as exc:
            message = (f"skipped an undecodable decision at {record.topic}[{record.partition}]@{record.offset}: "
                       f"{exc}")
            log.error("%s", message)
            await self._record(system_context(), message, Outcome.ERROR, record.value)
            return None

    def _fold(self, decision: Decision) -> Applied:
        applied = self.blocklist.apply(decision)
        self.applied += 1
        waiter = self._waiting.pop(decision.decision_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        return applied

    async def _apply(self, decision: Decision) -> None:
        applied = self._fold(decision)
        now = self.clock()
        if decision.action is DecisionAction.BLOCK:
            state = until(decision) if decision.is_active(now) else "already expired"
            what = f"blocked {describe(decision)} ({state})"
        elif applied.lifted:
            what = f"unblocked {describe(decision)} (lifted decision {applied.previous.decision_id})"  # type: ignore[union-attr]
        else:
            what = f"unblocked {describe(decision)} (nothing was blocked under {decision.compaction_key()})"
        detail = (f"decision {decision.decision_id} applied: {what}; source {decision.source}"
                  f"{f' ({decision.actor})' if decision.actor else ''}: {decision.reason or 'no reason given'}")
        log.info("%s", detail)
        await self._record(_context(decision), detail, Outcome.OK, orjson.dumps(decision_json(decision)))
        if self.on_block is not None and reaches_callers(decision, now):
            try:
                await self.on_block(decision)
            except Exception:
                # The block is in force for every next message either way; only the cut failed.
                log.exception("ending the streams decision %s covers failed", decision.decision_id)

    async def _record_rebuild(self, read: int, skipped: int, expired: list[Decision]) -> None:
        active = self.blocklist.active(self.clock())
        where = self.log.topic if self.log is not None else "memory (event_log: memory keeps no decisions)"
        listed = "; ".join(f"{d.decision_id} ({describe(d)}, {until(d)})" for d in active[:20])
        more = f"; and {len(active) - 20} more" if len(active) > 20 else ""
        detail = (f"blocklist rebuilt from {where}: {read} decision(s) read"
                  f"{f', {skipped} undecodable skipped' if skipped else ''}"
                  f"{f', {len(expired)} expired' if expired else ''}; {len(active)} block(s) in force"
                  f"{': ' + listed + more if active else ''}")
        log.info("%s", detail)
        payload = orjson.dumps({"decisions_read": read, "skipped": skipped,
                                "active": [decision_json(d) for d in active]})
        ctx = system_context()
        ctx.method = "decisions/rebuild"
        await self._record(ctx, detail, Outcome.ERROR if skipped else Outcome.OK, payload)

    async def _record(self, ctx: CallContext, detail: str, outcome: Outcome, payload: bytes) -> None:
        try:
            await self.recorder.lifecycle(EventType.DECISION_APPLIED, ctx, detail=detail, server=ctx.server,
                                          outcome=outcome, payload=payload)
        except SinkUnavailable as exc:
            # The decision is in force either way (it is durable in its own topic); say so loudly.
            log.error("decision event not recorded (the audit log is unavailable): %s: %s", detail, exc)
