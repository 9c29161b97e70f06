"""The backend-neutral handle the contract tests drive (`LogBackend`), its embedded implementation,
and small helpers shared by the event-log tests."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any, Protocol

from eventlog.base import Consumer, Producer, Record, TopicPartition
from eventlog.embedded import EmbeddedLog, Retention, TopicConfig


class LogBackend(Protocol):
    """What a contract test needs from a backend; see tests/eventlog/conftest.py."""

    kind: str

    async def new_topic(self, partitions: int = 1) -> str: ...

    def producer(self) -> Producer: ...

    def consumer(self, group_id: str, topics: list[str]) -> Consumer: ...

    async def restart(self) -> None: ...

    async def drop_old_records(self, topic: str) -> None: ...


# Small segments so retention has whole closed segments to delete; the size bound is only applied
# when a test asks for it (`drop_old_records`), never behind a test's back.
SEGMENT_BYTES = 4096
RETAINED_BYTES = 4 * SEGMENT_BYTES

_topic_numbers = itertools.count()


class EmbeddedBackend:
    kind = "embedded"

    def __init__(self, root: Path, **log_options: Any) -> None:
        self.root = root
        self._options: dict[str, Any] = {
            "segment_bytes": SEGMENT_BYTES,
            "retention": Retention(max_bytes=RETAINED_BYTES),
            "retention_interval_s": None,
            **log_options,
        }
        self._topic_configs: dict[str, TopicConfig] = {}
        self._handles: list[Producer | Consumer] = []
        self.log = self._new_log()

    def _new_log(self) -> EmbeddedLog:
        return EmbeddedLog(self.root, topics=self._topic_configs, **self._options)

    async def start(self) -> None:
        await self.log.open()

    async def stop(self) -> None:
        for handle in self._handles:
            await handle.close()
        self._handles.clear()
        await self.log.close()

    async def new_topic(self, partitions: int = 1) -> str:
        topic = f"t{next(_topic_numbers)}"
        self._topic_configs[topic] = TopicConfig(partitions=partitions)
        await self.log.create_topic(topic, self._topic_configs[topic])
        return topic

    def producer(self) -> Producer:
        producer = self.log.producer()
        self._handles.append(producer)
        return producer

    def consumer(self, group_id: str, topics: list[str]) -> Consumer:
        consumer = self.log.consumer(group_id, topics)
        self._handles.append(consumer)
        return consumer

    async def restart(self) -> None:
        await self.stop()
        self.log = self._new_log()
        await self.log.open()

    async def drop_old_records(self, topic: str) -> None:
        self.log.enforce_retention()


async def read_n(consumer: Consumer, n: int, timeout_s: float = 10.0, batch: int = 100) -> list[Record]:
    """Poll until `n` records came (fails on timeout); backends may return fewer per poll."""
    out: list[Record] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while len(out) < n:
        remaining = deadline - loop.time()
        assert remaining > 0, f"only {len(out)} of {n} records arrived in {timeout_s}s"
        out.extend(await consumer.poll(min(batch, n - len(out)), min(remaining, 1.0)))
    return out


async def read_until_quiet(consumer: Consumer, quiet_s: float = 0.5) -> list[Record]:
    """Everything the consumer gets until a poll of `quiet_s` returns nothing."""
    out: list[Record] = []
    while batch := await consumer.poll(500, quiet_s):
        out.extend(batch)
    return out


def next_offsets(records: list[Record]) -> dict[TopicPartition, int]:
    """The commit that marks `records` processed: per partition, the offset after the last one."""
    offsets: dict[TopicPartition, int] = {}
    for r in records:
        tp = TopicPartition(r.topic, r.partition)
        offsets[tp] = max(offsets.get(tp, 0), r.offset + 1)
    return offsets
