"""Where the log's topics end, and waiting for a consumer to commit through that point.

"Caught up" means the same on both durable logs: the consumer's group has committed, on every
partition of the topics it reads, at least the end offset the partition had when the wait began
(a replay: when it started). The embedded log knows its ends; Kafka is asked (and checked, see
`eventlog.kafka_consumer.end_offsets`).

`ScrapedEnds` is the ends a /metrics scrape exports (`mcpgw consume`'s listener, and `mcpgw up`'s
gateway on Kafka): read when a scrape asks, not in the background, so an unscraped process adds no
broker traffic.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence

from consumers.pipeline import ConsumerMetrics
from eventlog.base import LogUnavailable, TopicPartition
from eventlog.embedded.log import EmbeddedLog
from eventlog.kafka_consumer import end_offsets as kafka_end_offsets
from eventlog.kafka_settings import KafkaSettings

Ends = Mapping[TopicPartition, int]
POLL_S = 0.05
END_OFFSETS_TTL_S = 1.0  # scrapes closer together than this (several scrapers) share one read of the ends
END_OFFSETS_TIMEOUT_S = 3.0  # a scrape does not wait longer on the log; the family is left out instead

log = logging.getLogger("mcpgw.consumers")


async def end_offsets(kafka: KafkaSettings | None, local_log: EmbeddedLog | None,
                      topics: Sequence[str]) -> dict[TopicPartition, int]:
    """Per partition of `topics`, the offset the next record will get, on Kafka or else on `local_log`."""
    if not topics:
        return {}
    if kafka is not None:
        return await kafka_end_offsets(kafka, topics)
    if local_log is None:
        raise RuntimeError("no durable event log to read the end of (event_log: memory has no consumers)")
    ends: dict[TopicPartition, int] = {}
    for topic in dict.fromkeys(topics):
        ends.update(await local_log.end_offsets(topic))
    return ends


class ScrapedEnds:
    """The end offsets of `topics` as of the last `refresh`, which reads them at most every
    END_OFFSETS_TTL_S and waits on the log at most END_OFFSETS_TIMEOUT_S."""

    def __init__(self, kafka: KafkaSettings | None, local_log: EmbeddedLog | None, topics: Sequence[str]) -> None:
        self._kafka = kafka
        self._local_log = local_log
        self._topics = list(topics)
        self._ends: dict[TopicPartition, int] = {}
        self._read_at = -END_OFFSETS_TTL_S
        self._lock = asyncio.Lock()

    def ends(self) -> dict[TopicPartition, int]:
        return self._ends

    async def refresh(self) -> None:
        async with self._lock:  # concurrent scrapes wait for the one read in flight
            now = time.monotonic()
            if now - self._read_at < END_OFFSETS_TTL_S:
                return
            try:
                read = end_offsets(self._kafka, self._local_log, self._topics)
                self._ends = await asyncio.wait_for(read, END_OFFSETS_TIMEOUT_S)
            except (LogUnavailable, TimeoutError) as exc:
                log.debug("metrics: the topics' end offsets are unavailable: %s", exc)
                self._ends = {}  # say nothing rather than something stale
            self._read_at = now


def of_topic(ends: Ends, topic: str) -> dict[TopicPartition, int]:
    return {tp: end for tp, end in ends.items() if tp.topic == topic}


def reached(metrics: ConsumerMetrics, ends: Ends) -> bool:
    """The consumer has committed through `ends` (an empty partition needs no commit)."""
    committed = metrics.committed
    return all(committed.get(tp, 0) >= end for tp, end in ends.items() if end)


async def committed_through(metrics: ConsumerMetrics, ends: Ends, timeout_s: float,
                            task: asyncio.Future[None] | None = None) -> bool:
    """Wait until `metrics` show a commit through `ends`: False after `timeout_s`, or as soon as `task`
    (the consumer's) has ended without getting there."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not reached(metrics, ends):
        left = deadline - loop.time()
        if left <= 0 or (task is not None and task.done()):
            return False
        if task is None:
            await asyncio.sleep(min(POLL_S, left))
        else:
            await asyncio.wait({task}, timeout=min(POLL_S, left))  # wakes early if the task ends
    return True
