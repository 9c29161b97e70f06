"""The values that flow between steps, the step protocol, and the counters the steps keep."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeAlias, TypeVar

from eventlog.base import Record, TopicPartition

T = TypeVar("T")
U = TypeVar("U")
T_contra = TypeVar("T_contra", contravariant=True)


class PipelineError(Exception):
    retryable = False


@dataclass(frozen=True, slots=True)
class Message(Generic[T]):
    """A value and the log record it came from (for its offset, and for dead letters)."""

    record: Record
    value: T

    @property
    def partition(self) -> TopicPartition:
        return TopicPartition(self.record.topic, self.record.partition)


@dataclass(frozen=True, slots=True)
class Skipped:
    """A record that yields no value (dead-lettered or filtered out); its offset still gets committed."""

    record: Record

    @property
    def partition(self) -> TopicPartition:
        return TopicPartition(self.record.topic, self.record.partition)


Item: TypeAlias = Message[T] | Skipped


@dataclass(frozen=True, slots=True)
class ValuesBatch(Generic[T]):
    """The values read from one partition's offsets `first`..`last` (skipped records included in the range).

    `after_assignment` marks the partition's first batch since this member got it (started, or
    reassigned after a revoke): only such a batch can overlap rows an earlier run wrote without
    committing, because every later batch starts where this run's own last commit ended.
    """

    partition: TopicPartition
    first: int
    last: int
    values: Sequence[T]
    after_assignment: bool = False

    @property
    def dedup_token(self) -> str:
        return f"{self.partition.topic}:{self.partition.partition}:{self.first}-{self.last}"


class Step(Protocol[T_contra]):
    """One link of a chain, after arroyo's ProcessingStrategy, async.

    `submit` returns when the item has gone as far down the chain as it can now (a batch step
    keeps it; an insert step returns after the write and the commit after it). `poll` lets
    time-bound steps act without new input; `join` flushes everything held and commits it;
    `close` drops what is held (uncommitted, so it is read again) and releases resources.
    """

    async def submit(self, item: T_contra) -> None: ...

    async def poll(self) -> None: ...

    async def join(self) -> None: ...

    async def close(self) -> None: ...


class Forward(Generic[U]):
    """Base of steps that hold nothing across calls: poll, join and close pass straight down."""

    def __init__(self, next_step: Step[U]) -> None:
        self.next = next_step

    async def poll(self) -> None:
        await self.next.poll()

    async def join(self) -> None:
        await self.next.join()

    async def close(self) -> None:
        await self.next.close()


@dataclass(slots=True)
class ConsumerMetrics:
    """Counters for /metrics; monotonic except the gauges `paused` and `committed`."""

    consumed: int = 0  # records submitted to the chain
    dead_lettered: int = 0
    inserted: int = 0  # values written (rows of the consumer's main table)
    already_written: int = 0  # values a replay found written by an earlier run, not written again
    batches: int = 0  # write calls that returned
    retries: int = 0  # retryable failures waited out (store or dead-letter topic)
    commits: int = 0
    paused: bool = False  # a step is waiting out a retryable failure: nothing is being polled
    last_commit: float | None = None  # wall-clock time (s) of the last commit
    committed: dict[TopicPartition, int] = field(default_factory=dict)  # next offset to read, per partition
