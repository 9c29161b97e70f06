"""What the risk engine concludes from one event: the scores to publish and the decisions to take.

The engine is pure (no I/O, time from the events themselves), so the consumer around it only
moves these values: scores to `mcp.risk`, decisions to `mcp.decisions`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from schemas.decisions import Decision
from schemas.risk import RiskScore


@dataclass(slots=True)
class Assessment:
    scores: list[RiskScore] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.scores or self.decisions)
