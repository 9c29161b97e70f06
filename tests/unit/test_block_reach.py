"""ingress/block_reach.py: which sessions a block decision cuts off, on tables, and its agreement
with what `Blocklist.match_caller` refuses message by message."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pytest

from ingress.block_reach import covered, covers, reaches_callers
from ingress.blocklist import Blocklist
from schemas.decisions import Decision, DecisionAction, DecisionScope, DecisionSource

NOW = 1_800_000_000_000_000  # µs
P, S, T = DecisionScope.PRINCIPAL, DecisionScope.SESSION, DecisionScope.TENANT


def block(scope: DecisionScope, subject: str, tenant: str | None = None, expires_at: int | None = None,
          action: DecisionAction = DecisionAction.BLOCK) -> Decision:
    return Decision(ts=NOW, decision_id="d1", action=action, scope=scope, subject=subject, tenant=tenant,
                    reason="test", source=DecisionSource.OPERATOR, expires_at=expires_at)


@dataclass(frozen=True)
class Caller:
    id: str
    principal: str
    tenant: str


ALICE_ACME = Caller("s1", "alice", "acme")
ALICE_GLOBEX = Caller("s2", "alice", "globex")
BOB_ACME = Caller("s3", "bob", "acme")
ANON = Caller("s4", "", "")
CALLERS = [ALICE_ACME, ALICE_GLOBEX, BOB_ACME, ANON]


@pytest.mark.parametrize(("decision", "cut"), [
    (block(P, "alice"), [ALICE_ACME, ALICE_GLOBEX]),
    (block(P, "alice", tenant="acme"), [ALICE_ACME]),
    (block(P, "alice", tenant="initech"), []),
    (block(P, "carol"), []),
    (block(S, "s3"), [BOB_ACME]),
    (block(S, "s3", tenant="globex"), []),
    (block(S, "s4"), [ANON]),
    (block(T, "acme"), [ALICE_ACME, BOB_ACME]),
    (block(T, "acme", tenant="acme"), [ALICE_ACME, BOB_ACME]),
    (block(T, "acme", tenant="globex"), []),  # a tenant block confined to another tenant covers no one
    (block(P, ""), []),  # an empty attribute is "not known": it matches nothing
    (block(T, ""), []),
    (block(P, "alice", expires_at=NOW), []),  # expired at this very microsecond
    (block(P, "alice", expires_at=NOW + 1), [ALICE_ACME, ALICE_GLOBEX]),
    (block(P, "alice", action=DecisionAction.UNBLOCK), []),
    (block(DecisionScope.TOOL, "alice"), []),  # what is called, not who listens
    (block(DecisionScope.SERVER, "acme"), []),
])
def test_a_decision_cuts_off_exactly_the_sessions_it_covers(decision: Decision, cut: list[Caller]) -> None:
    assert covered(decision, CALLERS, NOW) == cut
    assert [c for c in CALLERS if covers(decision, c.principal, c.tenant, c.id, NOW)] == cut


@pytest.mark.parametrize(("decision", "reaches"), [
    (block(P, "alice"), True), (block(S, "s1"), True), (block(T, "acme"), True),
    (block(DecisionScope.TOOL, "t"), False), (block(DecisionScope.SERVER, "srv"), False),
    (block(P, "alice", expires_at=NOW - 1), False), (block(P, "alice", action=DecisionAction.UNBLOCK), False),
])
def test_only_caller_blocks_in_force_reach_streams(decision: Decision, reaches: bool) -> None:
    assert reaches_callers(decision, NOW) is reaches


def test_it_agrees_with_the_blocklist_on_every_caller_and_decision() -> None:
    """The same qualifier rules as message-by-message refusal: a cut stream and a refused next
    message go together, for every combination of scope, subject and tenant qualifier."""
    subjects = ["alice", "bob", "s1", "s3", "acme", "globex", ""]
    tenants: list[str | None] = [None, "acme", "globex", ""]
    for scope, subject, tenant, expires in itertools.product((P, S, T), subjects, tenants, (None, NOW, NOW + 5)):
        decision = block(scope, subject, tenant=tenant, expires_at=expires)
        blocklist = Blocklist()
        blocklist.apply(decision)
        for caller in CALLERS:
            refused = blocklist.match_caller(caller.principal, caller.tenant, caller.id, NOW) is not None
            assert covers(decision, caller.principal, caller.tenant, caller.id, NOW) is refused, (decision, caller)
