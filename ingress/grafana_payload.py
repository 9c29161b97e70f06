"""Grafana's webhook body and an alert's labels, read into what the receiver acts on (pure, no I/O).

The shapes follow grafana/alerting (see ingress/grafana_alerts.py for the sources): a body with
receiver, alerts and truncatedAlerts; each alert with status, labels, annotations, fingerprint and
startsAt. Every problem comes back as a message naming where it is and what to write instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from schemas.decisions import DecisionScope

_SCOPES = ", ".join(scope.value for scope in DecisionScope)
_SECONDS = re.compile(r"\d+(?:\.\d*)?|\.\d+", re.ASCII)
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h|d|w)", re.ASCII)
_UNIT_US = {
    "ns": 0.001,
    "us": 1,
    "µs": 1,
    "μs": 1,
    "ms": 1_000,
    "s": 1_000_000,
    "m": 60_000_000,
    "h": 3_600_000_000,
    "d": 86_400_000_000,
    "w": 604_800_000_000,
}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}


@dataclass(slots=True, frozen=True)
class Alert:
    where: str  # how messages name it: alerts[i] plus alertname
    status: str
    labels: dict[str, str]
    annotations: dict[str, str]
    fingerprint: str
    starts_at_us: int


@dataclass(slots=True, frozen=True)
class AlertBlock:
    scope: DecisionScope
    subject: str
    tenant: str | None
    reason: str


def block_of(alert: Alert) -> AlertBlock | str:
    labels = alert.labels
    scope_name = labels.get("scope", "").strip().lower()
    if not scope_name:
        return f"action=block needs a scope label: one of {_SCOPES}"
    try:
        scope = DecisionScope(scope_name)
    except ValueError:
        return f"unknown scope {scope_name!r}: use one of {_SCOPES}"
    # Alert rules over the audit tables naturally yield a session_id label, as the column is named.
    named = (scope.value, "session_id") if scope is DecisionScope.SESSION else (scope.value,)
    candidates = {labels[name].strip() for name in (*named, "subject") if labels.get(name, "").strip()}
    if not candidates:
        return f"scope={scope} needs the subject in a {' or '.join(named)} label or a subject label"
    if len(candidates) > 1:
        return f"scope={scope} names more than one subject ({', '.join(sorted(candidates))}); keep one label"
    tenant = labels.get("tenant", "").strip() or None
    return AlertBlock(
        scope=scope,
        subject=candidates.pop(),
        tenant=None if scope is DecisionScope.TENANT else tenant,
        reason=reason_of(alert),
    )


def reason_of(alert: Alert) -> str:
    name = alert.labels.get("alertname", "").strip()
    text = alert.annotations.get("summary", "").strip() or alert.annotations.get("description", "").strip()
    if name and text:
        return f"Grafana alert {name}: {text}"
    return f"Grafana alert: {text}" if text else f"Grafana alert {name}".rstrip()


def ttl_us(value: str, default_s: float) -> int | str:
    """Seconds (`600`) or a Go/Prometheus duration (`10m`, `1h30m`, `1d`) in µs, or what is wrong."""
    text = value.strip()
    if not text:
        return int(default_s * 1_000_000)
    if _SECONDS.fullmatch(text):
        total = float(text) * 1_000_000
    else:
        parts = _DURATION_PART.findall(text)
        if not parts or "".join(number + unit for number, unit in parts) != text:
            return f"ttl={value} is not a duration: give seconds (600) or a duration like 10m, 1h30m or 1d"
        total = sum(float(number) * _UNIT_US[unit] for number, unit in parts)
    if total < 1_000_000:
        return f"ttl={value} is shorter than one second"
    return int(total)


def flag(value: str, *, default: bool) -> bool | None:
    text = value.strip().lower()
    if not text:
        return default
    return True if text in _TRUE else False if text in _FALSE else None


def parse_webhook(body: bytes) -> tuple[str, list[Alert], int] | str:
    """(receiver, alerts, truncatedAlerts), or why the body is not Grafana's webhook payload."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return f"the body is not JSON ({exc}); the gateway expects Grafana's webhook payload"
    if not isinstance(payload, dict):
        return f"the body is a JSON {type(payload).__name__}, not Grafana's webhook object"
    if "alerts" not in payload:
        return "the body has no alerts array: is the contact point a webhook with the default payload?"
    raw_alerts = payload["alerts"]
    if not isinstance(raw_alerts, list):
        return "alerts must be an array"
    receiver = payload.get("receiver", "")
    if not isinstance(receiver, str):
        return "receiver must be a string"
    truncated = payload.get("truncatedAlerts", 0)
    if not isinstance(truncated, int) or truncated < 0:
        return f"truncatedAlerts must be a count of alerts (got {truncated!r})"
    alerts: list[Alert] = []
    for index, raw in enumerate(raw_alerts):
        alert = _parse_alert(index, raw)
        if isinstance(alert, str):
            return alert
        alerts.append(alert)
    return receiver.strip(), alerts, truncated


def _parse_alert(index: int, raw: object) -> Alert | str:
    at = f"alerts[{index}]"
    if not isinstance(raw, dict):
        return f"{at} must be an object"
    labels = _string_map(raw, "labels", at, required=True)
    if isinstance(labels, str):
        return labels
    annotations = _string_map(raw, "annotations", at, required=False)
    if isinstance(annotations, str):
        return annotations
    status = raw.get("status")
    if status not in ("firing", "resolved"):
        return f"{at}.status must be 'firing' or 'resolved' (got {status!r})"
    fingerprint = raw.get("fingerprint")
    if not isinstance(fingerprint, str) or not fingerprint.strip():
        return f"{at}.fingerprint is missing"
    starts_at = raw.get("startsAt")
    if not isinstance(starts_at, str):
        return f"{at}.startsAt is missing"
    try:
        moment = datetime.fromisoformat(starts_at)
    except ValueError:
        return f"{at}.startsAt is not an RFC 3339 time (got {starts_at[:40]!r})"
    if moment.tzinfo is None:
        return f"{at}.startsAt has no time zone (got {starts_at[:40]!r})"
    # Whole µs since the epoch, exact (no float): the same instant however Grafana wrote it.
    starts_at_us = (moment - _EPOCH) // _MICROSECOND
    name = labels.get("alertname", "")
    where = f"{at} ({name})" if name else at
    return Alert(where, status, labels, annotations, fingerprint.strip(), starts_at_us)


def _string_map(raw: dict[str, Any], key: str, at: str, *, required: bool) -> dict[str, str] | str:
    value = raw.get(key)
    if value is None:
        return f"{at}.{key} is missing" if required else {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        return f"{at}.{key} must be an object of strings"
    return value
