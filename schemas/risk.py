"""Risk scores: what the risk consumer publishes to `mcp.risk` and projects to `audit.risk_scores`.

Field-for-field the Avro record `mcpgw.risk.RiskScore`; timestamps are UTC microseconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MIN_SCORE = 0
MAX_SCORE = 100


@dataclass(slots=True, kw_only=True)
class RiskScore:
    ts: int
    score_id: str
    tenant: str
    principal: str
    session_id: str | None = None
    tool: str | None = None
    server: str | None = None
    score: int
    reasons: list[str] = field(default_factory=list)
    signals: dict[str, float] = field(default_factory=dict)
    window_start: int | None = None
    window_end: int | None = None
    event_id: str | None = None
    scorer: str = ""
    schema_version: int = 1

    def __post_init__(self) -> None:
        # Dashboards and thresholds assume the 0-100 range; a score outside it is a scorer bug.
        if not MIN_SCORE <= self.score <= MAX_SCORE:
            raise ValueError(f"risk score {self.score} outside {MIN_SCORE}..{MAX_SCORE}")
