"""The event seam: every message the gateway sees is handed to an `EventSink` before it acts.

`record()` returning means the events are as durable as the sink promises (in-memory here;
the durable log backends keep the same contract). A sink that cannot take events raises
`SinkUnavailable`, and the caller fails closed.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import deque
from collections.abc import Iterator
from typing import Protocol

from schemas.events import EventType, GatewayEvent


class SinkUnavailable(Exception):
    """The sink could not record; the action the event describes must not happen. Retryable."""

    retryable = True


class EventSink(Protocol):
    async def record(self, *events: GatewayEvent) -> None:
        """Record events in order; return once they are durable per the sink's promise."""

    async def close(self) -> None: ...


class MemoryEventSink:
    """Keeps events in memory, numbered per stream; for tests and benchmarks.

    Bounded: past `capacity` the oldest events are dropped from memory (they were never durable
    anyway). Tests read `events`; `wait_for` lets them await an event without sleeping.
    """

    def __init__(self, capacity: int = 1_000_000, stream_id: str | None = None) -> None:
        self.stream_id = stream_id or uuid.uuid4().hex
        self._events: deque[GatewayEvent] = deque(maxlen=capacity)
        self._seq = 0
        self._changed = asyncio.Event()
        self.closed = False

    async def record(self, *events: GatewayEvent) -> None:
        if self.closed:
            raise SinkUnavailable("event sink is closed")
        for event in events:
            self._seq += 1
            event.stream_id = self.stream_id
            event.seq = self._seq
            self._events.append(event)
        self._changed.set()

    async def close(self) -> None:
        self.closed = True

    @property
    def events(self) -> list[GatewayEvent]:
        return list(self._events)

    def __iter__(self) -> Iterator[GatewayEvent]:
        return iter(list(self._events))

    def of_type(self, event_type: EventType) -> list[GatewayEvent]:
        return [e for e in self._events if e.event_type is event_type]

    def clear(self) -> None:
        self._events.clear()

    async def wait_for(self, predicate: object, timeout: float = 5.0) -> GatewayEvent:
        """Wait until an event satisfying `predicate(event)` has been recorded."""
        assert callable(predicate)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for event in self._events:
                if predicate(event):
                    return event
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError("no matching event was recorded")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                continue
