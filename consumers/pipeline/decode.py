"""Bytes to values: `Decode` (with `DeadLetter` and `InvalidRatio` for poison messages), `Map`, `Filter`.

A dead letter is a JSON object on the dead-letter topic, keyed like the original record:
`{"reason", "source", "topic", "partition", "offset", "timestamp_ms", "key", "value"}` with the
original key and value base64-encoded (null key stays null). JSON, not headers, because the log's
`Producer` protocol carries no headers and an operator should be able to read it with any tool.
Dead-lettering is at-least-once: a crash before the batch holding the skipped offset commits
dead-letters the record again on replay; (topic, partition, offset) identifies duplicates.
"""

from __future__ import annotations

import base64
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import orjson

from consumers.pipeline.retry import RetryPolicy, retrying
from consumers.pipeline.types import ConsumerMetrics, Forward, Item, Message, PipelineError, Skipped, Step
from eventlog.base import TOPIC_DEAD_LETTER, Producer, Record

log = logging.getLogger("mcpgw.consumers.pipeline")

T = TypeVar("T")
U = TypeVar("U")


class TooManyInvalid(PipelineError):
    """Too many recent messages were undecodable: stop rather than dead-letter a whole stream."""


class InvalidRatio:
    """The share of invalid messages among the last `window`, checked once `min_messages` were seen.

    A sliding window, not a lifetime ratio: a producer switched to a wrong codec after a billion
    good messages must still stop the consumer within `window` messages.
    """

    def __init__(self, max_ratio: float = 0.5, min_messages: int = 100, window: int = 1000) -> None:
        if not 0 <= max_ratio <= 1 or not 1 <= min_messages <= window:
            raise ValueError("need 0 <= max_ratio <= 1 and 1 <= min_messages <= window")
        self.max_ratio = max_ratio
        self.min_messages = min_messages
        self._window = window
        self._seen = 0
        # Numbers of the invalid messages still in the window: a valid message only counts, so the
        # common case costs one addition.
        self._invalid_at: deque[int] = deque()

    @property
    def invalid(self) -> int:
        self._expire()
        return len(self._invalid_at)

    def _expire(self) -> None:
        invalid_at, oldest = self._invalid_at, self._seen - self._window
        while invalid_at and invalid_at[0] < oldest:
            invalid_at.popleft()

    def observe(self, valid: bool) -> None:
        """Count one message; raise `TooManyInvalid` when the window is over the limit."""
        self._seen += 1
        if valid:
            return
        self._invalid_at.append(self._seen - 1)
        self._expire()
        invalid, seen = len(self._invalid_at), min(self._seen, self._window)
        if seen >= self.min_messages and invalid > self.max_ratio * seen:
            raise TooManyInvalid(
                f"{invalid} of the last {seen} messages could not be decoded "
                f"(limit {self.max_ratio:.0%}): stopping instead of dead-lettering everything; "
                "check the producers' wire format and schemas, or upgrade this consumer"
            )


@dataclass(frozen=True, slots=True)
class DeadLetterEnvelope:
    reason: str
    source: str
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes


def parse_dead_letter(data: bytes) -> DeadLetterEnvelope:
    d = orjson.loads(data)
    return DeadLetterEnvelope(
        reason=d["reason"],
        source=d["source"],
        topic=d["topic"],
        partition=d["partition"],
        offset=d["offset"],
        timestamp_ms=d["timestamp_ms"],
        key=None if d["key"] is None else base64.b64decode(d["key"]),
        value=base64.b64decode(d["value"]),
    )


class DeadLetter:
    """Appends poison records, with the reason, to the dead-letter topic; returns once durable."""

    def __init__(
        self,
        producer: Producer,
        metrics: ConsumerMetrics,
        *,
        source: str,
        topic: str = TOPIC_DEAD_LETTER,
        retry: RetryPolicy | None = None,
    ) -> None:
        self._producer = producer
        self._metrics = metrics
        self._source = source
        self._topic = topic
        self._retry = retry or RetryPolicy()

    async def send(self, record: Record, reason: str) -> None:
        envelope = orjson.dumps(
            {
                "reason": reason,
                "source": self._source,
                "topic": record.topic,
                "partition": record.partition,
                "offset": record.offset,
                "timestamp_ms": record.timestamp_ms,
                "key": None if record.key is None else base64.b64encode(record.key).decode(),
                "value": base64.b64encode(record.value).decode(),
            }
        )
        where = f"{record.topic}:{record.partition}@{record.offset}"
        await retrying(
            lambda: self._producer.append(self._topic, record.key, envelope),
            self._retry,
            f"dead-lettering {where}",
            self._metrics,
        )
        self._metrics.dead_lettered += 1
        log.warning("dead-lettered %s to %s: %s", where, self._topic, reason)


class Decode(Generic[T]):
    """The first step: record bytes → value; `invalid` errors send the record to `dead_letter`.

    Other exceptions propagate and stop the consumer: a bug in the decoder must not look like a
    stream of poison messages.
    """

    def __init__(
        self,
        decode: Callable[[bytes], T],
        next_step: Step[Item[T]],
        dead_letter: DeadLetter,
        guard: InvalidRatio,
        metrics: ConsumerMetrics,
        *,
        invalid: tuple[type[Exception], ...] = (ValueError,),
    ) -> None:
        self.next = next_step
        self._decode = decode
        self._dead_letter = dead_letter
        self._guard = guard
        self._metrics = metrics
        self._invalid = invalid

    async def submit(self, item: Record) -> None:
        self._metrics.consumed += 1
        try:
            value = self._decode(item.value)
        except self._invalid as exc:
            # Checked before dead-lettering: the message that trips the limit stays uncommitted
            # and is read again once the cause is fixed.
            self._guard.observe(False)
            await self._dead_letter.send(item, f"{type(exc).__name__}: {exc}")
            await self.next.submit(Skipped(item))
            return
        self._guard.observe(True)
        await self.next.submit(Message(item, value))

    async def poll(self) -> None:
        await self.next.poll()

    async def join(self) -> None:
        await self.next.join()

    async def close(self) -> None:
        await self.next.close()


class Map(Forward[Item[U]], Generic[T, U]):
    def __init__(self, function: Callable[[T], U], next_step: Step[Item[U]]) -> None:
        super().__init__(next_step)
        self._function = function

    async def submit(self, item: Item[T]) -> None:
        if isinstance(item, Skipped):
            await self.next.submit(item)
        else:
            await self.next.submit(Message(item.record, self._function(item.value)))


class Filter(Forward[Item[T]]):
    """Values failing `predicate` go on as `Skipped`, so their offsets are still committed."""

    def __init__(self, predicate: Callable[[T], bool], next_step: Step[Item[T]]) -> None:
        super().__init__(next_step)
        self._predicate = predicate

    async def submit(self, item: Item[T]) -> None:
        if isinstance(item, Message) and not self._predicate(item.value):
            await self.next.submit(Skipped(item.record))
        else:
            await self.next.submit(item)
