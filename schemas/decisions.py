"""Decisions: blocks and unblocks, published to the compacted `mcp.decisions` topic.

Every ingress replica folds them into its in-memory blocklist. Field-for-field the Avro record
`mcpgw.decisions.Decision`; timestamps are UTC microseconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class DecisionAction(StrEnum):
    BLOCK = "block"
    UNBLOCK = "unblock"


class DecisionScope(StrEnum):
    PRINCIPAL = "principal"
    SESSION = "session"
    TENANT = "tenant"
    TOOL = "tool"
    SERVER = "server"


class DecisionSource(StrEnum):
    RISK_ENGINE = "risk_engine"
    GRAFANA_ALERT = "grafana_alert"
    OPERATOR = "operator"
    POLICY = "policy"
    EXTERNAL = "external"  # a user's own consumer or SOAR tool, through the admin API


def tool_subject(server: str, tool: str) -> str:
    """The subject of a tool-scope decision about one server's tool: `server/tool`.

    Server names cannot contain `/`, so the first `/` ends the server and a tool name may hold more.
    The ingress also matches a bare tool name (that tool on every server) and its aggregated name.
    """
    return f"{server}/{tool}"


def parse_tool_subject(subject: str) -> tuple[str, str] | None:
    """(server, tool) of a `server/tool` subject; None for any other form."""
    server, sep, tool = subject.partition("/")
    return (server, tool) if sep and server and tool else None


@dataclass(slots=True, kw_only=True)
class Decision:
    ts: int
    decision_id: str
    action: DecisionAction
    scope: DecisionScope
    subject: str
    tenant: str | None = None
    reason: str = ""
    source: DecisionSource
    actor: str = ""
    expires_at: int | None = None
    risk_score: int | None = None
    evidence_event_ids: list[str] = field(default_factory=list)
    schema_version: int = 1

    def compaction_key(self) -> str:
        """The Kafka key: the latest decision per key survives compaction.

        `scope:subject` (DESIGN.md §3), qualified by tenant when the decision is confined to one,
        so that blocking tool X for tenant A and for tenant B are two keys, not one overwriting
        the other.
        """
        key = f"{self.scope}:{self.subject}"
        return key if self.tenant is None else f"{key}@{self.tenant}"

    def is_active(self, now_us: int) -> bool:
        return self.action is DecisionAction.BLOCK and (self.expires_at is None or now_us < self.expires_at)
