"""Which agent sessions a block decision reaches (pure: no I/O, no clock).

A caller-scope block (principal, session or tenant) covers a session when the session's own
principal, id or tenant is the decision's subject and the decision's tenant qualifier admits the
session's tenant: `tenant=None` covers every tenant, a tenant covers only its own callers. These
are exactly the rules `Blocklist.match_caller` applies to each message (an empty attribute means
"not known" and matches nothing); a tool or server block concerns what is called, not who
listens, so it reaches no stream. Time is passed in: an expired block reaches nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, TypeVar

from schemas.decisions import Decision, DecisionScope

CALLER_SCOPES = frozenset({DecisionScope.PRINCIPAL, DecisionScope.SESSION, DecisionScope.TENANT})


class Caller(Protocol):
    """What a session (or any stream holder) tells about who it belongs to."""

    @property
    def id(self) -> str: ...

    @property
    def principal(self) -> str: ...

    @property
    def tenant(self) -> str: ...


C = TypeVar("C", bound=Caller)


def reaches_callers(decision: Decision, now_us: int) -> bool:
    """A block in force on who calls: the kind of decision that cuts open streams."""
    return decision.scope in CALLER_SCOPES and decision.is_active(now_us)


def covers(decision: Decision, principal: str, tenant: str, session_id: str, now_us: int) -> bool:
    """Whether `decision` blocks a caller with these attributes ("" = not known)."""
    if not reaches_callers(decision, now_us):
        return False
    if decision.tenant is not None and decision.tenant != tenant:
        return False
    scope = decision.scope
    if scope is DecisionScope.PRINCIPAL:
        subject = principal
    elif scope is DecisionScope.SESSION:
        subject = session_id
    else:
        subject = tenant
    return bool(subject) and decision.subject == subject


def covered(decision: Decision, callers: Iterable[C], now_us: int) -> list[C]:
    """The callers (sessions) `decision` cuts off, in the order given."""
    if not reaches_callers(decision, now_us):
        return []
    return [c for c in callers if covers(decision, c.principal, c.tenant, c.id, now_us)]
