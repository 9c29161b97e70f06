"""The in-process consumers' `ConsumerMetrics` as Prometheus families, for the gateway's /metrics (`mcpgw up`).

Read at scrape time from a callable, so consumers that start later (the projections wait for the
store) show up once they exist.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from consumers.pipeline import ConsumerMetrics
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


class ConsumerMetricsCollector(Collector):
    """`consumers()` names each running consumer (its group) and its metrics."""

    def __init__(self, consumers: Callable[[], Mapping[str, ConsumerMetrics]]) -> None:
        self.consumers = consumers

    def collect(self) -> Iterator[Metric]:
        running = dict(self.consumers())
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
            for tp, offset in list(metrics.committed.items()):
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
