"""The blocklist: decisions from `mcp.decisions` folded into what to refuse (pure: no I/O, no clock).

The fold follows the topic's compaction: the latest decision per `compaction_key()` wins, so a
block replaces an older block on the same key and an unblock lifts it. A decision with
`tenant=None` covers every tenant; one with a tenant covers only that tenant's callers.

`match` runs on every agent message, so each scope has its own dict keyed by subject and an empty
list (the usual state) costs one integer test. Time is passed in (`now_us`): an expired block
simply stops matching, and `purge` drops it from memory.

A tool-scope subject matches a tool in one of three forms: its upstream name (the `tool` column of
audit events: that name on every server), its qualified name `server/tool` (that server's tool,
whatever the naming config; server names have no `/`, so the first `/` ends the server; the risk
engine's tool blocks use this form), or its aggregated name (`server__tool`, with the configured
separator and shortening).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from ingress.naming import Naming
from schemas.decisions import Decision, DecisionAction, DecisionScope, tool_subject

# subject -> tenant qualifier (None = every tenant) -> the block in force for that key
_Subjects = dict[str, dict[str | None, Decision]]


def iso_us(ts_us: int) -> str:
    """UTC microseconds as ISO 8601 with a Z suffix (seconds precision: what a person reads)."""
    when = datetime.fromtimestamp(ts_us / 1_000_000, UTC)
    return when.replace(tzinfo=None).isoformat(timespec="seconds") + "Z"


def describe(decision: Decision) -> str:
    """`<scope> <subject>`, qualified by tenant when the decision is confined to one."""
    where = f" in tenant {decision.tenant}" if decision.tenant is not None else ""
    return f"{decision.scope} {decision.subject}{where}"


def until(decision: Decision) -> str:
    return f"until {iso_us(decision.expires_at)}" if decision.expires_at is not None else "indefinitely"


def refusal(decision: Decision) -> tuple[str, dict[str, object]]:
    """The JSON-RPC error message and data a blocked agent receives: it names the decision."""
    reason = decision.reason or "no reason given"
    message = (f"Blocked by decision {decision.decision_id} ({decision.scope} {decision.subject}, source "
               f"{decision.source}: {reason}; {until(decision)})")
    data: dict[str, object] = {"decision_id": decision.decision_id, "scope": str(decision.scope),
                               "subject": decision.subject, "source": str(decision.source),
                               "expires_at": decision.expires_at}
    return message, data


@dataclass(frozen=True, slots=True)
class Applied:
    """What folding one decision changed: the block it replaced or lifted (None when there was none)."""

    decision: Decision
    previous: Decision | None

    @property
    def lifted(self) -> bool:
        return self.decision.action is DecisionAction.UNBLOCK and self.previous is not None


class Blocklist:
    def __init__(self, naming: Naming | None = None) -> None:
        self.naming = naming or Naming()
        self.size = 0  # blocks held (active or not yet purged); 0 makes `match` one test
        self._scopes: dict[DecisionScope, _Subjects] = {scope: {} for scope in DecisionScope}
        self._principal = self._scopes[DecisionScope.PRINCIPAL]
        self._session = self._scopes[DecisionScope.SESSION]
        self._tenant = self._scopes[DecisionScope.TENANT]
        self._tool = self._scopes[DecisionScope.TOOL]
        self._server = self._scopes[DecisionScope.SERVER]

    def __len__(self) -> int:
        return self.size

    # -- folding ------------------------------------------------------------------------------------

    def apply(self, decision: Decision) -> Applied:
        """Fold one decision in log order; a block replaces the key's block, an unblock removes it."""
        by_tenant = self._scopes[decision.scope].setdefault(decision.subject, {})
        previous = by_tenant.pop(decision.tenant, None)
        if previous is not None:
            self.size -= 1
        if decision.action is DecisionAction.BLOCK:
            by_tenant[decision.tenant] = decision
            self.size += 1
        if not by_tenant:
            del self._scopes[decision.scope][decision.subject]
        return Applied(decision, previous)

    def purge(self, now_us: int) -> list[Decision]:
        """Forget blocks that have expired (they stopped matching already); returns them."""
        expired: list[Decision] = []
        if not self.size:
            return expired
        for subjects in self._scopes.values():
            for subject in list(subjects):
                by_tenant = subjects[subject]
                for tenant, decision in list(by_tenant.items()):
                    if not decision.is_active(now_us):
                        del by_tenant[tenant]
                        expired.append(decision)
                if not by_tenant:
                    del subjects[subject]
        self.size -= len(expired)
        return expired

    # -- reading ------------------------------------------------------------------------------------

    def _blocks(self) -> Iterator[Decision]:
        for subjects in self._scopes.values():
            for by_tenant in subjects.values():
                yield from by_tenant.values()

    def active(self, now_us: int) -> list[Decision]:
        """Blocks in force at `now_us`, oldest decision first."""
        return sorted((d for d in self._blocks() if d.is_active(now_us)), key=lambda d: (d.ts, d.decision_id))

    def match(self, principal: str, tenant: str, session_id: str, tool: str, server: str,
              now_us: int) -> Decision | None:
        """The block covering a message with these attributes, if any ("" = not known / not involved)."""
        if not self.size:
            return None
        return self.match_caller(principal, tenant, session_id, now_us) or \
            self.match_target(tenant, tool, server, now_us)

    def match_caller(self, principal: str, tenant: str, session_id: str, now_us: int) -> Decision | None:
        """Blocks on who is calling: principal, session or tenant."""
        if not self.size:
            return None
        if self._principal and principal:
            found = _find(self._principal, principal, tenant, now_us)
            if found is not None:
                return found
        if self._session and session_id:
            found = _find(self._session, session_id, tenant, now_us)
            if found is not None:
                return found
        if self._tenant and tenant:
            return _find(self._tenant, tenant, tenant, now_us)
        return None

    def match_target(self, tenant: str, tool: str, server: str, now_us: int) -> Decision | None:
        """Blocks on what is called: the tool (upstream, qualified or aggregated name) or the server."""
        if not self.size:
            return None
        if self._tool and tool:
            found = _find(self._tool, tool, tenant, now_us)
            if found is None and server:
                found = _find(self._tool, tool_subject(server, tool), tenant, now_us) or \
                    _find(self._tool, self.naming.expose(server, tool), tenant, now_us)
            if found is not None:
                return found
        if self._server and server:
            return _find(self._server, server, tenant, now_us)
        return None


def _find(subjects: _Subjects, subject: str, tenant: str, now_us: int) -> Decision | None:
    by_tenant = subjects.get(subject)
    if by_tenant is None:
        return None
    for key in (None, tenant):
        decision = by_tenant.get(key)
        if decision is not None and (decision.expires_at is None or now_us < decision.expires_at):
            return decision
    return None
