"""Consumer lag as Prometheus families: the consumers' `ConsumerMetrics`, and where the log ends.

On the gateway's /metrics under `mcpgw up` (the consumers in the process, `in_process`; the embedded
log's ends from its high watermarks, `EmbeddedLog.high_watermarks`) and on a consumer's own
listener (`mcpgw.consumer_http`), under the same names and labels, so a group's lag is
`mcpgw_log_end_offset - on(topic, partition) group_right mcpgw_consumer_committed_offset` on either.

Read at scrape time from callables, so consumers that start later (the projections wait for the
store) and topics opened later show up once they exist. Both collectors `describe` their families:
registering one of them twice in a registry fails instead of exposing a family twice per scrape.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from consumers.pipeline import ConsumerMetrics
from eventlog.base import TopicPartition
from mcpgw.audit_runtime import AUDIT_GROUP, RunningConsumer
from mcpgw.risk_runtime import RISK_GROUP, RunningRisk

COUNTERS = (
    ("consumed", "Records submitted to the consumer's chain."),
    ("dead_lettered", "Records sent to the dead-letter topic."),
    ("inserted", "Values written (rows of the consumer's main table, or records published)."),
    ("already_written", "Values a replay found written by an earlier run, not written again."),
    ("batches", "Write calls that returned."),
    ("retries", "Retryable failures waited out (store or dead-letter topic)."),
    ("commits", "Offset commits."),
)


Committed = Mapping[str, Mapping[TopicPartition, int]]  # by group


class ConsumerMetricsCollector(Collector):
    """`consumers()` names each running consumer (its group) and its metrics.

    `stored()`, where the log keeps committed offsets in memory (the embedded log), adds those a
    group committed before this process started and has not committed since (a consumer stuck
    since a restart still shows its offset, so its lag), under the offsets `ConsumerMetrics` holds.
    """

    def __init__(self, consumers: Callable[[], Mapping[str, ConsumerMetrics]],
                 stored: Callable[[], Committed] | None = None) -> None:
        self.consumers = consumers
        self.stored = stored

    def describe(self) -> Iterator[Metric]:
        return self._families({}, {})

    def collect(self) -> Iterator[Metric]:
        return self._families(dict(self.consumers()), self.stored() if self.stored is not None else {})

    def _families(self, running: Mapping[str, ConsumerMetrics], stored: Committed) -> Iterator[Metric]:
        for field, help_text in COUNTERS:
            family = CounterMetricFamily(f"mcpgw_consumer_{field}", help_text, labels=["consumer"])
            for name, metrics in running.items():
                family.add_metric([name], getattr(metrics, field))
            yield family
        paused = GaugeMetricFamily("mcpgw_consumer_paused", "1 while a step waits out a retryable failure "
                                   "(nothing is being read).", labels=["consumer"])
        last_commit = GaugeMetricFamily("mcpgw_consumer_last_commit_timestamp_seconds",
                                        "Wall-clock time of the last commit.", labels=["consumer"])
        committed = GaugeMetricFamily("mcpgw_consumer_committed_offset", "Next offset to read, per partition.",
                                      labels=["consumer", "topic", "partition"])
        for name, metrics in running.items():
            paused.add_metric([name], 1.0 if metrics.paused else 0.0)
            if metrics.last_commit is not None:
                last_commit.add_metric([name], metrics.last_commit)
            offsets = {**stored.get(name, {}), **metrics.committed}
            for tp, offset in sorted(offsets.items(), key=lambda item: (item[0].topic, item[0].partition)):
                committed.add_metric([name, tp.topic, str(tp.partition)], offset)
        yield paused
        yield last_commit
        yield committed


def in_process(audit: RunningConsumer | None, risk: RunningRisk | None) -> dict[str, ConsumerMetrics]:
    """The metrics of the consumers `mcpgw up` runs, by consumer group."""
    found: dict[str, ConsumerMetrics] = {}
    if audit is not None:
        found[AUDIT_GROUP] = audit.audit.metrics
    if risk is not None:
        found[RISK_GROUP] = risk.risk.metrics
        found.update((projection.spec.name, projection.metrics) for projection in risk.projections)
    return found


class LogEndOffsets(Collector):
    """`mcpgw_log_end_offset{topic, partition}`: `ends()` per partition, the offset its next record will get."""

    def __init__(self, ends: Callable[[], Mapping[TopicPartition, int]]) -> None:
        self.ends = ends

    def describe(self) -> Iterator[Metric]:
        yield _log_end_family({})

    def collect(self) -> Iterator[Metric]:
        yield _log_end_family(self.ends())


def _log_end_family(ends: Mapping[TopicPartition, int]) -> GaugeMetricFamily:
    family = GaugeMetricFamily("mcpgw_log_end_offset", "Offset the next record of the partition will get, as of "
                               "the scrape (lag: this minus mcpgw_consumer_committed_offset).",
                               labels=["topic", "partition"])
    for tp, end in sorted(ends.items(), key=lambda item: (item[0].topic, item[0].partition)):
        family.add_metric([tp.topic, str(tp.partition)], end)
    return family
