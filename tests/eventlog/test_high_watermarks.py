"""`EmbeddedLog.high_watermarks` (the ends /metrics exposes under `mcpgw up`) against the ends on disk,
and the collectors that expose them: one family per registry, whatever registers them."""

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
