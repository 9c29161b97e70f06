"""What every consumer chain is tuned by: how it polls, when it stops on bad input, where dead letters go.

Each consumer's own settings class extends `ConsumerSettings` with its batching knobs and, where its
loop needs them, other defaults (redeclaring a field keeps its place and changes only the default).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from consumers.pipeline.decode import DeadLetter, InvalidRatio
from consumers.pipeline.retry import RetryPolicy
from consumers.pipeline.types import ConsumerMetrics
from eventlog.base import TOPIC_DEAD_LETTER, Producer


@dataclass(frozen=True, slots=True)
class ConsumerSettings:
    max_records_per_poll: int = 500
    poll_timeout_s: float = 0.1
    max_invalid_ratio: float = 0.5
    invalid_min_messages: int = 100
    invalid_window: int = 1000
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    shutdown_timeout_s: float = 30.0
    dead_letter_topic: str = TOPIC_DEAD_LETTER

    def invalid_ratio(self) -> InvalidRatio:
        return InvalidRatio(self.max_invalid_ratio, self.invalid_min_messages, self.invalid_window)

    def dead_letter(self, producer: Producer, metrics: ConsumerMetrics, source: str) -> DeadLetter:
        return DeadLetter(producer, metrics, source=source, topic=self.dead_letter_topic, retry=self.retry)
