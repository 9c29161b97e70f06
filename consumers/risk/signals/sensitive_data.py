"""Secrets and personal data in tool arguments and results: `secret_in_payload`, `pii_in_payload`.

Secrets: the gateway redacts them before anything is stored (schemas/redaction.py), so the stored
payload carries a `[REDACTED:<kind>]` marker where one was; counting the markers reuses the
gateway's detectors at the cost of one substring test. `json_path` markers are not counted: they
are the operator's configured redactions, present whether or not the value was a secret. With the
gateway's patterns off, `rescan` runs the same patterns (schemas/secrets.py) here instead.
PII: schemas has no detector for it; `pii.find_pii` does, each kind weighted by its setting.
"""

from __future__ import annotations

import re

from consumers.risk.settings import PiiInPayloadSettings, SecretInPayloadSettings
from consumers.risk.signals.hit import Hit
from consumers.risk.signals.pii import find_pii
from schemas.secrets import patterns_in

SECRET = "secret_in_payload"
PII = "pii_in_payload"
_MARKER = re.compile(rb"\[REDACTED:([a-z_]+)\]")
_CONFIGURED = b"json_path"


def redacted_secrets(payload: bytes, redactions: int, truncated: bool) -> int:
    """How many secrets the gateway redacted from this message, by its markers."""
    if not redactions or b"[REDACTED:" not in payload:
        # A cut payload may have lost its markers; the event's count still says they were there.
        return redactions if truncated else 0
    kinds = _MARKER.findall(payload)
    secrets = sum(1 for k in kinds if k != _CONFIGURED)
    if truncated:
        secrets = max(secrets, redactions - (len(kinds) - secrets))
    return secrets


def unredacted_secrets(payload: bytes) -> int:
    """Secret-shaped strings the gateway's patterns would have redacted (when they are off)."""
    return sum(len(p.regex_bytes.findall(payload)) for p in patterns_in(payload))


class SensitiveData:
    name = "sensitive_data"
    signals = (SECRET, PII)

    def __init__(self, secrets: SecretInPayloadSettings, pii: PiiInPayloadSettings) -> None:
        self.secrets = secrets
        self.pii = pii
        self._pii_strength = {"card": pii.card, "ssn": pii.ssn, "iban": pii.iban, "email": pii.email,
                              "phone": pii.phone}  # fmt: skip

    def scan(self, payload: bytes, redactions: int = 0, truncated: bool = False) -> list[Hit]:
        """Hits for one message's stored payload and the event's redaction count."""
        hits: list[Hit] = []
        secrets = self.secrets
        if secrets.enabled and (redactions or secrets.rescan):
            count = redacted_secrets(payload, redactions, truncated)
            if secrets.rescan:
                count += unredacted_secrets(payload)
            if count:
                hits.append(Hit(SECRET, min(1.0, count * secrets.strength_per_secret)))
        if self.pii.enabled:
            found = find_pii(payload if len(payload) <= self.pii.max_scan_bytes else payload[: self.pii.max_scan_bytes])
            if found:
                strength = sum(self._pii_strength[kind] * n for kind, n in found.items())
                if strength > 0.0:
                    hits.append(Hit(PII, min(1.0, strength)))
        return hits
