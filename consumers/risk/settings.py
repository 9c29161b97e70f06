"""The `risk:` section of gateway.yaml: every signal's switch, weight and parameters, and the block rule.

A signal's contribution to a subject's score is `weight * strength` (strength 0..1), never more than
its weight, decaying with `half_life_s`; the score is the sum, clamped to 0..100. Each signal's
section is named as the signal is named in scores' `reasons` (`request_rate`, `rare_tool`, …).
The defaults are tuned so that a burst of ~200 calls in a few seconds from a principal with a
quieter history, or one tool result carrying a hidden directive in invisible Unicode, blocks its
principal on its own, while ordinary use (a few calls per second over varied tools, now and then
personal data, a secret or an exfiltration-shaped sequence) stays below the threshold: the weak
signals (`rare_tool`, `pii_in_payload`, `secret_in_payload`) and `sensitive_sequence` block only
together, or beside a strong one. A tool is blocked (for everyone) on its definition: a hidden
directive in it, or a change after first sight beside any marker; a changed definition alone
(`tool_drift`, 60) takes `tool_blocks.threshold: 60`.
"""

from __future__ import annotations

import re
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _compiles(patterns: tuple[str, ...]) -> tuple[str, ...]:
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"{pattern!r} is not a valid regular expression: {exc}") from None
    return patterns


class RequestRateSettings(_Section):
    """Request-rate anomaly: the current rate (EWMA) against the principal's own baseline (z-score)."""

    enabled: bool = True
    weight: float = Field(90.0, ge=0, le=100)  # at full strength a burst alone crosses the default threshold
    window_s: float = Field(2.0, gt=0)  # the current rate is an exponential average over about this long
    bucket_s: float = Field(1.0, gt=0)  # the baseline learns from per-bucket request counts
    baseline_half_life_s: float = Field(600.0, gt=0)  # how quickly the baseline forgets
    min_rate_per_s: float = Field(10.0, ge=0)  # below this rate the signal never fires, whatever the baseline
    full_rate_per_s: float = Field(30.0, gt=0)  # strength 1 from this rate on (if also z >= z_full)
    z_min: float = Field(3.0, ge=0)  # deviations from the baseline below this are normal
    z_full: float = Field(6.0, gt=0)
    std_floor_per_s: float = Field(1.0, gt=0)  # a quiet principal's tiny variance does not make every call a spike
    warmup_s: float = Field(60.0, ge=0)  # a principal first seen less long ago has no baseline yet: never fires

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.full_rate_per_s <= self.min_rate_per_s:
            raise ValueError("full_rate_per_s must be above min_rate_per_s")
        if self.z_full <= self.z_min:
            raise ValueError("z_full must be above z_min")
        return self


class RareToolSettings(_Section):
    """A tool this principal (almost) never calls, once the principal has a history to judge by."""

    enabled: bool = True
    weight: float = Field(20.0, ge=0, le=100)
    min_history: int = Field(50, ge=1)  # calls the principal must have made before anything counts as rare
    rare_fraction: float = Field(0.01, gt=0, lt=1)  # a tool under this share of the principal's calls is rare
    max_tools_per_principal: int = Field(128, ge=1)  # the least-used are forgotten beyond this


# Tool names are matched lowercased and snake_cased (`readFile` -> `read_file`), by regex search.
DEFAULT_SENSITIVE_TOOLS = (
    r"read_?(?:multiple_|text_)?files?", r"get_?file", r"secret", r"credential", r"passw", r"vault",
    r"keychain|keyring", r"(?:^|_)(?:sql|query|db_query|database_query|run_query|execute_query)(?:_|$)",
    r"(?:read|get|search|list)_(?:e?mails?|inbox|messages)", r"env(?:ironment)?_var", r"private",
    r"(?:^|_)(?:ssh|api)_keys?(?:_|$)",
)  # fmt: skip
DEFAULT_OUTBOUND_TOOLS = (
    r"(?:^|_)send(?:_|$)", r"(?:^|_)(?:fetch|post|upload|webhook|curl|wget|publish|tweet|exfiltrate)(?:_|$)",
    r"(?:^|_)http(?:s|_request|_post|_get)?(?:_|$)", r"(?:^|_)(?:e?mail|sms)_(?:send|compose)", r"(?:^|_)share(?:_|$)",
    r"(?:^|_)(?:put|write)_(?:s3|bucket|blob|gist|paste)",
)  # fmt: skip


class SensitiveSequenceSettings(_Section):
    """Reading sensitive data, then calling an outbound tool within `window_s` in the same session."""

    enabled: bool = True
    weight: float = Field(40.0, ge=0, le=100)  # common in honest work too: takes a second signal to block
    window_s: float = Field(300.0, gt=0)
    resource_reads_are_sensitive: bool = True  # every resources/read counts as a sensitive read
    habituate: bool = True  # a (read, outbound tool) pair the principal made n times before counts 1/(1+n)
    sensitive_tools: tuple[str, ...] = DEFAULT_SENSITIVE_TOOLS
    outbound_tools: tuple[str, ...] = DEFAULT_OUTBOUND_TOOLS

    _check = field_validator("sensitive_tools", "outbound_tools")(_compiles)


class InjectionMarkerSettings(_Section):
    """Hidden directives and invisible Unicode in what upstreams return (tool results, tool definitions)."""

    enabled: bool = True
    weight: float = Field(90.0, ge=0, le=100)  # a directive in invisible Unicode is strength 1: a block alone
    # Extra directive phrases (regex, matched against lowercased text), each worth `extra_strength`.
    extra_patterns: tuple[str, ...] = ()
    extra_strength: float = Field(0.5, ge=0, le=1)
    max_scan_bytes: int = Field(256 * 1024, ge=1024)  # a larger payload is scanned up to here

    _check = field_validator("extra_patterns")(_compiles)


class SecretInPayloadSettings(_Section):
    """Secrets in tool arguments and results, as the gateway's redaction found them (its markers)."""

    enabled: bool = True
    weight: float = Field(30.0, ge=0, le=100)
    strength_per_secret: float = Field(0.5, ge=0, le=1)
    # Run schemas.secrets' patterns over payloads too: only useful when the gateway's redaction
    # patterns are off (payload policy `patterns: false`), otherwise they find nothing new.
    rescan: bool = False


class PiiInPayloadSettings(_Section):
    """Personal data in tool arguments and results: cards (Luhn), IBANs (mod 97), US SSNs, emails, phones."""

    enabled: bool = True
    weight: float = Field(20.0, ge=0, le=100)
    card: float = Field(0.5, ge=0, le=1)  # strength per item found, by kind; 0 turns a kind off
    ssn: float = Field(0.5, ge=0, le=1)
    iban: float = Field(0.3, ge=0, le=1)
    email: float = Field(0.05, ge=0, le=1)
    phone: float = Field(0.05, ge=0, le=1)
    max_scan_bytes: int = Field(64 * 1024, ge=1024)


class AuthFailuresSettings(_Section):
    """Bursts of unauthenticated refusals from one client address (scored, never blocked: no address scope)."""

    enabled: bool = True
    weight: float = Field(80.0, ge=0, le=100)
    window_s: float = Field(60.0, gt=0)  # failures are counted with exponential decay over about this long
    min_failures: float = Field(5.0, ge=1)
    full_failures: float = Field(20.0, gt=1)

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.full_failures <= self.min_failures:
            raise ValueError("full_failures must be above min_failures")
        return self


class ToolDriftSettings(_Section):
    """A tool whose definition (description, schema, annotations) changed after the engine first saw it."""

    enabled: bool = True
    weight: float = Field(60.0, ge=0, le=100)


class ToolBlockSettings(_Section):
    """Blocking one server's tool for every caller when the tool's own score reaches the threshold.

    A tool's score comes from its definition (`tool_drift`, `injection_marker` in its description
    or schema) and from injection markers in its results. Only the definition can block the tool
    unless `from_results` is set: a result carries what the caller asked for (an echo, a fetched
    page, a mail), so counting results would let any one caller cut a shared tool off for everyone;
    the caller who received the result is scored, and blocked, as a principal either way.
    """

    enabled: bool = True
    threshold: int | None = Field(None, ge=1, le=100)  # None: the principals' `threshold`
    from_results: bool = False  # injection markers in a tool's results may block the tool too


class RiskSettings(_Section):
    """The whole `risk:` section; every field has a default, so `risk: {}` (or no section) is valid."""

    threshold: int = Field(80, ge=1, le=100)  # a principal (or tool) whose score reaches this is blocked
    ttl_s: float = Field(900.0, gt=0)  # how long a block lasts; re-blocked after if still over the threshold
    half_life_s: float = Field(300.0, gt=0)  # every contribution halves over this long
    # Scored, never blocked: principals (shared or system identities) and tools as `server/tool`.
    never_block: tuple[str, ...] = ("anonymous", "gateway")
    reason_floor: float = Field(2.0, ge=0)  # a signal contributing less is not named in `reasons`, nor fires
    # Scores are published when a signal fired (at most once per `emit_interval_s` per subject
    # unless a new reason appears) or when the score moved by `emit_delta` since the last one.
    emit_delta: int = Field(5, ge=1, le=100)
    emit_interval_s: float = Field(1.0, ge=0)
    max_evidence: int = Field(10, ge=1)  # event ids a block decision cites
    # State bounds: the least recently active subject is forgotten beyond these.
    max_principals: int = Field(50_000, ge=1)
    max_sessions: int = Field(100_000, ge=1)
    max_tools: int = Field(20_000, ge=1)
    max_clients: int = Field(20_000, ge=1)
    dedup_window: int = Field(16_384, ge=0)  # recent event ids remembered, so a redelivered event counts once

    request_rate: RequestRateSettings = RequestRateSettings()
    rare_tool: RareToolSettings = RareToolSettings()
    sensitive_sequence: SensitiveSequenceSettings = SensitiveSequenceSettings()
    injection_marker: InjectionMarkerSettings = InjectionMarkerSettings()
    secret_in_payload: SecretInPayloadSettings = SecretInPayloadSettings()
    pii_in_payload: PiiInPayloadSettings = PiiInPayloadSettings()
    auth_failures: AuthFailuresSettings = AuthFailuresSettings()
    tool_drift: ToolDriftSettings = ToolDriftSettings()
    tool_blocks: ToolBlockSettings = ToolBlockSettings()
