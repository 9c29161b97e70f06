"""What /metrics exposes of the embedded log under `mcpgw up`, read from memory: the partitions' ends
(`EmbeddedLog.high_watermarks`, checked against the ends on disk) and the groups' committed offsets
(`EmbeddedLog.committed_offsets`, also those committed before a restart); the collectors exposing
them give one family per registry, whatever registers them twice."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from consumers.pipeline import ConsumerMetrics
from eventlog.base import TopicPartition
from eventlog.embedded import EmbeddedLog
from mcpgw.consumer_metrics import ConsumerMetricsCollector, LogEndOffsets


async def test_high_watermarks_are_the_ends_a_reader_finds_on_disk(tmp_path: Path) -> None:
    async with EmbeddedLog(tmp_path, partitions=3, segment_bytes=300) as log:
        assert log.high_watermarks() == {}  # no topic opened yet
        producer = log.producer()
        for i in range(40):  # several segment rolls per partition
            await producer.append("t", f"k{i % 7}".encode(), b"." * 40)
        await producer.append("other", None, b"one")
        ends = log.high_watermarks()
        assert ends == {**await log.end_offsets("t"), **await log.end_offsets("other")}
        assert sum(end for tp, end in ends.items() if tp.topic == "t") == 40
        assert sorted(end for tp, end in ends.items() if tp.topic == "other") == [0, 0, 1]
        async with EmbeddedLog(tmp_path, read_only=True) as reader:
            assert reader.high_watermarks() == {}  # a read-only log reads its ends from disk instead
            assert await reader.end_offsets("t") == {tp: end for tp, end in ends.items() if tp.topic == "t"}
    assert log.high_watermarks() == {}  # closed


def test_each_family_is_registered_once() -> None:
    ends = {TopicPartition("mcp.events", 0): 12, TopicPartition("mcp.events", 1): 7}
    metrics = ConsumerMetrics()
    metrics.committed[TopicPartition("mcp.events", 1)] = 5
    registry = CollectorRegistry()
    registry.register(ConsumerMetricsCollector(lambda: {"audit": metrics}))
    registry.register(LogEndOffsets(lambda: ends))
    with pytest.raises(ValueError, match="mcpgw_log_end_offset"):
        registry.register(LogEndOffsets(lambda: ends))
    with pytest.raises(ValueError, match="mcpgw_consumer_committed_offset"):
        registry.register(ConsumerMetricsCollector(dict))
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}
    assert {(s.labels["topic"], s.labels["partition"]): s.value for s in families["mcpgw_log_end_offset"].samples} \
        == {("mcp.events", "0"): 12, ("mcp.events", "1"): 7}
    assert [(s.labels, s.value) for s in families["mcpgw_consumer_committed_offset"].samples] \
        == [({"consumer": "audit", "topic": "mcp.events", "partition": "1"}, 5)]


async def test_a_group_s_offsets_committed_before_a_restart_are_exposed_until_it_commits_again(tmp_path: Path) -> None:
    a, b = TopicPartition("t", 0), TopicPartition("t", 1)
    async with EmbeddedLog(tmp_path, partitions=2) as log:
        for i in range(6):
            await log.producer().append("t", f"k{i}".encode(), b"v")
        consumer = log.consumer("g", ["t"])
        await consumer.start()
        await consumer.commit({a: 2, b: 1})
        await consumer.close()
    async with EmbeddedLog(tmp_path, partitions=2) as log:
        metrics = ConsumerMetrics()  # a fresh process: nothing committed by this run yet
        collector = ConsumerMetricsCollector(lambda: {"g": metrics}, log.committed_offsets)

        def exposed() -> dict[tuple[str, str], float]:
            registry = CollectorRegistry()
            registry.register(collector)
            family = next(f for f in text_string_to_metric_families(generate_latest(registry).decode())
                          if f.name == "mcpgw_consumer_committed_offset")
            return {(s.labels["topic"], s.labels["partition"]): s.value for s in family.samples}

        assert log.committed_offsets() == {} and exposed() == {}  # the group's consumer has not started
        consumer = log.consumer("g", ["t"])
        await consumer.start()
        assert log.committed_offsets() == {"g": {a: 2, b: 1}}
        assert exposed() == {("t", "0"): 2, ("t", "1"): 1}
        await consumer.commit({a: 3})
        metrics.committed[a] = 3  # what the pipeline's Commit step records after the commit returned
        assert exposed() == {("t", "0"): 3, ("t", "1"): 1}
        await consumer.close()
        assert log.committed_offsets() == {}
