"""Where the log's topics end, and waiting for a consumer to commit through that point.

"Caught up" means the same on both durable logs: the consumer's group has committed, on every
partition of the topics it reads, at least the end offset the partition had when the wait began
(a replay: when it started). The embedded log knows its ends; Kafka is asked (and checked, see
`eventlog.kafka_consumer.end_offsets`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

from consumers.pipeline import ConsumerMetrics
from eventlog.base import TopicPartition
from eventlog.embedded.log import EmbeddedLog
from eventlog.kafka_consumer import end_offsets as kafka_end_offsets
from eventlog.kafka_settings import KafkaSettings

Ends = Mapping[TopicPartition, int]
POLL_S = 0.05


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
