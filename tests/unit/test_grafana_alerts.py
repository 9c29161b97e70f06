"""ingress/grafana_alerts.py: Grafana webhook signature checks and alert → decision mapping."""

from __future__ import annotations

import copy
import hashlib
import hmac
import itertools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ingress.config import GrafanaWebhookConfig
from ingress.grafana_alerts import Accepted, GrafanaAlertReceiver, Rejected, sign
from schemas.decisions import Decision, DecisionAction, DecisionScope, DecisionSource

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "grafana"
SECRET = "correct-horse-battery-staple"
NOW_S = 1_777_885_980  # 2026-05-04T09:13:00Z, half a minute after the fixtures' alerts started
NOW_US = NOW_S * 1_000_000
SETTINGS = GrafanaWebhookConfig(secret=SECRET)


def fixture(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return loaded


def encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload).encode()


def signed(body: bytes, at_s: int = NOW_S, secret: str = SECRET) -> dict[str, str]:
    return sign(secret, body, at_s)


def ids() -> Callable[[], str]:
    counter = itertools.count(1)
    return lambda: f"decision-{next(counter)}"


def make_receiver(capacity: int = 10_000, **settings: Any) -> GrafanaAlertReceiver:
    config = GrafanaWebhookConfig(secret=SECRET, **settings) if settings else SETTINGS
    return GrafanaAlertReceiver(config, ids(), dedup_capacity=capacity)


def accept(receiver: GrafanaAlertReceiver, payload: dict[str, Any], now_us: int = NOW_US) -> Accepted:
    body = encode(payload)
    result = receiver.receive(body, signed(body, now_us // 1_000_000), now_us)
    assert isinstance(result, Accepted), result
    return result


def single(
    labels: dict[str, str],
    *,
    status: str = "firing",
    starts_at: str = "2026-05-04T09:12:30Z",
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The firing fixture with one alert relabelled; the fingerprint follows the labels, as Grafana's does."""
    payload = fixture("firing-block-principal.json")
    alert = payload["alerts"][0]
    alert["labels"] = labels
    alert["fingerprint"] = hashlib.sha256(json.dumps(labels, sort_keys=True).encode()).hexdigest()[:16]
    alert["status"] = status
    alert["startsAt"] = starts_at
    if annotations is not None:
        alert["annotations"] = annotations
    payload["status"] = status
    return payload


# --- signature and timestamp -------------------------------------------------------------------


def test_sign_matches_grafanas_algorithm() -> None:
    # Expected values computed outside Python: printf '1777885980:{"alerts":[]}' | openssl dgst -sha256 -hmac …
    headers = sign(SECRET, b'{"alerts":[]}', 1_777_885_980)
    assert headers == {
        "X-Grafana-Alerting-Signature-Timestamp": "1777885980",
        "X-Grafana-Alerting-Signature": "f77e3bd85f72c1d068a6edc4b45636ee4913fb3fd48160627b536ba1c18a9f00",
    }
    custom = sign(SECRET, b"{}", 7, signature_header="X-Sig", timestamp_header="X-Ts")
    assert set(custom) == {"X-Sig", "X-Ts"} and custom["X-Ts"] == "7"


def test_signed_firing_alert_is_accepted() -> None:
    # The fixture's bytes as they are: the signature covers the body exactly as Grafana sent it.
    body = (FIXTURES / "firing-block-principal.json").read_bytes()
    result = make_receiver().receive(body, signed(body), NOW_US)
    assert isinstance(result, Accepted)
    assert len(result.decisions) == 1 and result.errors == [] and result.ignored == []


def test_headers_are_matched_case_insensitively() -> None:
    body = encode(fixture("firing-block-principal.json"))
    headers = {name.lower(): value for name, value in signed(body).items()}
    assert isinstance(make_receiver().receive(body, headers, NOW_US), Accepted)


def test_custom_header_names_from_settings() -> None:
    receiver = make_receiver(signature_header="X-Sig", timestamp_header="X-Ts")
    body = encode(fixture("firing-block-principal.json"))
    assert isinstance(receiver.receive(body, signed(body), NOW_US), Rejected)
    headers = sign(SECRET, body, NOW_S, signature_header="X-Sig", timestamp_header="X-Ts")
    assert isinstance(receiver.receive(body, headers, NOW_US), Accepted)


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda h: h.pop("X-Grafana-Alerting-Signature"), "missing X-Grafana-Alerting-Signature"),
        (lambda h: h.pop("X-Grafana-Alerting-Signature-Timestamp"), "missing X-Grafana-Alerting-Signature-Timestamp"),
        (lambda h: h.update({"X-Grafana-Alerting-Signature": "0" * 64}), "does not match"),
        (lambda h: h.update({"X-Grafana-Alerting-Signature": "not hex, ünïcode"}), "does not match"),
        # The timestamp is signed: moving it without re-signing breaks the signature.
        (lambda h: h.update({"X-Grafana-Alerting-Signature-Timestamp": str(NOW_S + 1)}), "does not match"),
    ],
)
def test_unsigned_or_wrongly_signed_is_401(mutate: Callable[[dict[str, str]], object], expected: str) -> None:
    body = encode(fixture("firing-block-principal.json"))
    headers = signed(body)
    mutate(headers)
    result = make_receiver().receive(body, headers, NOW_US)
    assert isinstance(result, Rejected) and result.status == 401
    assert expected in result.message


def test_other_secret_is_401() -> None:
    body = encode(fixture("firing-block-principal.json"))
    result = make_receiver().receive(body, signed(body, secret="another-secret-of-16+"), NOW_US)
    assert isinstance(result, Rejected) and result.status == 401 and "admin.grafana.secret" in result.message


def test_tampered_body_is_401() -> None:
    body = encode(fixture("firing-block-principal.json"))
    headers = signed(body)
    result = make_receiver().receive(body.replace(b"mallory", b"alice00"), headers, NOW_US)
    assert isinstance(result, Rejected) and result.status == 401


@pytest.mark.parametrize(
    ("offset_s", "accepted", "expected"),
    [
        (-300, True, ""),  # exactly max_age_s old: still fresh
        (-301, False, "301 s old"),
        (300, True, ""),
        (301, False, "in the future"),
        (-86_400, False, "replayed"),
    ],
)
def test_timestamp_freshness(offset_s: int, accepted: bool, expected: str) -> None:
    body = encode(fixture("firing-block-principal.json"))
    result = make_receiver().receive(body, signed(body, NOW_S + offset_s), NOW_US)
    if accepted:
        assert isinstance(result, Accepted)
    else:
        assert isinstance(result, Rejected) and result.status == 401 and expected in result.message


@pytest.mark.parametrize(
    "stamp",
    [
        "17778859.80",
        "-1",
        "1e9",
        "1777885980000000",
        "soon",
        "\u00b2",
        "\u0661\u0667\u0667\u0667\u0668\u0668\u0665\u0669\u0668\u0660",
    ],
)
def test_timestamp_that_is_not_unix_seconds_is_401(stamp: str) -> None:
    body = encode(fixture("firing-block-principal.json"))
    # Signed correctly over the odd stamp, so it is the stamp itself that is refused.
    signature = hmac.new(SECRET.encode(), stamp.encode() + b":" + body, hashlib.sha256).hexdigest()
    headers = {"X-Grafana-Alerting-Signature": signature, "X-Grafana-Alerting-Signature-Timestamp": stamp}
    result = make_receiver().receive(body, headers, NOW_US)
    assert isinstance(result, Rejected) and result.status == 401 and "Unix time in seconds" in result.message


def test_undecodable_header_bytes_are_401_not_a_crash() -> None:
    # aiohttp hands invalid UTF-8 header bytes over as lone surrogates.
    body = encode(fixture("firing-block-principal.json"))
    headers = {"X-Grafana-Alerting-Signature": "\udcff" * 64, "X-Grafana-Alerting-Signature-Timestamp": "\udcff"}
    result = make_receiver().receive(body, headers, NOW_US)
    assert isinstance(result, Rejected) and result.status == 401
    headers["X-Grafana-Alerting-Signature-Timestamp"] = str(NOW_S)
    result = make_receiver().receive(body, headers, NOW_US)
    assert isinstance(result, Rejected) and result.status == 401 and "does not match" in result.message


def test_settings_without_a_timestamp_header_are_refused_at_startup() -> None:
    with pytest.raises(ValueError, match="timestamp_header"):
        GrafanaAlertReceiver(GrafanaWebhookConfig(secret=SECRET, timestamp_header=""), ids())
    with pytest.raises(ValueError, match="dedup_capacity"):
        GrafanaAlertReceiver(SETTINGS, ids(), dedup_capacity=0)


# --- body shape --------------------------------------------------------------------------------


def broken(edit: Callable[[dict[str, Any]], object]) -> bytes:
    payload = fixture("multi-alert-group.json")
    edit(payload)
    return encode(payload)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"receiver": "mcpgw-block", "alerts": [', "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[]", "JSON list"),
        (broken(lambda p: p.pop("alerts")), "no alerts array"),
        (broken(lambda p: p.update(alerts={})), "alerts must be an array"),
        (broken(lambda p: p.update(receiver=7)), "receiver must be a string"),
        (broken(lambda p: p.update(truncatedAlerts="3")), "truncatedAlerts must be a count"),
        (broken(lambda p: p["alerts"].__setitem__(1, "firing")), "alerts[1] must be an object"),
        (broken(lambda p: p["alerts"][2].pop("fingerprint")), "alerts[2].fingerprint is missing"),
        (broken(lambda p: p["alerts"][0].pop("labels")), "alerts[0].labels is missing"),
        (broken(lambda p: p["alerts"][0]["labels"].update(ttl=600)), "alerts[0].labels must be an object of strings"),
        (broken(lambda p: p["alerts"][0].update(annotations=[])), "alerts[0].annotations must be an object"),
        (broken(lambda p: p["alerts"][3].update(status="pending")), "alerts[3].status must be 'firing' or 'resolved'"),
        (broken(lambda p: p["alerts"][4].pop("startsAt")), "alerts[4].startsAt is missing"),
        (broken(lambda p: p["alerts"][4].update(startsAt="yesterday")), "alerts[4].startsAt is not an RFC 3339"),
        (broken(lambda p: p["alerts"][4].update(startsAt="2026-05-04T09:12:00")), "no time zone"),
    ],
)
def test_malformed_body_is_400_naming_the_problem(body: bytes, expected: str) -> None:
    result = make_receiver().receive(body, signed(body), NOW_US)
    assert isinstance(result, Rejected) and result.status == 400
    assert expected in result.message


def test_empty_alert_list_is_accepted_with_nothing_to_do() -> None:
    result = accept(make_receiver(), {**fixture("firing-block-principal.json"), "alerts": []})
    assert result == Accepted(decisions=[], duplicates=0, ignored=[], errors=[])


# --- firing → block ----------------------------------------------------------------------------


def test_firing_alert_becomes_a_block() -> None:
    result = accept(make_receiver(), fixture("firing-block-principal.json"))
    assert result.decisions == [
        Decision(
            ts=NOW_US,
            decision_id="decision-1",
            action=DecisionAction.BLOCK,
            scope=DecisionScope.PRINCIPAL,
            subject="mallory",
            tenant="acme",
            reason="Grafana alert MCP risk over threshold: mallory is exfiltrating files through fs__read",
            source=DecisionSource.GRAFANA_ALERT,
            actor="mcpgw-block",
            expires_at=NOW_US + 30 * 60 * 1_000_000,
            evidence_event_ids=[],
        )
    ]


def test_multi_alert_group_applies_the_good_alerts_and_reports_the_rest() -> None:
    result = accept(make_receiver(), fixture("multi-alert-group.json"))
    blocks = [(d.action, d.scope, d.subject, d.tenant, d.expires_at) for d in result.decisions]
    assert blocks == [
        (DecisionAction.BLOCK, DecisionScope.TOOL, "fs__delete", None, NOW_US + 3_600_000_000),
        (DecisionAction.BLOCK, DecisionScope.SESSION, "sess-7f3c2a91", "acme", NOW_US + 600_000_000),
    ]
    assert [d.decision_id for d in result.decisions] == ["decision-1", "decision-2"]
    reason = "Grafana alert MCP tool abuse: Session sess-7f3c2a91 read 9,000 resources in one minute."
    assert result.decisions[1].reason == reason
    assert len(result.errors) == 1
    assert "alerts[2] (MCP tool abuse)" in result.errors[0] and "unknown scope 'user'" in result.errors[0]
    assert "principal, session, tenant, tool, server" in result.errors[0]
    assert len(result.ignored) == 2
    assert "alerts[3]" in result.ignored[0] and "no action label" in result.ignored[0]
    assert "alerts[4]" in result.ignored[1] and "made no block" in result.ignored[1]


def test_alerts_grafana_left_out_are_reported() -> None:
    payload = fixture("firing-block-principal.json")
    payload["truncatedAlerts"] = 3
    result = accept(make_receiver(), payload)
    assert len(result.decisions) == 1
    assert result.ignored == [
        "3 alert(s) of this group were left out by the contact point's Max Alerts setting and never reached the "
        "gateway: set Max Alerts to 0 (no limit)"
    ]


def test_actor_defaults_to_grafana_without_a_receiver_name() -> None:
    payload = fixture("firing-block-principal.json")
    del payload["receiver"]
    assert accept(make_receiver(), payload).decisions[0].actor == "grafana"


@pytest.mark.parametrize(
    ("ttl", "seconds"),
    [
        ("", 3600),
        ("90", 90),
        ("90.5", 90.5),
        ("10m", 600),
        ("1h30m", 5400),
        ("1.5h", 5400),
        ("2d", 172_800),
        ("1w", 604_800),
        ("1500ms", 1.5),
        ("45s", 45),
    ],
)
def test_ttl_label(ttl: str, seconds: float) -> None:
    labels = {"action": "block", "scope": "principal", "principal": "mallory"}
    if ttl:
        labels["ttl"] = ttl
    decision = accept(make_receiver(), single(labels)).decisions[0]
    assert decision.expires_at == NOW_US + int(seconds * 1_000_000)


def test_default_ttl_comes_from_settings() -> None:
    receiver = make_receiver(default_ttl_s=120)
    decision = accept(receiver, single({"action": "block", "scope": "tool", "tool": "fs__delete"})).decisions[0]
    assert decision.expires_at == NOW_US + 120_000_000


@pytest.mark.parametrize(
    "ttl", ["10 minutes", "0", "0s", "-5m", "5x", "1h-", "inf", "nan", "500ms", "9" * 20, "\u0661\u0660m", "1h 30m"]
)
def test_bad_ttl_is_an_error_for_that_alert(ttl: str) -> None:
    result = accept(make_receiver(), single({"action": "block", "scope": "principal", "principal": "m", "ttl": ttl}))
    assert result.decisions == []
    assert len(result.errors) == 1 and f"ttl={ttl}" in result.errors[0]


@pytest.mark.parametrize(
    ("labels", "scope", "subject", "tenant"),
    [
        ({"scope": "principal", "subject": "bob"}, DecisionScope.PRINCIPAL, "bob", None),
        ({"scope": "Principal", "principal": " bob "}, DecisionScope.PRINCIPAL, "bob", None),
        ({"scope": "principal", "principal": "bob", "subject": "bob"}, DecisionScope.PRINCIPAL, "bob", None),
        ({"scope": "session", "session": "s-1", "tenant": "acme"}, DecisionScope.SESSION, "s-1", "acme"),
        ({"scope": "session", "session_id": "s-2"}, DecisionScope.SESSION, "s-2", None),
        ({"scope": "tenant", "tenant": "acme"}, DecisionScope.TENANT, "acme", None),
        ({"scope": "tenant", "subject": "acme"}, DecisionScope.TENANT, "acme", None),
        ({"scope": "tool", "tool": "fs__delete", "tenant": "acme"}, DecisionScope.TOOL, "fs__delete", "acme"),
        ({"scope": "server", "server": "notes"}, DecisionScope.SERVER, "notes", None),
        # Subjects are not checked against known principals: a block for one not yet seen still counts.
        ({"scope": "principal", "principal": "never-seen-before"}, DecisionScope.PRINCIPAL, "never-seen-before", None),
    ],
)
def test_scope_and_subject_labels(
    labels: dict[str, str], scope: DecisionScope, subject: str, tenant: str | None
) -> None:
    decision = accept(make_receiver(), single({"action": "block", **labels})).decisions[0]
    assert (decision.scope, decision.subject, decision.tenant) == (scope, subject, tenant)


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ({}, "needs a scope label"),
        ({"scope": "user", "subject": "bob"}, "unknown scope 'user'"),
        ({"scope": "principal"}, "needs the subject in a principal label or a subject label"),
        ({"scope": "session", "principal": "bob"}, "session or session_id label"),
        ({"scope": "principal", "principal": "bob", "subject": "eve"}, "more than one subject (bob, eve)"),
        ({"scope": "principal", "principal": "bob", "unblock_on_resolve": "maybe"}, "must be true or false"),
    ],
)
def test_unusable_labels_are_errors(labels: dict[str, str], expected: str) -> None:
    result = accept(make_receiver(), single({"action": "block", **labels}))
    assert result.decisions == [] and result.ignored == []
    assert len(result.errors) == 1 and expected in result.errors[0]


@pytest.mark.parametrize(
    ("annotations", "reason"),
    [
        ({"description": "long story"}, "Grafana alert Risky: long story"),
        ({"summary": "short", "description": "long story"}, "Grafana alert Risky: short"),
        ({}, "Grafana alert Risky"),
    ],
)
def test_reason(annotations: dict[str, str], reason: str) -> None:
    labels = {"alertname": "Risky", "action": "block", "scope": "tool", "tool": "x"}
    assert accept(make_receiver(), single(labels, annotations=annotations)).decisions[0].reason == reason


@pytest.mark.parametrize("action", ["unblock", "page", ""])
def test_alerts_without_action_block_are_ignored(action: str) -> None:
    labels = {"scope": "principal", "principal": "mallory", "alertname": "Slow"}
    if action:
        labels["action"] = action
    result = accept(make_receiver(), single(labels))
    assert result.decisions == [] and result.errors == []
    assert len(result.ignored) == 1 and "alerts[0] (Slow)" in result.ignored[0]
    assert (f"action={action}" if action else "no action label") in result.ignored[0]


# --- resolved → unblock ------------------------------------------------------------------------


def test_resolved_alert_lifts_the_block_it_made() -> None:
    receiver = make_receiver()
    block = accept(receiver, fixture("firing-block-principal.json")).decisions[0]
    later = NOW_US + 29 * 60 * 1_000_000
    result = accept(receiver, fixture("resolved-block-principal.json"), now_us=later)
    assert result.decisions == [
        Decision(
            ts=later,
            decision_id="decision-2",
            action=DecisionAction.UNBLOCK,
            scope=block.scope,
            subject=block.subject,
            tenant=block.tenant,
            reason=f"resolved: {block.reason}",
            source=DecisionSource.GRAFANA_ALERT,
            actor="mcpgw-block",
            expires_at=None,
        )
    ]
    assert block.compaction_key() == result.decisions[0].compaction_key()
    # Grafana repeats the resolved notification; it lifts nothing twice.
    again = accept(receiver, fixture("resolved-block-principal.json"), now_us=later)
    assert again.decisions == [] and again.duplicates == 1


def test_resolved_alert_without_a_remembered_block_is_ignored() -> None:
    result = accept(make_receiver(), fixture("resolved-block-principal.json"))
    assert result.decisions == [] and result.errors == []
    assert len(result.ignored) == 1 and "expires at its TTL" in result.ignored[0]


def test_resolved_alert_does_not_lift_a_block_made_by_another_alert() -> None:
    receiver = make_receiver()
    accept(receiver, single({"action": "block", "scope": "principal", "principal": "mallory", "alertname": "A"}))
    other = single(
        {"action": "block", "scope": "principal", "principal": "mallory", "alertname": "B"}, status="resolved"
    )
    result = accept(receiver, other)
    assert result.decisions == [] and "made no block" in result.ignored[0]


def test_unblock_on_resolve_false_keeps_the_block() -> None:
    receiver = make_receiver()
    labels = {"action": "block", "scope": "server", "server": "notes", "unblock_on_resolve": "false"}
    assert accept(receiver, single(labels)).decisions[0].action is DecisionAction.BLOCK
    result = accept(receiver, single(labels, status="resolved"))
    assert result.decisions == [] and "unblock_on_resolve=false" in result.ignored[0]


def test_refiring_after_resolve_blocks_again() -> None:
    receiver = make_receiver()
    labels = {"action": "block", "scope": "tool", "tool": "fs__delete"}
    accept(receiver, single(labels))
    accept(receiver, single(labels, status="resolved"))
    refired = accept(receiver, single(labels, starts_at="2026-05-04T10:00:00Z"))
    assert [d.action for d in refired.decisions] == [DecisionAction.BLOCK]
    resolved_again = accept(receiver, single(labels, status="resolved", starts_at="2026-05-04T10:00:00Z"))
    assert [d.action for d in resolved_again.decisions] == [DecisionAction.UNBLOCK]


# --- deduplication -----------------------------------------------------------------------------


def test_repeated_firing_notification_makes_no_new_decision() -> None:
    receiver = make_receiver()
    assert len(accept(receiver, fixture("firing-block-principal.json")).decisions) == 1
    repeat = accept(receiver, fixture("firing-block-principal.json"), now_us=NOW_US + 4 * 3_600_000_000)
    assert repeat == Accepted(decisions=[], duplicates=1, ignored=[], errors=[])


def test_dedup_compares_start_instants_not_spellings() -> None:
    receiver = make_receiver()
    labels = {"action": "block", "scope": "tool", "tool": "x"}
    accept(receiver, single(labels, starts_at="2026-05-04T09:12:30Z"))
    same_instant = accept(receiver, single(labels, starts_at="2026-05-04T11:12:30.000000000+02:00"))
    assert same_instant.decisions == [] and same_instant.duplicates == 1


def test_duplicate_within_one_batch() -> None:
    payload = fixture("firing-block-principal.json")
    payload["alerts"].append(copy.deepcopy(payload["alerts"][0]))
    result = accept(make_receiver(), payload)
    assert len(result.decisions) == 1 and result.duplicates == 1


def test_dedup_memory_is_bounded() -> None:
    receiver = make_receiver(capacity=2)
    payloads = [single({"action": "block", "scope": "tool", "tool": f"t{i}"}) for i in range(3)]
    for payload in payloads:
        assert len(accept(receiver, payload).decisions) == 1
    assert accept(receiver, payloads[2]).duplicates == 1
    # The oldest fell out of the LRU, so it is no longer recognised.
    assert len(accept(receiver, payloads[0]).decisions) == 1


def test_rejected_requests_leave_no_dedup_memory() -> None:
    receiver = make_receiver()
    payload = fixture("firing-block-principal.json")
    body = encode(payload)
    assert isinstance(receiver.receive(body, signed(body, NOW_S - 3600), NOW_US), Rejected)
    assert isinstance(receiver.receive(body, {}, NOW_US), Rejected)
    # A batch whose first alert is valid but whose second is malformed is refused whole.
    bad = copy.deepcopy(payload)
    bad["alerts"].append({"status": "firing", "labels": {}})
    bad_body = encode(bad)
    result = receiver.receive(bad_body, signed(bad_body), NOW_US)
    assert isinstance(result, Rejected) and result.status == 400
    accepted = accept(receiver, payload)
    assert len(accepted.decisions) == 1 and accepted.duplicates == 0


def test_failed_alerts_are_not_remembered() -> None:
    receiver = make_receiver()
    payload = single({"action": "block", "scope": "principal", "principal": "m", "ttl": "soon"})
    assert accept(receiver, payload).errors
    again = accept(receiver, payload)
    assert again.duplicates == 0 and again.errors


def test_forget_lets_grafanas_retry_through_after_a_failed_publish() -> None:
    receiver = make_receiver()
    first = accept(receiver, fixture("firing-block-principal.json"))
    receiver.forget(first)
    retry = accept(receiver, fixture("firing-block-principal.json"))
    assert len(retry.decisions) == 1 and retry.duplicates == 0

    unblock = accept(receiver, fixture("resolved-block-principal.json"))
    assert [d.action for d in unblock.decisions] == [DecisionAction.UNBLOCK]
    receiver.forget(unblock)
    # The block is remembered again, so the retried resolved notification still lifts it.
    retried = accept(receiver, fixture("resolved-block-principal.json"))
    assert [d.action for d in retried.decisions] == [DecisionAction.UNBLOCK]


def test_forgotten_block_is_not_lifted_by_its_resolve() -> None:
    receiver = make_receiver()
    receiver.forget(accept(receiver, fixture("firing-block-principal.json")))
    # The block never reached the log, so there is nothing to lift.
    result = accept(receiver, fixture("resolved-block-principal.json"))
    assert result.decisions == [] and "made no block" in result.ignored[0]
