"""What a signal reports: its name and how strongly it fired (0..1)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Hit:
    signal: str  # the name scores carry in `reasons` and `signals`
    strength: float  # 0..1; the engine multiplies it by the signal's weight
    evidence: tuple[str, ...] = ()  # ids of earlier events behind the hit, beside the one that fired it


def ramp(value: float, low: float, high: float) -> float:
    """0 at or below `low`, 1 at or above `high`, linear between."""
    if value <= low:
        return 0.0
    if value >= high:
        return 1.0
    return (value - low) / (high - low)
