"""The embedded event log: append-only segment files under a directory, the default of `mcpgw up`.

Implements `eventlog.base.Producer` / `Consumer` for one machine:

- `append` returns after fsync; concurrent appends share one write+fsync (group commit), and a
  failed write or fsync fails every waiter of that flush with `LogUnavailable` (see `writer`).
- Records are framed with length, CRC-32, offset and timestamp (see `segment`); on open the tail of
  each partition's last segment is validated and a torn tail truncated (logged with its size);
  damage anywhere else raises `LogCorrupt`, on open or when read, and is never skipped.
- One writing process per directory (flock on `<root>/.lock`; a second gets `LogLocked`); other
  processes may open it `read_only=True` to consume.
- Consumer groups with offsets in small atomically replaced files; one member per group, which is
  assigned every partition (multi-member groups are a Kafka feature).
- Retention by size and age per topic deletes whole closed segments; consumers positioned before the
  earliest retained offset resume there (logged). Compacted topics are kept whole and read with
  `EmbeddedLog.latest_by_key`.

Errors: those of `eventlog.base`, plus `LogLocked(LogUnavailable)` for a directory another writer
holds, and plain `LogError` (not retryable) for misuse: appending to a read-only log, a record over
`max_record_bytes`.

May import `eventlog.base` and the standard library; must not import `ingress` or `consumers`.
"""

from eventlog.embedded.config import LogLimits, Retention, TopicConfig
from eventlog.embedded.consumer import EmbeddedConsumer, EmbeddedProducer
from eventlog.embedded.log import EmbeddedLog, LogLocked
from eventlog.embedded.writer import LogStats

__all__ = [
    "EmbeddedConsumer",
    "EmbeddedLog",
    "EmbeddedProducer",
    "LogLimits",
    "LogLocked",
    "LogStats",
    "Retention",
    "TopicConfig",
]
