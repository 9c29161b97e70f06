"""Redaction: secrets are taken out of payloads and headers before anything is written. Pure.

Three rules replace a value with "[REDACTED:<kind>]":

- configured JSON paths (`params.arguments.password`, `result.content[*].text`): kind `json_path`;
- keys that name a secret (`password`, `api_key`, `clientSecret`, `x-auth-token`, …): string and
  number values, kind `secret_field`; objects and arrays under such keys are searched instead
  of replaced, so that tool input schemas describing a `password` property stay intact;
- secret-shaped text anywhere in a string (API keys, JWTs, PEM private keys, bearer tokens):
  the match only, kind by pattern (`schemas.secrets.SECRET_KINDS`).

A payload nothing matched is returned as the very same bytes object (byte-exact evidence). A
redacted payload is the parsed JSON serialized again, compactly: key order and values kept
(integers of any size, floats by shortest repr, non-ASCII as UTF-8), duplicate keys collapsed
to the last (as JSON-RPC peers read them). Bytes that are not JSON (malformed messages are
audited too) get the pattern rules and the secret-key rule applied to the text directly.

The hash the event carries is of what is stored, i.e. after redaction (see `schemas.payload`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from schemas.jsonpath import JsonPath
from schemas.secrets import (
    REDACTED,
    SECRET_KINDS,
    SecretPattern,
    is_secret_key,
    redact_bytes,
    redact_text,
    secret_prescan,
)

__all__ = [
    "DENIED_HEADERS",
    "REDACTED",
    "SECRET_KINDS",
    "is_secret_key",
    "redact_headers",
    "redact_payload",
    "redact_scanned",
    "redact_text",
]

DENIED_HEADERS = frozenset({
    "authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "api-key",
    "x-auth-token", "x-access-token", "x-amz-security-token", "x-goog-api-key", "x-csrf-token",
})  # fmt: skip

_MARKER = re.compile(r"\[REDACTED:[a-z_]+\]")
_TEXT_KEY_VALUE = re.compile(rb'"((?:[^"\\]|\\.){1,80})"(\s*:\s*)("(?:[^"\\]|\\.)*(?:"|$)|-?[0-9][0-9.eE+-]*)')


def redact_payload(raw: bytes, json_paths: Sequence[JsonPath] = (), *, patterns: bool = True) -> tuple[bytes, int]:
    """`raw` with secrets replaced, and how many values were replaced; `raw` itself if none.

    `patterns=False` turns off the secret-pattern and secret-key rules; paths still apply.
    """
    active, keys = secret_prescan(raw) if patterns else ((), False)
    return redact_scanned(raw, json_paths, active, keys)


def redact_scanned(
    raw: bytes, json_paths: Sequence[JsonPath], active: Sequence[SecretPattern], keys: bool
) -> tuple[bytes, int]:
    """`redact_payload`, given what its prescan found in `raw`: `secret_prescan(raw)`, or `((), False)`
    with the pattern and key rules off."""
    if not json_paths and not active and not keys:
        return raw, 0
    try:
        tree = json.loads(raw)
    except (ValueError, RecursionError):
        return _redact_non_json(raw, active, keys)
    redactor = _Redactor(active, keys)
    for message in tree if isinstance(tree, list) else [tree]:  # a JSON-RPC batch: each message
        for path in json_paths:
            redactor.count += path.replace(message, _redact_path_value)
    if active or keys:
        tree = redactor.walk(tree)
    if not redactor.count:
        return raw, 0
    return _dumps(tree), redactor.count


def redact_headers(
    headers: Mapping[str, str] | Iterable[tuple[str, str]],
    *,
    allow: Iterable[str] | None = None,
    deny: Iterable[str] = (),
    patterns: bool = True,
) -> tuple[list[tuple[str, str]], int]:
    """Headers fit to store, in order, and how many values were redacted.

    Credential headers (`DENIED_HEADERS`, `deny`, and any name `is_secret_key` flags) keep their
    name, to show they were sent, with the value replaced. With `allow`, other headers are
    dropped; an allowed credential header is still redacted: no setting stores a credential.
    """
    allowed = None if allow is None else frozenset(h.lower() for h in allow)
    denied = DENIED_HEADERS | frozenset(h.lower() for h in deny)
    items = headers.items() if isinstance(headers, Mapping) else headers
    out: list[tuple[str, str]] = []
    count = 0
    for name, value in items:
        lower = name.lower()
        if lower in denied or is_secret_key(lower):
            out.append((name, REDACTED.format("header")))
            count += 1
        elif allowed is None or lower in allowed:
            if patterns:
                value, n = redact_text(value)
                count += n
            out.append((name, value))
    return out, count


def _is_marker(value: str) -> bool:
    """Already redacted (by an earlier rule): counted once. Exact match only, so that a value merely
    starting like a marker cannot smuggle a secret past redaction."""
    return _MARKER.fullmatch(value) is not None


def _redact_path_value(value: Any) -> tuple[Any, int]:
    if value is None or (isinstance(value, str) and _is_marker(value)):
        return value, 0
    return REDACTED.format("json_path"), 1


def _is_secret_value(value: Any) -> bool:
    if isinstance(value, bool) or value is None:
        return False
    if isinstance(value, str):
        return bool(value) and not _is_marker(value)
    return isinstance(value, int | float)


class _Redactor:
    __slots__ = ("count", "keys", "patterns")

    def __init__(self, patterns: Sequence[SecretPattern], keys: bool) -> None:
        self.patterns = patterns
        self.keys = keys
        self.count = 0

    def walk(self, node: Any) -> Any:
        if isinstance(node, str):
            if not self.patterns:
                return node
            new, n = redact_text(node, self.patterns)
            self.count += n
            return new
        if isinstance(node, list):
            return [self.walk(v) for v in node]
        if isinstance(node, dict):
            out = {}
            for key, value in node.items():
                if self.keys and is_secret_key(key) and _is_secret_value(value):
                    out[self.walk(key)] = REDACTED.format("secret_field")
                    self.count += 1
                else:
                    out[self.walk(key)] = self.walk(value)
            return out
        return node


def _redact_non_json(raw: bytes, active: Sequence[SecretPattern], keys: bool) -> tuple[bytes, int]:
    count = 0

    def field(match: re.Match[bytes]) -> bytes:
        nonlocal count
        if not is_secret_key(match[1].decode("utf-8", "replace")) or match[3] in (b'""', b'"'):
            return match[0]
        count += 1
        return b'"' + match[1] + b'"' + match[2] + b'"' + REDACTED.format("secret_field").encode() + b'"'

    text = _TEXT_KEY_VALUE.sub(field, raw) if keys else raw
    text, n = redact_bytes(text, active)
    count += n
    return (text, count) if count else (raw, 0)


def _dumps(tree: Any) -> bytes:
    try:
        return json.dumps(tree, ensure_ascii=False, separators=(",", ":")).encode()
    except UnicodeEncodeError:  # lone surrogates from \ud800-style escapes: keep them escaped
        return json.dumps(tree, separators=(",", ":")).encode()
