"""The write end of a chain: `ReplayGuard` → `Insert` → `Commit`.

`Insert` hands a batch to `Commit` only after the writer returned, so an offset is never committed
for a row that is not in the store. A crash between the two replays the batch; its dedup token
makes the store drop the second write when the batch is cut the same way, and `ReplayGuard` drops
the values already written when it is not.

`Insert(..., overlap=True)` lets the chain read the next batch while a write runs (the store works
on its own thread or server, so the two use different cores): `submit` returns once the write has
started, and the batch is committed at the next `submit`, `poll` or `join` after the write returned.
A write still starts only after the previous batch is committed, so at most one written batch is
uncommitted at any time, as without overlap, and a write's error surfaces at that next call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import TypeVar

from consumers.pipeline.retry import RetryPolicy, retrying
from consumers.pipeline.types import ConsumerMetrics, Forward, Step, ValuesBatch
from eventlog.base import Consumer, TopicPartition

log = logging.getLogger("mcpgw.consumers.pipeline")

T = TypeVar("T")

Writer = Callable[[Sequence[T], str], Awaitable[None]]
Unwritten = Callable[[Sequence[T]], Awaitable[Sequence[T]]]


class ReplayGuard(Forward[ValuesBatch[T]]):
    """Drops values an earlier run wrote but did not commit, in the first batches after an assignment.

    Those values are a prefix of what is read after the committed offset (the earlier run wrote
    batches in order and committed each before writing the next), so the check runs on the first
    batch and goes on only while a whole batch turns out written; and a batch whose first value is
    not in the store holds none that is, so the first value is looked up alone before the batch is
    (a restart after a clean stop costs one small query per partition, not one the size of a batch).
    `unwritten(values)` returns the values the store does not hold yet, in order; retryable failures
    of it are waited out.
    """

    def __init__(
        self,
        unwritten: Unwritten[T],
        next_step: Step[ValuesBatch[T]],
        metrics: ConsumerMetrics,
        *,
        retry: RetryPolicy | None = None,
    ) -> None:
        super().__init__(next_step)
        self._unwritten = unwritten
        self._metrics = metrics
        self._retry = retry or RetryPolicy()
        self._checking: set[TopicPartition] = set()

    async def submit(self, item: ValuesBatch[T]) -> None:
        tp = item.partition
        if item.after_assignment:
            self._checking.add(tp)
        if tp in self._checking and item.values:
            values = item.values
            fresh = await self._check(values[:1], item)
            if not fresh:
                fresh = await self._check(values, item)
            elif len(values) > 1:
                fresh = values
            if len(fresh) < len(values):
                self._metrics.already_written += len(values) - len(fresh)
                log.info(
                    "batch %s: %d of %d values were written by an earlier run; not writing them again",
                    item.dedup_token,
                    len(values) - len(fresh),
                    len(values),
                )
            if fresh:
                self._checking.discard(tp)
            item = replace(item, values=fresh)
        await self.next.submit(item)


    async def _check(self, values: Sequence[T], item: ValuesBatch[T]) -> Sequence[T]:
        return await retrying(
            lambda: self._unwritten(values),
            self._retry,
            f"checking {item.dedup_token} for replayed rows",
            self._metrics,
        )


class Insert(Forward[ValuesBatch[T]]):
    """Writes a batch's values with its dedup token, waiting out retryable errors, then hands it on.

    With `overlap`, the write runs in the background until the next call (see the module docstring).
    """

    def __init__(
        self,
        write: Writer[T],
        next_step: Step[ValuesBatch[T]],
        metrics: ConsumerMetrics,
        *,
        retry: RetryPolicy | None = None,
        overlap: bool = False,
    ) -> None:
        super().__init__(next_step)
        self._write = write
        self._metrics = metrics
        self._retry = retry or RetryPolicy()
        self._overlap = overlap
        self._writing: tuple[asyncio.Task[None], ValuesBatch[T]] | None = None

    async def submit(self, item: ValuesBatch[T]) -> None:
        await self._settle()
        if not item.values:
            await self.next.submit(item)
        elif self._overlap:
            self._writing = (asyncio.ensure_future(self._written(item)), item)
            await asyncio.sleep(0)  # let the write start (hand its work to the store's thread) right away
        else:
            await self._written(item)
            await self.next.submit(item)

    async def _written(self, item: ValuesBatch[T]) -> None:
        values = item.values
        await retrying(
            lambda: self._write(values, item.dedup_token),
            self._retry,
            f"writing batch {item.dedup_token}",
            self._metrics,
        )
        self._metrics.inserted += len(values)
        self._metrics.batches += 1

    async def _settle(self) -> None:
        """Wait for the write in the background, if any, and hand its batch on (raising its error)."""
        if self._writing is None:
            return
        task, item = self._writing
        try:
            await asyncio.shield(task)  # a cancelled caller leaves the write to close()
        except BaseException:
            if task.done():
                self._writing = None
            raise
        self._writing = None
        await self.next.submit(item)

    async def poll(self) -> None:
        if self._writing is not None and self._writing[0].done():
            await self._settle()
        await self.next.poll()

    async def join(self) -> None:
        await self._settle()
        await self.next.join()

    async def close(self) -> None:
        # Uncommitted, so read again; a write that lands anyway is dropped by its token then.
        if self._writing is not None:
            task, _ = self._writing
            self._writing = None
            task.cancel()
            await asyncio.wait({task})
            if not task.cancelled() and task.exception() is not None:
                log.warning("a write abandoned at close failed: %s", task.exception())
        await self.next.close()


class Commit:
    """The last step: commits `last + 1` of each batch it is handed, i.e. after the write returned."""

    def __init__(self, consumer: Consumer, metrics: ConsumerMetrics, *, clock: Callable[[], float] = time.time) -> None:
        self._consumer = consumer
        self._metrics = metrics
        self._clock = clock

    async def submit(self, item: ValuesBatch[T]) -> None:
        # Not retried: a failed commit after a rebalance will not succeed later (Kafka), and the
        # records are replayed either way; the consumer stops and says why.
        await self._consumer.commit({item.partition: item.last + 1})
        self._metrics.commits += 1
        self._metrics.committed[item.partition] = item.last + 1
        self._metrics.last_commit = self._clock()

    async def poll(self) -> None:
        pass

    async def join(self) -> None:
        pass

    async def close(self) -> None:
        pass
