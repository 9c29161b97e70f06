"""The blocks the risk engine knows to be in force: its own, and those it was told of.

A block is decided once per subject while it is in force; an operator's unblock ends it. The
engine blocks two scopes: a principal, keyed by (tenant, principal), and a tool, keyed by its
subject `server/tool` with no tenant (a tool is blocked for every tenant). A decision without a
tenant is about the subject in every tenant. Decisions of other scopes do not concern the engine.
"""

from __future__ import annotations

from consumers.risk.lru import Lru
from schemas.decisions import Decision, DecisionAction, DecisionScope

BlockKey = tuple[DecisionScope, str | None, str]  # (scope, tenant or None for every tenant, subject)
SCOPES = frozenset({DecisionScope.PRINCIPAL, DecisionScope.TOOL})


class Blocks:
    def __init__(self, limit: int) -> None:
        self._held: Lru[BlockKey, Decision] = Lru(limit)

    def __len__(self) -> int:
        return len(self._held)

    def in_force(self, scope: DecisionScope, tenant: str | None, subject: str, now_us: int) -> bool:
        for key in ((scope, tenant, subject), (scope, None, subject)):
            held = self._held.get(key)
            if held is not None and held.is_active(now_us):
                return True
        return False

    def active(self, now_us: int) -> list[Decision]:
        return [d for d in self._held.values() if d.is_active(now_us)]

    def note(self, decision: Decision) -> None:
        """Fold in a decision; only principal and tool ones concern the engine."""
        scope = decision.scope
        if scope not in SCOPES:
            return
        key = (scope, decision.tenant, decision.subject)
        if decision.action is DecisionAction.BLOCK:
            self._held.put(key, decision)
            return
        ended = [key] if decision.tenant is not None else [
            k for k in self._held if k[0] is scope and k[2] == decision.subject]
        for k in ended:
            self._held.pop(k, None)
