"""schemas/payload.py: payloads whole up to the limit, then size + hash + prefix, flagged."""

from __future__ import annotations

import hashlib
import json

import pytest

from schemas.events import Direction, EventType, GatewayEvent, Kind
from schemas.payload import DEFAULT_MAX_BYTES, DEFAULT_POLICY, PayloadPolicy, payload_columns, prepare_payload
from schemas.redaction import redact_payload


def test_defaults() -> None:
    assert DEFAULT_POLICY.max_bytes == DEFAULT_MAX_BYTES == 1 << 20
    assert 0 < DEFAULT_POLICY.prefix_bytes <= DEFAULT_POLICY.max_bytes
    assert DEFAULT_POLICY.patterns and DEFAULT_POLICY.json_paths == ()


def test_clean_payload_is_stored_whole_and_untouched() -> None:
    raw = b'{"jsonrpc":"2.0","id":1,"result":{}}'
    p = prepare_payload(raw)
    assert p.stored is raw
    assert (p.sha256, p.size, p.redactions, p.truncated) == (hashlib.sha256(raw).hexdigest(), len(raw), 0, False)


def test_hash_is_of_what_is_stored() -> None:
    raw = b'{"params":{"password":"hunter2"}}'
    p = prepare_payload(raw)
    assert p.stored == b'{"params":{"password":"[REDACTED:secret_field]"}}'
    assert p.sha256 == hashlib.sha256(p.stored).hexdigest() != hashlib.sha256(raw).hexdigest()
    assert (p.size, p.redactions) == (len(p.stored), 1)


def test_exactly_at_the_limit_is_whole() -> None:
    raw = b"x" * 100
    p = prepare_payload(raw, PayloadPolicy(max_bytes=100, prefix_bytes=10))
    assert (p.stored, p.truncated) == (raw, False)


def test_over_the_limit_keeps_size_hash_and_prefix() -> None:
    raw = json.dumps({"result": {"text": "a" * 5000}}).encode()
    p = prepare_payload(raw, PayloadPolicy(max_bytes=1000, prefix_bytes=200))
    assert p.truncated
    assert p.stored == raw[:200]
    assert p.size == len(raw)
    assert p.sha256 == hashlib.sha256(raw).hexdigest()


def test_over_the_default_limit() -> None:
    raw = b'{"blob":"' + b"z" * (2 << 20) + b'"}'
    p = prepare_payload(raw)
    assert p.truncated and len(p.stored) == DEFAULT_POLICY.prefix_bytes and p.size == len(raw)


def test_truncation_happens_after_redaction() -> None:
    secret = "sk-abcdefghijklmnopqrstuvwx"
    raw = json.dumps({"a": "x" * 90 + " " + secret, "card": "4111", "pad": "p" * 5000}).encode()
    p = prepare_payload(raw, PayloadPolicy(max_bytes=1000, prefix_bytes=200, json_paths=("card",)))
    assert p.truncated and p.redactions == 2
    assert b"sk-" not in p.stored  # not even the start of the key made it into the prefix
    full = json.dumps({"a": "x" * 90 + " [REDACTED:api_key]", "card": "[REDACTED:json_path]", "pad": "p" * 5000},
                      separators=(",", ":")).encode()
    assert p.stored == full[:200]
    assert (p.size, p.sha256) == (len(full), hashlib.sha256(full).hexdigest())


def test_json_paths_from_the_policy() -> None:
    raw = b'{"params":{"arguments":{"card":"4111","q":"x"}}}'
    p = prepare_payload(raw, PayloadPolicy(json_paths=("params.arguments.card",), patterns=False))
    assert p.stored == b'{"params":{"arguments":{"card":"[REDACTED:json_path]","q":"x"}}}'


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"max_bytes": 0}, "max_bytes"),
    ({"max_bytes": 10, "prefix_bytes": 11}, "prefix_bytes"),
    ({"prefix_bytes": -1}, "prefix_bytes"),
    ({"json_paths": ("a..b",)}, "bad JSON path"),
])
def test_policy_is_checked_when_built(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PayloadPolicy(**kwargs)  # type: ignore[arg-type]


def test_policy_is_frozen_and_comparable() -> None:
    assert PayloadPolicy(json_paths=("a",)) == PayloadPolicy(json_paths=("a",))
    with pytest.raises(AttributeError):
        DEFAULT_POLICY.max_bytes = 1  # type: ignore[misc]


def test_apply_to_an_event() -> None:
    event = GatewayEvent(EventType.AGENT_MESSAGE_RECEIVED, Kind.REQUEST, Direction.AGENT_TO_GATEWAY)
    p = prepare_payload(b'{"token":"t"}')
    p.apply_to(event)
    assert (event.payload, event.payload_sha256, event.payload_size, event.redactions, event.payload_truncated) == (
        p.stored, p.sha256, p.size, 1, False)


_MESSAGES = [
    b'{"jsonrpc":"2.0","id":1,"result":{}}',
    b'{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{"message":"hi"},'
    b'"_meta":{"progressToken":3}}}',
    b'{"params":{"password":"hunter2","note":"Bearer abcdef0123456789xyz"}}',
    b'{"params":{"arguments":{"text":"sk-abcdefghijklmnopqrstuvwxyz012345 and AKIAABCDEFGHIJKLMNOP"}}}',
    b'{"params":{"arguments":{"token":{"type":"string"},"clientSecret":42,"key":"\\u0041"}}}',
    b'{"params":{"arguments":{"password":"x"}}, "broken',
    b"not json at all: Authorization: Bearer abc.def-ghi_jkl012345",
    b'[{"jsonrpc":"2.0","id":1,"method":"x","params":{"api_key":"v"}},{"jsonrpc":"2.0","id":2,"result":"eyJ"}]',
    b"",
]


@pytest.mark.parametrize("policy", [
    DEFAULT_POLICY, PayloadPolicy(patterns=False), PayloadPolicy(json_paths=("params.arguments.message",)),
    PayloadPolicy(patterns=False, json_paths=("params.arguments.message", "params.password")),
    PayloadPolicy(max_bytes=40, prefix_bytes=16),
], ids=["default", "patterns-off", "paths", "paths-only", "small"])  # fmt: skip
def test_payload_columns_are_redact_payload_hashed_and_cut(policy: PayloadPolicy) -> None:
    """The columns follow their definition (module docstring) for messages with and without secrets."""
    for raw in _MESSAGES:
        full, redactions = redact_payload(raw, policy.compiled_paths, patterns=policy.patterns)
        stored = full if len(full) <= policy.max_bytes else full[: policy.prefix_bytes]
        expected = (stored, hashlib.sha256(full).hexdigest(), len(full), redactions, len(full) > policy.max_bytes)
        got = payload_columns(raw, policy)
        assert got == expected, raw
        if not redactions:
            assert got[0] is raw or len(full) > policy.max_bytes
