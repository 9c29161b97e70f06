"""consumers/risk/signals/pii.py and sensitive_data.py: personal data and secrets in payloads."""

from __future__ import annotations

import pytest

from consumers.risk.settings import PiiInPayloadSettings, SecretInPayloadSettings
from consumers.risk.signals.pii import find_pii, iban_valid, is_card, luhn_valid
from consumers.risk.signals.sensitive_data import PII, SECRET, SensitiveData, redacted_secrets
from schemas.payload import DEFAULT_POLICY, PayloadPolicy, prepare_payload
from tests.consumers.risk.builders import rpc_request, text_result

PII_TABLE = [
    ("visa", "card 4111 1111 1111 1111 on file", {"card": 1}),
    ("visa-dashes", "4111-1111-1111-1111", {"card": 1}),
    ("visa-plain", "pan=4012888888881881;", {"card": 1}),
    ("amex", "amex 3782 822463 10005", {"card": 1}),
    ("mastercard-2-series", "2223003122003222", {"card": 1}),
    ("luhn-fails", "4111 1111 1111 1112", {}),
    ("no-issuer", "1234 5678 9012 3452", {}),
    ("timestamp-ms", "at 1732200000000 ms", {}),
    ("ssn", "SSN 123-45-6789.", {"ssn": 1}),
    ("ssn-never-issued", "000-12-3456 666-12-3456 900-12-3456 123-00-4567 123-45-0000", {}),
    ("iban", "pay to DE89 3704 0044 0532 0130 00 today", {"iban": 1}),
    ("iban-compact", "GB82WEST12345698765432", {"iban": 1}),
    ("iban-bad-check", "DE89 3704 0044 0532 0130 01", {}),
    ("email", "write to jane.doe+billing@example.co.uk", {"email": 1}),
    ("not-an-email", "@mention and user@localhost and decorator @dataclass", {}),
    ("phone-e164", "call +1 415 555 0100", {"phone": 1}),
    ("phone-us", "call (415) 555-0100 or 415-555-0199", {"phone": 2}),
    ("numbers", "order 123456789, 2026-11-21 13:00:00, 10.0.4.17, v1.2.3, id 98765432101234", {}),
    ("ids-in-tokens", "x4111111111111111 4111111111111111a v1.4111111111111111", {}),
    ("mixed", "jane@example.com 123-45-6789 4111111111111111", {"email": 1, "ssn": 1, "card": 1}),
]


@pytest.mark.parametrize(("text", "found"), [pytest.param(t, f, id=name) for name, t, f in PII_TABLE])
def test_find_pii(text: str, found: dict[str, int]) -> None:
    assert find_pii(text_result(text)) == found


@pytest.mark.parametrize(
    ("digits", "valid"),
    [(b"4111111111111111", True), (b"4111111111111112", False), (b"79927398713", True), (b"0", True), (b"18", True)],
)  # fmt: skip
def test_luhn(digits: bytes, valid: bool) -> None:
    assert luhn_valid(digits) is valid


@pytest.mark.parametrize(
    ("iban", "valid"),
    [(b"DE89370400440532013000", True), (b"GB82 WEST 1234 5698 7654 32", True), (b"NO9386011117947", True),
     (b"DE89370400440532013001", False), (b"DE8937", False)],
)  # fmt: skip
def test_iban(iban: bytes, valid: bool) -> None:
    assert iban_valid(iban) is valid


@pytest.mark.parametrize(
    ("candidate", "card"),
    [(b"4111 1111 1111 1111", True), (b"4111 1111 1111 1111 1", False), (b"4111-111111-11111", False),
     (b"4444444444444448", True), (b"5555555555554444", True), (b"0000000000000000", False)],
)  # fmt: skip
def test_is_card(candidate: bytes, card: bool) -> None:
    assert is_card(candidate) is card


def stored(raw: bytes, policy: PayloadPolicy = DEFAULT_POLICY) -> tuple[bytes, int, bool]:
    """The payload columns as the ingress stores them (redacted by the real redaction)."""
    prepared = prepare_payload(raw, policy)
    return prepared.stored, prepared.redactions, prepared.truncated


SECRET_TABLE = [
    ("none", rpc_request("tools/call", {"name": "search", "arguments": {"q": "weather"}}), PayloadPolicy(), 0),
    ("api-key-in-text", rpc_request("tools/call", {"name": "post", "arguments": {
        "body": "key sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8t and AKIAIOSFODNN7EXAMPLE"}}), PayloadPolicy(), 2),
    ("secret-field", rpc_request("tools/call", {"name": "login", "arguments": {"password": "hunter2"}}),
     PayloadPolicy(), 1),
    ("configured-path-is-not-a-secret", rpc_request("tools/call", {"name": "note", "arguments": {"text": "hello"}}),
     PayloadPolicy(json_paths=("params.arguments.text",)), 0),
    ("cut-short", rpc_request("tools/call", {"name": "post", "arguments": {
        "pad": "x" * 3000, "token": "ghp_16C7e42F292c6912E7710c838347Ae178B4a"}}),
     PayloadPolicy(max_bytes=2048, prefix_bytes=1024), 1),
]  # fmt: skip


@pytest.mark.parametrize(("raw", "policy", "count"), [pytest.param(r, p, c, id=n) for n, r, p, c in SECRET_TABLE])
def test_redacted_secrets(raw: bytes, policy: PayloadPolicy, count: int) -> None:
    assert redacted_secrets(*stored(raw, policy)) == count


def test_scan_names_its_signals() -> None:
    detector = SensitiveData(SecretInPayloadSettings(), PiiInPayloadSettings())
    payload, redactions, truncated = stored(rpc_request("tools/call", {"name": "pay", "arguments": {
        "card": "4111 1111 1111 1111", "api_key": "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8t"}}))  # fmt: skip
    hits = {h.signal: h.strength for h in detector.scan(payload, redactions, truncated)}
    assert hits == {SECRET: 0.5, PII: 0.5}
    assert detector.scan(text_result("nothing to see"), 0, False) == []


def test_rescan_finds_what_the_gateway_did_not_redact() -> None:
    raw = rpc_request("tools/call", {"name": "post", "arguments": {"body": "AKIAIOSFODNN7EXAMPLE"}})
    payload, redactions, truncated = stored(raw, PayloadPolicy(patterns=False))
    assert redactions == 0
    plain = SensitiveData(SecretInPayloadSettings(), PiiInPayloadSettings(enabled=False))
    rescanning = SensitiveData(SecretInPayloadSettings(rescan=True), PiiInPayloadSettings(enabled=False))
    assert plain.scan(payload, redactions, truncated) == []
    assert [h.signal for h in rescanning.scan(payload, redactions, truncated)] == [SECRET]


@pytest.mark.parametrize(
    ("settings", "strength"),
    [(PiiInPayloadSettings(), 0.5 + 0.05), (PiiInPayloadSettings(card=0), 0.05), (PiiInPayloadSettings(email=1), 1.0),
     (PiiInPayloadSettings(enabled=False), None)],
)  # fmt: skip
def test_pii_strength_by_kind(settings: PiiInPayloadSettings, strength: float | None) -> None:
    detector = SensitiveData(SecretInPayloadSettings(enabled=False), settings)
    hits = detector.scan(text_result("card 4111111111111111, mail jane@example.com"))
    assert (hits[0].strength if hits else None) == (pytest.approx(strength) if strength is not None else None)
