"""ingress/blocklist.py and ingress/decision_input.py: folding decisions, matching messages, operator input."""

from __future__ import annotations

import pytest

from ingress.blocklist import Blocklist, iso_us, refusal
from ingress.decision_input import InvalidDecision, decision_json, operator_decision
from ingress.naming import Naming
from schemas.decisions import Decision, DecisionAction, DecisionScope, DecisionSource

NOW = 1_800_000_000_000_000  # µs
_ids = iter(range(1, 1_000_000))


def block(scope: DecisionScope, subject: str, *, tenant: str | None = None, expires_at: int | None = None,
          action: DecisionAction = DecisionAction.BLOCK, reason: str = "test") -> Decision:
    return Decision(ts=NOW, decision_id=f"d{next(_ids)}", action=action, scope=scope, subject=subject, tenant=tenant,
                    reason=reason, source=DecisionSource.OPERATOR, expires_at=expires_at)


def unblock(scope: DecisionScope, subject: str, *, tenant: str | None = None) -> Decision:
    return block(scope, subject, tenant=tenant, action=DecisionAction.UNBLOCK)


def caller(bl: Blocklist, principal: str = "alice", tenant: str = "acme", session: str = "s1",
           now: int = NOW) -> Decision | None:
    return bl.match(principal, tenant, session, "", "", now)


def target(bl: Blocklist, tool: str, server: str, tenant: str = "acme", now: int = NOW) -> Decision | None:
    return bl.match("bob", tenant, "", tool, server, now)


def test_an_empty_blocklist_matches_nothing() -> None:
    bl = Blocklist()
    assert len(bl) == 0
    assert bl.match("alice", "acme", "s1", "t", "srv", NOW) is None
    assert bl.active(NOW) == []


@pytest.mark.parametrize(("scope", "subject", "hit", "miss"), [
    (DecisionScope.PRINCIPAL, "alice", {"principal": "alice"}, {"principal": "bob"}),
    (DecisionScope.SESSION, "s1", {"session": "s1"}, {"session": "s2"}),
    (DecisionScope.TENANT, "acme", {"tenant": "acme"}, {"tenant": "globex"}),
])
def test_caller_scopes_match_only_their_subject(scope: DecisionScope, subject: str, hit: dict[str, str],
                                                miss: dict[str, str]) -> None:
    bl = Blocklist()
    decision = block(scope, subject)
    bl.apply(decision)
    assert caller(bl, **hit) is decision
    assert bl.match_caller(**{"principal": "alice", "tenant": "acme", "session_id": "s1", **_kw(hit)},
                           now_us=NOW) is decision
    assert caller(bl, **{"principal": "zed", "tenant": "other", "session": "sx", **miss}) is None


def _kw(values: dict[str, str]) -> dict[str, str]:
    return {("session_id" if k == "session" else k): v for k, v in values.items()}


def test_tool_scope_matches_the_upstream_name_and_the_aggregated_name() -> None:
    bl = Blocklist(Naming("__"))
    by_upstream = block(DecisionScope.TOOL, "get_current_time")
    bl.apply(by_upstream)
    assert target(bl, "get_current_time", "time") is by_upstream
    assert target(bl, "get_current_time", "clock") is by_upstream  # any server's tool of that name
    assert target(bl, "convert_time", "time") is None
    bl.apply(unblock(DecisionScope.TOOL, "get_current_time"))
    aggregated = block(DecisionScope.TOOL, "time__get_current_time")
    bl.apply(aggregated)
    assert target(bl, "get_current_time", "time") is aggregated
    assert target(bl, "get_current_time", "clock") is None  # only that server's tool
    assert bl.match_caller("bob", "acme", "", NOW) is None  # a tool block is not a block on callers


def test_tool_scope_follows_the_configured_separator_and_mode() -> None:
    dotted = Blocklist(Naming("."))
    decision = block(DecisionScope.TOOL, "fs.read")
    dotted.apply(decision)
    assert target(dotted, "read", "fs") is decision
    assert target(dotted, "read", "fs2") is None
    unprefixed = Blocklist(Naming(mode="none"))
    unprefixed.apply(block(DecisionScope.TOOL, "fs__read"))
    assert target(unprefixed, "read", "fs") is None


@pytest.mark.parametrize("naming", [Naming("__"), Naming("."), Naming(mode="none"), Naming(max_length=12)],
                         ids=["default", "dotted", "unprefixed", "shortened"])
def test_tool_scope_matches_the_qualified_name_whatever_the_naming(naming: Naming) -> None:
    bl = Blocklist(naming)
    decision = block(DecisionScope.TOOL, "time/get_current_time")  # the risk engine's form
    bl.apply(decision)
    assert target(bl, "get_current_time", "time") is decision
    assert target(bl, "get_current_time", "clock") is None  # only that server's tool
    assert target(bl, "convert_time", "time") is None
    assert target(bl, "", "time") is None  # resources and prompts of that server are not the tool
    assert bl.match_caller("bob", "acme", "", NOW) is None
    bl.apply(unblock(DecisionScope.TOOL, "time/get_current_time"))
    assert target(bl, "get_current_time", "time") is None and len(bl) == 0


def test_a_qualified_tool_subject_splits_at_the_first_slash() -> None:
    """Server names have no `/`; a tool's may: `fs/dir/list` is server fs's tool `dir/list`."""
    bl = Blocklist()
    decision = block(DecisionScope.TOOL, "fs/dir/list")
    bl.apply(decision)
    assert target(bl, "dir/list", "fs") is decision
    assert target(bl, "dir/list", "fs2") is None


def test_a_qualified_tool_block_for_every_tenant_and_one_for_a_tenant() -> None:
    bl = Blocklist()
    everyone = block(DecisionScope.TOOL, "calc/add", expires_at=NOW + 10)
    for_acme = block(DecisionScope.TOOL, "calc/add", tenant="acme")
    bl.apply(everyone)
    bl.apply(for_acme)
    assert target(bl, "add", "calc", tenant="globex") is everyone
    assert target(bl, "add", "calc", tenant="acme") is everyone  # the tenant-wide one is looked up first
    assert target(bl, "add", "calc", tenant="globex", now=NOW + 10) is None  # expired
    assert target(bl, "add", "calc", tenant="acme", now=NOW + 10) is for_acme


def test_server_scope_matches_every_call_to_that_server() -> None:
    bl = Blocklist()
    decision = block(DecisionScope.SERVER, "time")
    bl.apply(decision)
    assert target(bl, "get_current_time", "time") is decision
    assert target(bl, "", "time") is decision  # resources and prompts too
    assert target(bl, "get_current_time", "other") is None


def test_tenant_qualified_decisions_cover_only_that_tenant() -> None:
    bl = Blocklist()
    for_acme = block(DecisionScope.TOOL, "delete", tenant="acme")
    bl.apply(for_acme)
    assert target(bl, "delete", "fs", tenant="acme") is for_acme
    assert target(bl, "delete", "fs", tenant="globex") is None
    everyone = block(DecisionScope.TOOL, "delete")
    bl.apply(everyone)
    assert target(bl, "delete", "fs", tenant="globex") is everyone
    assert len(bl) == 2  # two keys: tool:delete and tool:delete@acme
    bl.apply(unblock(DecisionScope.TOOL, "delete"))
    assert target(bl, "delete", "fs", tenant="globex") is None
    assert target(bl, "delete", "fs", tenant="acme") is for_acme  # its own key still stands


def test_the_latest_decision_per_key_wins_and_unblock_lifts_it() -> None:
    bl = Blocklist()
    first = block(DecisionScope.PRINCIPAL, "alice", reason="first")
    second = block(DecisionScope.PRINCIPAL, "alice", reason="second")
    assert bl.apply(first).previous is None
    applied = bl.apply(second)
    assert applied.previous is first and not applied.lifted
    assert caller(bl) is second
    assert len(bl) == 1
    lifted = bl.apply(unblock(DecisionScope.PRINCIPAL, "alice"))
    assert lifted.lifted and lifted.previous is second
    assert caller(bl) is None
    assert len(bl) == 0
    nothing = bl.apply(unblock(DecisionScope.PRINCIPAL, "nobody"))  # still folded, changes nothing
    assert not nothing.lifted and len(bl) == 0


def test_blocks_expire_by_themselves_and_purge_forgets_them() -> None:
    bl = Blocklist()
    short = block(DecisionScope.PRINCIPAL, "alice", expires_at=NOW + 10)
    forever = block(DecisionScope.SERVER, "time")
    bl.apply(short)
    bl.apply(forever)
    assert caller(bl, now=NOW + 9) is short
    assert caller(bl, now=NOW + 10) is None
    assert bl.active(NOW + 10) == [forever]
    assert bl.purge(NOW + 9) == []
    assert bl.purge(NOW + 10) == [short]
    assert len(bl) == 1
    assert target(bl, "x", "time", now=NOW + 10**12) is forever


def test_active_lists_blocks_in_force_oldest_first() -> None:
    bl = Blocklist()
    later = Decision(ts=NOW + 5, decision_id="b", action=DecisionAction.BLOCK, scope=DecisionScope.TENANT,
                     subject="acme", source=DecisionSource.RISK_ENGINE, risk_score=91)
    earlier = block(DecisionScope.SESSION, "s9")
    bl.apply(later)
    bl.apply(earlier)
    assert bl.active(NOW) == [earlier, later]


def test_refusal_names_the_decision() -> None:
    timed = Decision(ts=NOW, decision_id="01J-abc", action=DecisionAction.BLOCK, scope=DecisionScope.PRINCIPAL,
                     subject="alice", reason="exfiltration suspected", source=DecisionSource.GRAFANA_ALERT,
                     expires_at=NOW + 3_600_000_000)
    message, data = refusal(timed)
    assert message == ("Blocked by decision 01J-abc (principal alice, source grafana_alert: exfiltration suspected; "
                       f"until {iso_us(NOW + 3_600_000_000)})")
    assert iso_us(NOW + 3_600_000_000) == "2027-01-15T09:00:00Z"
    assert data == {"decision_id": "01J-abc", "scope": "principal", "subject": "alice", "source": "grafana_alert",
                    "expires_at": NOW + 3_600_000_000}
    forever, _ = refusal(block(DecisionScope.SERVER, "time", reason=""))
    assert forever.endswith("(server time, source operator: no reason given; indefinitely)")


# -- operator input ------------------------------------------------------------------------------------


def decide(body: object) -> Decision:
    return operator_decision(body, now_us=NOW, decision_id="d-1")


def test_an_operator_block_with_a_ttl() -> None:
    decision = decide({"action": "block", "scope": "tool", "subject": "time__get_current_time", "tenant": "acme",
                       "ttl_s": 1.5, "reason": "abuse", "actor": "jane"})
    assert decision == Decision(ts=NOW, decision_id="d-1", action=DecisionAction.BLOCK, scope=DecisionScope.TOOL,
                                subject="time__get_current_time", tenant="acme", reason="abuse",
                                source=DecisionSource.OPERATOR, actor="jane", expires_at=NOW + 1_500_000)
    assert decision.compaction_key() == "tool:time__get_current_time@acme"
    assert decision_json(decision) == {
        "ts": NOW, "decision_id": "d-1", "action": "block", "scope": "tool", "subject": "time__get_current_time",
        "tenant": "acme", "reason": "abuse", "source": "operator", "actor": "jane", "expires_at": NOW + 1_500_000,
        "risk_score": None, "evidence_event_ids": [], "schema_version": 1}


def test_an_operator_unblock_needs_no_reason_and_defaults_the_actor() -> None:
    decision = decide({"action": "unblock", "scope": "principal", "subject": "alice", "ttl_s": None,
                       "tenant": None})
    assert decision.action is DecisionAction.UNBLOCK and decision.actor == "admin" and decision.expires_at is None


@pytest.mark.parametrize(("body", "says"), [
    ([], "must be a JSON object"),
    ({"action": "ban", "scope": "principal", "subject": "a", "reason": "r"}, "action must be one of block, unblock"),
    ({"action": "block", "scope": "user", "subject": "a", "reason": "r"},
     "unknown scope 'user': use one of principal, session, tenant, tool, server"),
    ({"action": "block", "subject": "a", "reason": "r"}, "scope is required"),
    ({"action": "block", "scope": "principal", "reason": "r"}, "subject is required"),
    ({"action": "block", "scope": "principal", "subject": "  ", "reason": "r"}, "subject must be a non-empty"),
    ({"action": "block", "scope": "principal", "subject": 7, "reason": "r"}, "subject must be a non-empty"),
    ({"action": "block", "scope": "principal", "subject": "a"}, "reason is required"),
    ({"action": "block", "scope": "principal", "subject": "a", "reason": "r", "ttl_s": 0}, "ttl_s must be"),
    ({"action": "block", "scope": "principal", "subject": "a", "reason": "r", "ttl_s": True}, "ttl_s must be"),
    ({"action": "block", "scope": "principal", "subject": "a", "reason": "r", "ttl_s": "1h"}, "ttl_s must be"),
    ({"action": "unblock", "scope": "principal", "subject": "a", "ttl_s": 5}, "ttl_s applies to blocks only"),
    ({"action": "block", "scope": "principal", "subject": "a", "reason": "r", "tenant": ""}, "tenant must be"),
    ({"action": "block", "scope": "principal", "subject": "a", "reason": "r", "ttl": 5}, "unknown field(s) 'ttl'"),
])
def test_bad_operator_input_says_what_to_send(body: object, says: str) -> None:
    with pytest.raises(InvalidDecision) as caught:
        decide(body)
    assert says in str(caught.value)
