"""Settings of the embedded log: per-topic layout and retention, and the log-wide limits."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from eventlog.base import TOPIC_DECISIONS

MiB = 1024 * 1024

# Kafka's legal topic characters; a leading dot is refused too because the log keeps its own
# bookkeeping (`.lock`, `.groups/`) in dot-names beside the topic directories.
_TOPIC_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,248}")


@dataclass(frozen=True, slots=True)
class Retention:
    """Bounds per partition; `None` keeps everything (the default: the log is the source of truth).

    Only whole closed segments are deleted, oldest first, so a partition may exceed `max_bytes` by
    up to its active segment, and keep records older than `max_age_s` until their segment closes.
    A segment's age is its file's modification time, i.e. when its last record was written.
    """

    max_bytes: int | None = None
    max_age_s: float | None = None

    def __post_init__(self) -> None:
        if self.max_bytes is not None and self.max_bytes < 0:
            raise ValueError("retention max_bytes must be >= 0")
        if self.max_age_s is not None and self.max_age_s < 0:
            raise ValueError("retention max_age_s must be >= 0")


@dataclass(frozen=True, slots=True)
class TopicConfig:
    """How one topic is laid out; a field left `None` takes the log-wide default.

    `compacted` topics (`mcp.decisions`) are never trimmed by retention, because deleting old
    segments could drop the only record of a key; readers see every record, and
    `EmbeddedLog.latest_by_key` gives the latest value per key (Kafka compaction's observable
    result). The partition count is fixed when the topic is created: the value stored in the
    topic's `topic.json` wins over later configuration, since changing it would move keys to other
    partitions and break per-key order.
    """

    partitions: int | None = None
    segment_bytes: int | None = None
    retention: Retention | None = None
    compacted: bool = False


@dataclass(frozen=True, slots=True)
class ResolvedTopic:
    partitions: int
    segment_bytes: int
    retention: Retention
    compacted: bool


@dataclass(frozen=True, slots=True)
class LogLimits:
    """Log-wide bounds.

    `max_pending_*` bound what waits in memory for the flusher: past them `append` raises
    `LogUnavailable("log full")` instead of growing without bound (the caller spools or fails
    closed). `max_flush_bytes` caps one write+fsync, trading a little throughput for a bounded
    latency of the appends queued behind a large batch.

    `inline_flush_max_s`: a flush's write+fsync runs on the event loop thread itself while the
    previous one took less than this, else on the writer's flush thread until one is fast again.
    Inline, a flush costs no thread hand-off (GIL transfer, wake-ups, a loop pass to hand the
    outcome back), which is most of the CPU of an audited call beyond the fsync; the loop is blocked
    for the fsync, which is what strict-mode callers wait for anyway. A disk that turns slow thus
    blocks the loop once, for one flush, before the thread takes over. `None`: always the thread.
    """

    max_pending_records: int = 100_000
    max_pending_bytes: int = 64 * MiB
    max_record_bytes: int = 8 * MiB
    max_flush_bytes: int = 4 * MiB
    inline_flush_max_s: float | None = 0.004


DEFAULT_TOPICS: dict[str, TopicConfig] = {TOPIC_DECISIONS: TopicConfig(compacted=True)}


@dataclass(frozen=True, slots=True)
class LogConfig:
    partitions: int = 1
    segment_bytes: int = 64 * MiB
    retention: Retention = field(default_factory=Retention)
    topics: dict[str, TopicConfig] = field(default_factory=lambda: dict(DEFAULT_TOPICS))
    limits: LogLimits = field(default_factory=LogLimits)
    # How often a consumer looks at the files for records appended by another process; appends made
    # through this process's log wake consumers at once, without waiting for this interval.
    poll_interval_s: float = 0.05
    # How often the writer applies retention on its own; `None` leaves it to `enforce_retention()`.
    retention_interval_s: float | None = 60.0

    def __post_init__(self) -> None:
        if self.partitions < 1:
            raise ValueError("partitions must be >= 1")
        if self.segment_bytes < 1:
            raise ValueError("segment_bytes must be >= 1")

    def resolve(self, topic: str) -> ResolvedTopic:
        check_topic_name(topic)
        tc = self.topics.get(topic, TopicConfig())
        resolved = ResolvedTopic(
            partitions=tc.partitions if tc.partitions is not None else self.partitions,
            segment_bytes=tc.segment_bytes if tc.segment_bytes is not None else self.segment_bytes,
            retention=tc.retention if tc.retention is not None else self.retention,
            compacted=tc.compacted,
        )
        if resolved.partitions < 1 or resolved.segment_bytes < 1:
            raise ValueError(f"topic {topic!r}: partitions and segment_bytes must be >= 1")
        return resolved


def check_topic_name(topic: str) -> None:
    if not _TOPIC_NAME.fullmatch(topic):
        raise ValueError(f"invalid topic name {topic!r}: use 1-249 of [A-Za-z0-9._-], not starting with '.'")
