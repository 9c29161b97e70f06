"""The blocks the risk engine knows to be in force: its own, and those it was told of.

A block is decided once per principal while it is in force; an operator's unblock ends it. Keyed
by (tenant, principal); a decision without a tenant is about the principal in every tenant.
"""

from __future__ import annotations

from consumers.risk.lru import Lru
from schemas.decisions import Decision, DecisionAction, DecisionScope

BlockKey = tuple[str | None, str]  # (tenant or None for every tenant, principal)


class Blocks:
    def __init__(self, limit: int) -> None:
        self._held: Lru[BlockKey, Decision] = Lru(limit)

    def __len__(self) -> int:
        return len(self._held)

    def in_force(self, tenant: str, principal: str, now_us: int) -> bool:
        for key in ((tenant, principal), (None, principal)):
            held = self._held.get(key)
            if held is not None and held.is_active(now_us):
                return True
        return False

    def active(self, now_us: int) -> list[Decision]:
        return [d for d in self._held.values() if d.is_active(now_us)]

    def note(self, decision: Decision) -> None:
        """Fold in a decision; only principal-scope ones concern the engine."""
        if decision.scope is not DecisionScope.PRINCIPAL:
            return
        key = (decision.tenant, decision.subject)
        if decision.action is DecisionAction.BLOCK:
            self._held.put(key, decision)
            return
        ended = [key] if decision.tenant is not None else [k for k in self._held if k[1] == decision.subject]
        for k in ended:
            self._held.pop(k, None)
