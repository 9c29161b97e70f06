"""An operator's decision as the admin API takes it, checked, and any decision as JSON (pure).

`POST /admin/decisions` takes `{"action", "scope", "subject", "tenant"?, "ttl_s"?, "reason", "actor"?}`.
Every problem is answered with what is wrong and what to send instead (`InvalidDecision`); a
subject nobody has heard of is fine (blocks may precede the principal's first call). The decision
id and the time are passed in, so this stays free of clocks and id generators.
"""

from __future__ import annotations

import math
from typing import Any

from schemas.decisions import Decision, DecisionAction, DecisionScope, DecisionSource

FIELDS = ("action", "scope", "subject", "tenant", "ttl_s", "reason", "actor")
MAX_TTL_S = 10 * 365 * 24 * 3600.0
MAX_TEXT = 1024
EXAMPLE = ('{"action": "block", "scope": "principal", "subject": "alice", "reason": "exfiltration suspected", '
           '"ttl_s": 3600}')


class InvalidDecision(ValueError):
    """The request does not describe a decision; the message says what to send."""


def _choices(enum: type[DecisionAction] | type[DecisionScope]) -> str:
    return ", ".join(m.value for m in enum)


def _text(body: dict[str, Any], name: str, required: bool, default: str = "") -> str:
    value = body.get(name)
    if value is None:
        if required:
            raise InvalidDecision(f"{name} is required: {_HINTS[name]}")
        return default
    if not isinstance(value, str) or (required and not value.strip()):
        raise InvalidDecision(f"{name} must be a non-empty string: {_HINTS[name]}")
    if len(value) > MAX_TEXT:
        raise InvalidDecision(f"{name} is {len(value)} characters long; at most {MAX_TEXT} are kept")
    return value


_HINTS = {
    "subject": ("the principal, session id, tenant or server name the decision is about; a tool as `name` "
                "(on every server), `server/name` or its aggregated name"),
    "reason": "say why (the blocked agent sees it, and the audit trail keeps it)",
    "actor": "who decided (defaults to the admin credential)",
}


def operator_decision(body: object, *, now_us: int, decision_id: str, actor: str = "admin") -> Decision:
    """The decision an operator's request describes; raises `InvalidDecision`."""
    if not isinstance(body, dict):
        raise InvalidDecision(f"the body must be a JSON object, e.g. {EXAMPLE}")
    unknown = sorted(k for k in body if k not in FIELDS)
    if unknown:
        raise InvalidDecision(f"unknown field(s) {', '.join(map(repr, unknown))}; the fields are {', '.join(FIELDS)}")
    try:
        action = DecisionAction(str(body.get("action")))
    except ValueError:
        raise InvalidDecision(f"action must be one of {_choices(DecisionAction)} (got {body.get('action')!r})") \
            from None
    scope_value = body.get("scope")
    if scope_value is None:
        raise InvalidDecision(f"scope is required: one of {_choices(DecisionScope)}")
    try:
        scope = DecisionScope(str(scope_value))
    except ValueError:
        raise InvalidDecision(f"unknown scope {scope_value!r}: use one of {_choices(DecisionScope)}") from None
    subject = _text(body, "subject", required=True)
    tenant = body.get("tenant")
    if tenant is not None and (not isinstance(tenant, str) or not tenant.strip()):
        raise InvalidDecision("tenant must be a tenant name, or null (or absent) for every tenant")
    reason = _text(body, "reason", required=action is DecisionAction.BLOCK)
    who = _text(body, "actor", required=False, default=actor) or actor
    expires_at = None
    ttl = body.get("ttl_s")
    if ttl is not None:
        if action is DecisionAction.UNBLOCK:
            raise InvalidDecision("ttl_s applies to blocks only; an unblock lifts the block now")
        if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not math.isfinite(ttl) or \
                not 0 < ttl <= MAX_TTL_S:
            raise InvalidDecision(f"ttl_s must be a number of seconds in (0, {MAX_TTL_S:.0f}], or null (or absent) "
                                  f"to block until unblocked (got {ttl!r})")
        expires_at = now_us + max(1, round(ttl * 1_000_000))
    return Decision(ts=now_us, decision_id=decision_id, action=action, scope=scope, subject=subject, tenant=tenant,
                    reason=reason, source=DecisionSource.OPERATOR, actor=who, expires_at=expires_at)


def decision_json(decision: Decision) -> dict[str, Any]:
    """Every field of the decision; enums as their strings, `ts` and `expires_at` in UTC microseconds."""
    return {
        "ts": decision.ts,
        "decision_id": decision.decision_id,
        "action": str(decision.action),
        "scope": str(decision.scope),
        "subject": decision.subject,
        "tenant": decision.tenant,
        "reason": decision.reason,
        "source": str(decision.source),
        "actor": decision.actor,
        "expires_at": decision.expires_at,
        "risk_score": decision.risk_score,
        "evidence_event_ids": list(decision.evidence_event_ids),
        "schema_version": decision.schema_version,
    }
