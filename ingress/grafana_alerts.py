"""Grafana unified-alerting webhook → block/unblock decisions (pure, no I/O).

What Grafana sends, from grafana/alerting (the library Grafana's alertmanager runs):

- `receivers/webhook/v1/webhook.go` (`webhookMessage`): the body is `templates.ExtendedData`
  (`templates/template_data.go`: receiver, status, alerts, groupLabels, commonLabels,
  commonAnnotations, externalURL) plus version "1", groupKey, truncatedAlerts, orgId, title,
  state and message. Each alert (`ExtendedAlert`) has status, labels, annotations, startsAt,
  endsAt (Go RFC 3339; zero time for firing alerts), generatorURL, fingerprint, silenceURL,
  dashboardURL, panelURL, values and valueString.
- `http/hmac.go` (`HMACRoundTripper.sign`): the signature is lowercase hex HMAC-SHA256 keyed with
  the secret's UTF-8 bytes. With a timestamp header configured, Grafana sets it to the Unix time
  in seconds (`strconv.FormatInt(now.Unix(), 10)`) and signs `timestamp + ":" + body`; without
  one it signs the body alone. The signature header defaults to `X-Grafana-Alerting-Signature`;
  the timestamp header has no default (`receivers/webhook/v1/config.go`, `hmacConfig`).

We insist on the timestamp: without it a captured webhook could be replayed forever.

Mapping (docs/grafana-webhook.md is the operator's version): a firing alert labelled
`action=block` becomes a BLOCK of `scope` (principal|session|tenant|tool|server) on the subject in
the label named like the scope (`session_id` also works for sessions, as the audit columns are
named) or in `subject`; `tenant` confines it, `ttl` bounds it. When that alert resolves, the
block it made is lifted, unless it carries `unblock_on_resolve=false`.

Resolving unblocks only a block this receiver remembers making for the alert's fingerprint.
That memory is per process: after a restart, or when the firing went to another replica, a
resolved alert is ignored (with why) and the block lapses at its TTL, which every alert block
has. Failing towards the block is deliberate: lifting on labels alone could end an operator's
block of the same subject that no alert made.

Deduplication is on (fingerprint, startsAt, status) in a bounded LRU, so Grafana's repeat
notifications, and replays inside the signature's freshness window, make no new decisions.
Only alerts that produced a decision are remembered; rejected requests and alerts that were
ignored or failed leave no trace. If the decisions cannot be published, `forget` undoes what
`receive` remembered so Grafana's retry is not mistaken for a duplicate.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from ingress.config import GrafanaWebhookConfig
from ingress.grafana_payload import Alert, AlertBlock, block_of, flag, parse_webhook, ttl_us
from schemas.decisions import Decision, DecisionAction, DecisionSource

_UNIX_SECONDS = re.compile(r"[0-9]{1,12}")  # 12 digits reach the year 33658; more is not from Grafana
_INT64_MAX = 2**63 - 1


@dataclass(slots=True, frozen=True)
class Rejected:
    """Refuse the whole request: 401 (signature or timestamp) or 400 (not Grafana's payload)."""

    status: int
    message: str


@dataclass(slots=True)
class Accepted:
    decisions: list[Decision]
    duplicates: int  # alerts already turned into a decision by an earlier notification
    ignored: list[str]  # alerts the gateway does not act on, each with why
    errors: list[str]  # alerts meant to act that could not, each with what to fix


def sign(
    secret: str,
    body: bytes,
    timestamp: int,
    *,
    signature_header: str = "X-Grafana-Alerting-Signature",
    timestamp_header: str = "X-Grafana-Alerting-Signature-Timestamp",
) -> dict[str, str]:
    """The headers Grafana's webhook contact point sends for `body` at `timestamp` (Unix seconds)."""
    stamp = str(timestamp)
    return {timestamp_header: stamp, signature_header: _signature(secret, stamp, body)}


def _signature(secret: str, stamp: str, body: bytes) -> str:
    return hmac.new(secret.encode(), stamp.encode() + b":" + body, hashlib.sha256).hexdigest()


_DedupKey = tuple[str, int, str]
_K = TypeVar("_K")
_V = TypeVar("_V")


@dataclass(slots=True, frozen=True)
class _Change:
    """What one decision changed in the receiver's memory, so `forget` can put it back."""

    dedup_key: _DedupKey
    fingerprint: str
    block_before: AlertBlock | None


class GrafanaAlertReceiver:
    def __init__(self, settings: GrafanaWebhookConfig, new_id: Callable[[], str], dedup_capacity: int = 10_000) -> None:
        if not settings.signature_header.strip() or not settings.timestamp_header.strip():
            raise ValueError(
                "admin.grafana.signature_header and admin.grafana.timestamp_header must both name a header: "
                "the gateway refuses webhooks without a signed timestamp, because they could be replayed"
            )
        if dedup_capacity < 1:
            raise ValueError(f"dedup_capacity must be at least 1 (got {dedup_capacity})")
        self._settings = settings
        self._new_id = new_id
        self._capacity = dedup_capacity
        self._seen: OrderedDict[_DedupKey, None] = OrderedDict()
        self._blocks: OrderedDict[str, AlertBlock] = OrderedDict()  # fingerprint → the block its firing made
        self._journal: OrderedDict[str, _Change] = OrderedDict()  # decision id → its change

    def receive(self, body: bytes, headers: Mapping[str, str], now_us: int) -> Accepted | Rejected:
        refusal = self._authenticate(body, headers, now_us)
        if refusal is not None:
            return refusal
        parsed = parse_webhook(body)
        if isinstance(parsed, str):
            return Rejected(400, parsed)
        receiver, alerts, truncated = parsed
        accepted = Accepted(decisions=[], duplicates=0, ignored=[], errors=[])
        if truncated:
            accepted.ignored.append(
                f"{truncated} alert(s) of this group were left out by the contact point's Max Alerts setting and "
                "never reached the gateway: set Max Alerts to 0 (no limit)"
            )
        for alert in alerts:
            self._apply(alert, receiver or "grafana", now_us, accepted)
        return accepted

    def forget(self, accepted: Accepted) -> None:
        """Undo what `receive` remembered for these decisions; call it when publishing them failed."""
        for decision in reversed(accepted.decisions):
            change = self._journal.pop(decision.decision_id, None)
            if change is None:
                continue
            self._seen.pop(change.dedup_key, None)
            if change.block_before is None:
                self._blocks.pop(change.fingerprint, None)
            else:
                self._blocks[change.fingerprint] = change.block_before

    def _authenticate(self, body: bytes, headers: Mapping[str, str], now_us: int) -> Rejected | None:
        settings = self._settings
        signature = _header(headers, settings.signature_header)
        if not signature:
            return Rejected(
                401,
                f"missing {settings.signature_header} header: give the contact point an HMAC Signature secret "
                "(webhook settings → Optional Webhook settings → HMAC Signature)",
            )
        stamp = _header(headers, settings.timestamp_header)
        if not stamp:
            return Rejected(
                401,
                f"missing {settings.timestamp_header} header: set the contact point's HMAC 'Timestamp header' "
                f"to {settings.timestamp_header}",
            )
        stamp = stamp.strip()
        # Checked before the HMAC: only an ASCII stamp can be encoded the way Grafana signed it.
        if not _UNIX_SECONDS.fullmatch(stamp):
            return Rejected(401, f"{settings.timestamp_header} must be a Unix time in seconds (got {stamp[:40]!r})")
        expected = _signature(settings.secret, stamp, body).encode()
        if not hmac.compare_digest(expected, signature.strip().lower().encode("utf-8", "replace")):
            return Rejected(
                401,
                f"{settings.signature_header} does not match the body: the contact point's HMAC secret must "
                "equal admin.grafana.secret",
            )
        age_us = now_us - int(stamp) * 1_000_000
        limit_us = settings.max_age_s * 1_000_000
        if age_us > limit_us:
            return Rejected(
                401,
                f"the signature is {age_us // 1_000_000} s old, more than admin.grafana.max_age_s "
                f"({settings.max_age_s:g} s): a replayed webhook, or clocks out of sync",
            )
        if -age_us > limit_us:
            return Rejected(
                401,
                f"the signature is dated {-age_us // 1_000_000} s in the future, more than admin.grafana.max_age_s "
                f"({settings.max_age_s:g} s): check the clocks of Grafana and the gateway",
            )
        return None

    def _apply(self, alert: Alert, actor: str, now_us: int, out: Accepted) -> None:
        key: _DedupKey = (alert.fingerprint, alert.starts_at_us, alert.status)
        if key in self._seen:
            self._seen.move_to_end(key)
            out.duplicates += 1
            return
        action = alert.labels.get("action", "").strip()
        if action.lower() != "block":
            why = f"action={action} is not one the gateway acts on" if action else "no action label"
            out.ignored.append(f"{alert.where}: {why} (only action=block)")
            return
        unblock_on_resolve = flag(alert.labels.get("unblock_on_resolve", ""), default=True)
        if unblock_on_resolve is None:
            value = alert.labels["unblock_on_resolve"]
            out.errors.append(f"{alert.where}: unblock_on_resolve={value} must be true or false")
            return
        if alert.status == "firing":
            self._block(alert, key, actor, now_us, out)
        elif not unblock_on_resolve:
            out.ignored.append(f"{alert.where}: resolved; unblock_on_resolve=false keeps its block until it expires")
        else:
            self._unblock(alert, key, actor, now_us, out)

    def _block(self, alert: Alert, key: _DedupKey, actor: str, now_us: int, out: Accepted) -> None:
        block = block_of(alert)
        if isinstance(block, str):
            out.errors.append(f"{alert.where}: {block}")
            return
        ttl = ttl_us(alert.labels.get("ttl", ""), self._settings.default_ttl_s)
        if isinstance(ttl, str):
            out.errors.append(f"{alert.where}: {ttl}")
            return
        if now_us + ttl > _INT64_MAX:
            out.errors.append(f"{alert.where}: ttl={alert.labels['ttl']} is too long")
            return
        decision = self._decide(DecisionAction.BLOCK, block, block.reason, actor, now_us, now_us + ttl)
        self._remember(decision, key, alert.fingerprint, block_after=block)
        out.decisions.append(decision)

    def _unblock(self, alert: Alert, key: _DedupKey, actor: str, now_us: int, out: Accepted) -> None:
        made = self._blocks.get(alert.fingerprint)
        if made is None:
            out.ignored.append(
                f"{alert.where}: resolved, but this gateway process made no block for it (it fired before a "
                "restart, or reached another replica); any block it made expires at its TTL"
            )
            return
        decision = self._decide(DecisionAction.UNBLOCK, made, f"resolved: {made.reason}", actor, now_us, None)
        self._remember(decision, key, alert.fingerprint, block_after=None)
        out.decisions.append(decision)

    def _decide(
        self, action: DecisionAction, block: AlertBlock, reason: str, actor: str, now_us: int, expires_at: int | None
    ) -> Decision:
        return Decision(
            ts=now_us,
            decision_id=self._new_id(),
            action=action,
            scope=block.scope,
            subject=block.subject,
            tenant=block.tenant,
            reason=reason,
            source=DecisionSource.GRAFANA_ALERT,
            actor=actor,
            expires_at=expires_at,
        )

    def _remember(self, decision: Decision, key: _DedupKey, fingerprint: str, block_after: AlertBlock | None) -> None:
        change = _Change(key, fingerprint, self._blocks.get(fingerprint))
        _put(self._journal, decision.decision_id, change, self._capacity)
        _put(self._seen, key, None, self._capacity)
        if block_after is None:
            self._blocks.pop(fingerprint, None)
        else:
            _put(self._blocks, fingerprint, block_after, self._capacity)


def _put(memory: OrderedDict[_K, _V], key: _K, value: _V, capacity: int) -> None:
    memory[key] = value
    memory.move_to_end(key)
    while len(memory) > capacity:
        memory.popitem(last=False)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is not None:
        return value
    # aiohttp's headers are case-insensitive already; plain dicts (tests, other adapters) are not.
    folded = name.casefold()
    return next((v for k, v in headers.items() if k.casefold() == folded), None)
