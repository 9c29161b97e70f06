"""Waiting out retryable failures with capped exponential backoff; the chain is paused meanwhile."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from consumers.pipeline.types import ConsumerMetrics

log = logging.getLogger("mcpgw.consumers.pipeline")

R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    initial_s: float = 0.05
    max_s: float = 5.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.initial_s <= 0 or self.max_s < self.initial_s or self.multiplier < 1:
            raise ValueError("retry policy needs 0 < initial_s <= max_s and multiplier >= 1")


def is_retryable(exc: BaseException) -> bool:
    # Duck-typed so the pipeline need not import the store or the log: both error trees carry it.
    return bool(getattr(exc, "retryable", False))


async def retrying(
    operation: Callable[[], Awaitable[R]], policy: RetryPolicy, what: str, metrics: ConsumerMetrics
) -> R:
    """Run `operation` until it returns or raises something not retryable; no attempt limit.

    There is no limit because giving up could only mean dropping records or stopping, and the log
    keeps them anyway; `run_consumer`'s shutdown timeout is what ends a wait nobody wants.
    """
    delay = policy.initial_s
    failures = 0
    try:
        while True:
            try:
                result = await operation()
            except Exception as exc:
                if not is_retryable(exc):
                    raise
                failures += 1
                metrics.retries += 1
                metrics.paused = True
                # First failure and then every tenth: a long outage should not flood the log.
                if failures == 1 or failures % 10 == 0:
                    log.warning(
                        "%s failed (%d time(s), retryable; consumption paused, next try in %.2fs): %s",
                        what,
                        failures,
                        delay,
                        exc,
                    )
                await asyncio.sleep(delay)
                delay = min(delay * policy.multiplier, policy.max_s)
            else:
                if failures:
                    log.info("%s succeeded after %d retryable failure(s)", what, failures)
                return result
    finally:
        if failures:
            metrics.paused = False
