"""`Batch`: collects values per partition into `ValuesBatch`es bounded by size and age."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from consumers.pipeline.types import Item, Message, Step, ValuesBatch
from eventlog.base import TopicPartition

T = TypeVar("T")


@dataclass(slots=True)
class _Open(Generic[T]):
    partition: TopicPartition
    first: int
    started: float
    last: int = -1
    records: int = 0
    values: list[T] = field(default_factory=list)


class Batch(Generic[T]):
    """One open batch per partition, handed on at `max_rows` records or `max_wait_s` after its first.

    Size counts records, skipped ones included, so a size-cut batch covers the same offsets
    however the records arrived: a replay from the same committed offset cuts it identically and
    its dedup token matches. Age-cut batches depend on timing; `ReplayGuard` covers those.
    """

    def __init__(
        self,
        next_step: Step[ValuesBatch[T]],
        *,
        max_rows: int = 1000,
        max_wait_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_rows < 1 or max_wait_s < 0:
            raise ValueError("need max_rows >= 1 and max_wait_s >= 0")
        self.next = next_step
        self.max_rows = max_rows
        self.max_wait_s = max_wait_s
        self._clock = clock
        # Keyed by (topic, partition) as the records carry them: building a TopicPartition per record
        # would cost more than the rest of this step.
        self._open: dict[tuple[str, int], _Open[T]] = {}
        self._handed_on: set[tuple[str, int]] = set()

    @property
    def held(self) -> int:
        """Records held in open batches (not yet written, not committed)."""
        return sum(b.records for b in self._open.values())

    async def submit(self, item: Item[T]) -> None:
        record = item.record
        key = (record.topic, record.partition)
        batch = self._open.get(key)
        if batch is None:
            batch = self._open[key] = _Open(TopicPartition(*key), record.offset, self._clock())
        batch.last = record.offset
        batch.records += 1
        if isinstance(item, Message):
            batch.values.append(item.value)
        if batch.records >= self.max_rows:
            await self._hand_on(key)

    async def poll(self) -> None:
        now = self._clock()
        for key in [key for key, b in self._open.items() if now - b.started >= self.max_wait_s]:
            await self._hand_on(key)
        await self.next.poll()

    async def join(self) -> None:
        for key in list(self._open):
            await self._hand_on(key)
        await self.next.join()
        # join runs at stop and at revoke: whatever this member reads next comes from a new assignment.
        self._handed_on.clear()

    async def close(self) -> None:
        self._open.clear()
        await self.next.close()

    async def _hand_on(self, key: tuple[str, int]) -> None:
        batch = self._open.pop(key)
        after_assignment = key not in self._handed_on
        self._handed_on.add(key)
        await self.next.submit(ValuesBatch(batch.partition, batch.first, batch.last, batch.values, after_assignment))
