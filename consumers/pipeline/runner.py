"""`run_consumer`: the poll loop that feeds a chain, and `Rebalance`, the hook Kafka revokes through."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from consumers.pipeline.decode import TooManyInvalid
from consumers.pipeline.retry import RetryPolicy, is_retryable
from consumers.pipeline.types import Step
from eventlog.base import Consumer, Record, TopicPartition

log = logging.getLogger("mcpgw.consumers.pipeline")


class Rebalance:
    """The lock around "submit records + commit", shared by the poll loop and partition revocation.

    Pass one instance both to `KafkaConsumer(..., on_revoke=rebalance)` (it is the callback) and
    to `run_consumer(..., rebalance=rebalance)`. Kafka runs the callback on its own task, while the
    loop may be anywhere: the lock makes the revoke wait for the records in hand to be processed,
    then it flushes and commits everything before the partitions go. Records the loop polled
    meanwhile are dropped (`generation` changed): the next owner, possibly this member again, reads
    them from the offsets just committed (aiokafka resets positions to the committed offsets on
    every assignment; a consumer that did not must not be given this hook). A revoke that could
    not flush (store down past `timeout_s`, a write refused) leaves the chain's state unknown, so
    the loop stops with that error at its next turn; the records are replayed from the committed
    offsets. The embedded log never revokes.
    """

    def __init__(self, timeout_s: float = 60.0) -> None:
        self.lock = asyncio.Lock()
        self.generation = 0
        self.strategy: Step[Record] | None = None
        self.timeout_s = timeout_s
        self.failure: BaseException | None = None

    async def __call__(self, partitions: set[TopicPartition]) -> None:
        try:
            async with asyncio.timeout(self.timeout_s), self.lock:
                self.generation += 1
                if self.strategy is not None:
                    await self.strategy.join()
        except Exception as exc:
            self.failure = exc
            if isinstance(exc, TimeoutError):
                # The group cannot wait for a store that is down: the partitions go uncommitted and
                # their next owner replays them (ReplayGuard and the tokens keep the rows single).
                log.error(
                    "revoking %s: could not flush and commit within %gs; the next owner replays them",
                    sorted((p.topic, p.partition) for p in partitions),
                    self.timeout_s,
                )
            raise


async def run_consumer(
    consumer: Consumer,
    strategy: Step[Record],
    stop: asyncio.Event,
    *,
    rebalance: Rebalance | None = None,
    max_records: int = 500,
    poll_timeout_s: float = 0.1,
    shutdown_timeout_s: float = 30.0,
    poll_retry: RetryPolicy | None = None,
) -> None:
    """Feed `consumer`'s records to `strategy` until `stop` is set, then flush and commit, and close it.

    Starts the consumer (idempotent) but does not close it: its owner does. The flush at stop may
    take up to `shutdown_timeout_s` (an insert waiting for the store); past that it is cancelled and
    what it held is read again at the next start. `TooManyInvalid` also flushes what was read before
    the offending message, then propagates; any other error propagates without a flush. Keep
    `poll_timeout_s` well under the batch step's `max_wait_s`: the age bound is checked between polls.

    On Kafka, a wait longer than the group's `max_poll_interval_ms` (a store outage) makes aiokafka
    leave the group; the revoke then times out (see `Rebalance`) and this consumer stops with it.
    """
    rebalance = rebalance or Rebalance()
    retry = poll_retry or RetryPolicy()
    await consumer.start()
    rebalance.strategy = strategy
    feeding = asyncio.create_task(_feed(consumer, strategy, stop, rebalance, max_records, poll_timeout_s, retry))
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({feeding, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not feeding.done():
            try:
                await asyncio.wait_for(asyncio.shield(feeding), shutdown_timeout_s)
            except TimeoutError:
                log.error(
                    "consumer stop: flush not done within %gs (store unavailable?); abandoned, "
                    "its records are read again at the next start",
                    shutdown_timeout_s,
                )
                return
        await feeding  # raises what the loop raised
    finally:
        stopping.cancel()
        if not feeding.done():
            feeding.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await feeding
        rebalance.strategy = None
        await strategy.close()


async def _feed(
    consumer: Consumer,
    strategy: Step[Record],
    stop: asyncio.Event,
    rebalance: Rebalance,
    max_records: int,
    poll_timeout_s: float,
    retry: RetryPolicy,
) -> None:
    delay = retry.initial_s
    while not stop.is_set():
        generation = rebalance.generation
        try:
            records = await consumer.poll(max_records, poll_timeout_s)
        except Exception as exc:
            if not is_retryable(exc):
                raise
            log.warning("consumer poll failed (retryable; next try in %.2fs): %s", delay, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            delay = min(delay * retry.multiplier, retry.max_s)
            continue
        delay = retry.initial_s
        async with rebalance.lock:
            if rebalance.failure is not None:
                raise rebalance.failure
            if rebalance.generation != generation:
                continue
            try:
                for record in records:
                    await strategy.submit(record)
            except TooManyInvalid:
                await strategy.join()
                raise
            await strategy.poll()
        # A poll that finds records waiting returns without suspending, so without this a write
        # running in the background (Insert(overlap=True)) would not get to its next step until the
        # chain waits for it.
        await asyncio.sleep(0)
    async with rebalance.lock:
        await strategy.join()
