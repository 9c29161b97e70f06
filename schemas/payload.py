"""Payloads as stored: redacted, hashed, and cut to a prefix when too large. Pure.

What the event's payload columns mean (DESIGN.md §3, `audit.events`):

- `payload`: the message bytes after redaction, exactly; when `payload_truncated`, only the
  first `prefix_bytes` of them. Never dropped, never cut without the flag.
- `payload_sha256`: SHA-256 of the stored payload, whole. For a whole payload,
  `sha256(payload) == payload_sha256`, so evidence can be re-hashed. For a truncated one it is
  the hash of the full (redacted) payload, of which only the prefix is kept; whoever holds the
  original can re-apply the same policy and match it. With no redactions this is the SHA-256 of
  the original bytes as they crossed the wire. It is never a hash of unredacted secrets: such a
  hash would let anyone confirm a guessed secret.
- `payload_size`: length of the full stored payload (the original's length when nothing was
  redacted).
- `redactions`: how many values redaction replaced.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import NamedTuple

from schemas.events import GatewayEvent
from schemas.jsonpath import JsonPath
from schemas.redaction import redact_scanned
from schemas.secrets import may_hold_secret, may_name_secret, patterns_in

DEFAULT_MAX_BYTES = 1 << 20
DEFAULT_PREFIX_BYTES = 64 << 10
_sha256 = hashlib.sha256


@dataclass(frozen=True, slots=True)
class PayloadPolicy:
    max_bytes: int = DEFAULT_MAX_BYTES
    prefix_bytes: int = DEFAULT_PREFIX_BYTES
    json_paths: tuple[str, ...] = ()
    patterns: bool = True
    compiled_paths: tuple[JsonPath, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.max_bytes < 1:
            raise ValueError(f"max_bytes must be positive, not {self.max_bytes}")
        if not 0 <= self.prefix_bytes <= self.max_bytes:
            raise ValueError(f"prefix_bytes must be in 0..max_bytes ({self.max_bytes}), not {self.prefix_bytes}")
        # Parsed once here, so a bad path fails at config load, not on the first message.
        object.__setattr__(self, "compiled_paths", tuple(JsonPath.parse(p) for p in self.json_paths))


DEFAULT_POLICY = PayloadPolicy()


class PreparedPayload(NamedTuple):
    # A tuple, not a frozen dataclass: built for every message, and a frozen dataclass's __init__
    # costs a microsecond more (one object.__setattr__ per field).
    stored: bytes
    sha256: str
    size: int
    redactions: int
    truncated: bool

    def apply_to(self, event: GatewayEvent) -> None:
        event.payload = self.stored
        event.payload_sha256 = self.sha256
        event.payload_size = self.size
        event.redactions = self.redactions
        event.payload_truncated = self.truncated


def prepare_payload(raw: bytes, policy: PayloadPolicy = DEFAULT_POLICY) -> PreparedPayload:
    """The payload columns for message bytes `raw` under `policy` (see the module docstring)."""
    return PreparedPayload._make(payload_columns(raw, policy))


def payload_columns(raw: bytes, policy: PayloadPolicy = DEFAULT_POLICY) -> tuple[bytes, str, int, int, bool]:
    """`prepare_payload` as a plain tuple, for callers that unpack it at once (the recorder, four
    times per tool call): a NamedTuple's `__new__` is a Python frame of its own."""
    # Redact the whole before cutting: paths need the parse, and a cut could split a secret.
    # `redact_payload(raw, paths, patterns=policy.patterns)` with its prescan (`secret_prescan`) taken
    # apart: two frames less for the usual message, with no anchor and no configured path.
    paths = policy.compiled_paths
    if policy.patterns and may_hold_secret(raw):
        full, redactions = redact_scanned(raw, paths, patterns_in(raw), may_name_secret(raw))
    elif paths:
        full, redactions = redact_scanned(raw, paths, (), False)
    else:
        full, redactions = raw, 0  # nothing to look for: what `redact_payload` answers
    digest = _sha256(full).hexdigest()
    if len(full) <= policy.max_bytes:
        return full, digest, len(full), redactions, False
    return full[: policy.prefix_bytes], digest, len(full), redactions, True
