"""The event-log interface both backends implement, and the values that cross it.

Producers append keyed records to topics; `append` returns once the record is durable (Kafka:
acknowledged with acks=all; embedded: fsync'd, with concurrent appends sharing one flush). Records
with the same key keep their order. Consumers in a group read from committed positions and commit
only what they have fully processed, so a crash replays, never skips.

Errors (one small tree):
    LogError                 base
    ├── LogUnavailable       the log cannot take or give records now (broker down, disk full);
    │                        retryable
    └── LogCorrupt           stored bytes failed their checksum (reported, never returned as data)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

TOPIC_EVENTS = "mcp.events"
TOPIC_RISK = "mcp.risk"
TOPIC_DECISIONS = "mcp.decisions"  # compacted: key = scope:subject
TOPIC_DEAD_LETTER = "mcp.events.dlq"


class LogError(Exception):
    retryable = False


class LogUnavailable(LogError):
    retryable = True


class LogCorrupt(LogError):
    pass


@dataclass(frozen=True, slots=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    timestamp_ms: int


@dataclass(frozen=True, slots=True)
class TopicPartition:
    topic: str
    partition: int


class Producer(Protocol):
    async def start(self) -> None: ...

    async def append(self, topic: str, key: bytes | None, value: bytes) -> None:
        """Append one record; returns when it is durable. Raises LogUnavailable."""

    async def append_batch(self, topic: str, records: Sequence[tuple[bytes | None, bytes]]) -> None:
        """Append records in order; returns when all are durable (one flush for the batch)."""

    async def close(self) -> None: ...


@runtime_checkable
class SubmittingProducer(Protocol):
    """A producer that can take records without a task of its own (the embedded log's; Kafka's on
    its direct path; the spool's while its primary answers).

    `submit_batch` takes the records now and calls `settle` once, on the loop, with None when they
    are durable or the error when they never will be; False means it took nothing (use
    `append_batch`). Recording a hop then costs one wake-up of the caller, not a task's steps.
    """

    def submit_batch(self, topic: str, records: Sequence[tuple[bytes | None, bytes]],
                     settle: Callable[[LogError | None], None]) -> bool: ...


def settle_future(future: asyncio.Future[Any], answer: Any) -> None:
    """Resolve `future` with `answer` (raised when it is an exception), unless it is already done
    (its awaiter was cancelled): as `functools.partial(settle_future, future)`, a `settle` callback
    for a caller that awaits the outcome."""
    if future.done():
        return
    if isinstance(answer, BaseException):
        future.set_exception(answer)
    else:
        future.set_result(answer)


class Consumer(Protocol):
    """A member of a consumer group reading one or more topics."""

    async def start(self) -> None: ...

    async def poll(self, max_records: int, timeout_s: float) -> list[Record]:
        """Up to `max_records` records after the last position read; [] when none came in time."""

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Persist, per partition, the offset of the next record to read."""

    async def committed(self, partition: TopicPartition) -> int | None: ...

    async def seek_to_beginning(self) -> None:
        """Read everything again (replay), ignoring committed positions for this member."""

    def assignment(self) -> set[TopicPartition]: ...

    async def close(self) -> None: ...
