"""Running the audit consumer: in the gateway process (`mcpgw up`) or on its own (`mcpgw consume audit`).

It reads `mcp.events` from the configured log (the embedded log, or Kafka in a consumer group)
and writes the append-only audit store; `replay` reruns it from the beginning under its own group,
which writes nothing twice (dedup tokens plus the replay guard).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from contextlib import AsyncExitStack

from consumers.audit import AuditConsumer
from consumers.pipeline.runner import Rebalance
from consumers.store.base import AuditStore
from eventlog.base import TOPIC_EVENTS, Consumer, Producer
from eventlog.embedded.log import EmbeddedLog
from eventlog.kafka import KafkaConsumer, KafkaProducer
from mcpgw.config import GatewayConfig
from mcpgw.log_ends import committed_through
from mcpgw.stores import store_for

log = logging.getLogger("mcpgw.consumers")

AUDIT_GROUP = "audit"
CATCH_UP_ON_STOP_S = 10.0


class RunningConsumer:
    def __init__(self, audit: AuditConsumer, consumer: Consumer, stop: asyncio.Event,
                 task: asyncio.Task[None], local_log: EmbeddedLog | None = None, *, store: AuditStore) -> None:
        self.audit = audit
        self.store = store  # open while the consumer runs; the admin API's queries read it too
        self.consumer = consumer
        self.stop = stop
        self.task = task
        self.local_log = local_log

    async def close(self) -> None:
        if self.local_log is not None and not self.task.done():
            # A clean shutdown leaves the store as complete as the log: take the tail first.
            await caught_up(self, self.local_log, CATCH_UP_ON_STOP_S)
        self.stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(self.task), self.audit.settings.shutdown_timeout_s + 5)
        if not self.task.done():
            self.task.cancel()
            with contextlib.suppress(BaseException):
                await self.task


async def start_audit_consumer(config: GatewayConfig, local_log: EmbeddedLog | None, stack: AsyncExitStack,
                               group: str = AUDIT_GROUP) -> RunningConsumer:
    """Open the store and the log's consumer; the consumer runs until the stack closes."""
    store = store_for(config)
    await store.open()
    stack.push_async_callback(store.close)
    consumer: Consumer
    dlq: Producer
    rebalance = Rebalance()
    kafka = config.kafka
    if kafka is not None:
        consumer = KafkaConsumer(kafka, group, [TOPIC_EVENTS], on_revoke=rebalance)
        dlq = KafkaProducer(kafka)
    elif local_log is not None:
        consumer = local_log.consumer(group, [TOPIC_EVENTS])
        dlq = local_log.producer()
    else:
        raise RuntimeError("the audit consumer needs the embedded log or Kafka (event_log: memory has no consumers)")
    await dlq.start()
    stack.push_async_callback(dlq.close)
    stack.push_async_callback(consumer.close)
    audit = AuditConsumer(consumer, store, dlq, rebalance=rebalance)
    stop = asyncio.Event()
    task = asyncio.create_task(audit.run(stop), name=f"audit-consumer-{group}")
    task.add_done_callback(_report)
    running = RunningConsumer(audit, consumer, stop, task, local_log if kafka is None else None, store=store)
    stack.push_async_callback(running.close)
    log.info("audit consumer (group %s) writing to %s", group, type(store).__name__)
    return running


def _report(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the audit consumer stopped: %s", task.exception(), exc_info=task.exception())


async def caught_up(running: RunningConsumer, local_log: EmbeddedLog | None, timeout_s: float) -> bool:
    """Wait until the consumer has committed everything the embedded log held when called (shutdown,
    tests); on Kafka, `log_ends.committed_through` with the ends read beforehand."""
    if local_log is None:
        return False
    ends = await local_log.end_offsets(TOPIC_EVENTS)
    return await committed_through(running.audit.metrics, ends, timeout_s, running.task)
