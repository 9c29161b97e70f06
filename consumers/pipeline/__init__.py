"""pipeline: consumers built as chains of small steps, in the style of Sentry's arroyo.

    run_consumer ─records─▶ Decode ─▶ Map / Filter ─▶ Batch ─▶ ReplayGuard ─▶ Insert ─▶ Commit
                              │ undecodable
                              ▼
                          DeadLetter (a topic, with the reason), counted by InvalidRatio

Every step is async and hands its output to the next one before returning, so a step that waits
(an insert retrying against a store that is down) stops the whole chain and the poll loop with
it: that is the backpressure, and it bounds memory to one poll plus one open batch per partition
(plus the one batch being written, with `Insert(..., overlap=True)`, which returns once a write has
started and commits it at its next call; see insert.py).
The log's `Consumer` protocol has no pause(); not polling is how consumption pauses.

Offsets are committed by the last step, `Commit`, only after `Insert` returned; a record that
yields no row (dead-lettered, filtered out) travels on as `Skipped`, so its offset is committed
with its batch and never replayed for nothing, but never committed before its dead letter is
durable. A batch's dedup token is `topic:partition:first-last`; `ReplayGuard` covers what a token
cannot: a replay whose batches are cut elsewhere than the first run's (time-bounded batches).

Errors (one small tree; other errors pass through unchanged and stop the consumer):
    PipelineError
    └── TooManyInvalid   too many undecodable messages in the recent window: the consumer stops
                         instead of dead-lettering everything; not retryable
Steps retry errors whose `retryable` attribute is true (`StoreUnavailable`, `LogUnavailable`)
with capped backoff, forever: the log keeps the records, so waiting loses nothing.

May import `eventlog.base` and the standard library; must not import `ingress`, `schemas` or a store.
"""

from consumers.pipeline.batch import Batch
from consumers.pipeline.decode import (
    DeadLetter,
    DeadLetterEnvelope,
    Decode,
    Filter,
    InvalidRatio,
    Map,
    TooManyInvalid,
    parse_dead_letter,
)
from consumers.pipeline.insert import Commit, Insert, ReplayGuard
from consumers.pipeline.retry import RetryPolicy, retrying
from consumers.pipeline.runner import Rebalance, run_consumer
from consumers.pipeline.types import (
    ConsumerMetrics,
    Forward,
    Item,
    Message,
    PipelineError,
    Skipped,
    Step,
    ValuesBatch,
)

__all__ = [
    "Batch",
    "Commit",
    "ConsumerMetrics",
    "DeadLetter",
    "DeadLetterEnvelope",
    "Decode",
    "Filter",
    "Forward",
    "Insert",
    "InvalidRatio",
    "Item",
    "Map",
    "Message",
    "PipelineError",
    "Rebalance",
    "ReplayGuard",
    "RetryPolicy",
    "Skipped",
    "Step",
    "TooManyInvalid",
    "ValuesBatch",
    "parse_dead_letter",
    "retrying",
    "run_consumer",
]
