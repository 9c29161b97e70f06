"""`redact_text`/`redact_bytes` match only where a pattern's `starts` say a match can begin, and
`patterns_in` probes long texts anchor by anchor: they must give exactly what the plain
implementations (the oracles below) give, for every text and every subset of `PATTERNS` in order."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence

import pytest

from schemas import redaction, secrets
from schemas.payload import prepare_payload
from schemas.redaction import redact_payload
from schemas.secrets import (
    _ANCHOR_OWNER,
    _ANY_ANCHOR,
    _JSON_KEY,
    _SAFE_TOKEN_KEYS,
    _WORD_ANCHORS,
    PATTERNS,
    SecretPattern,
    is_secret_key,
    may_name_secret,
    patterns_in,
    redact_bytes,
    redact_text,
)

_ORACLE_TEXT = {p.kind: re.compile(p.source, re.DOTALL | re.ASCII) for p in PATTERNS}
_ORACLE_BYTES = {p.kind: re.compile(p.source.encode(), re.DOTALL) for p in PATTERNS}


def oracle_text(value: str, patterns: Sequence[SecretPattern] = PATTERNS) -> tuple[str, int]:
    count = 0
    for p in patterns:
        if any(a in value for a in p.anchors):
            value, n = _ORACLE_TEXT[p.kind].subn(p.marker, value)
            count += n
    return value, count


def oracle_bytes(value: bytes, patterns: Sequence[SecretPattern] = PATTERNS) -> tuple[bytes, int]:
    count = 0
    for p in patterns:
        if any(a in value for a in p.anchors_bytes):
            value, n = _ORACLE_BYTES[p.kind].subn(p.marker.encode(), value)
            count += n
    return value, count


def oracle_patterns_in(raw: bytes) -> tuple[SecretPattern, ...]:
    if b"\\u" in raw:
        return PATTERNS
    owners = {_ANCHOR_OWNER[m.group()] for m in _ANY_ANCHOR.finditer(raw)}
    return tuple(p for p in PATTERNS if p in owners)


def oracle_may_name_secret(raw: bytes) -> bool:
    if b"\\u" in raw:
        return True
    low = raw.lower()
    hits = [w for w in _WORD_ANCHORS if w in low]
    if hits == [b"token"]:
        for safe in _SAFE_TOKEN_KEYS:
            low = low.replace(safe, b"")
        if b"token" not in low:
            return False
    elif not hits:
        return False
    return any(is_secret_key(k.decode("utf-8", "replace")) for k in _JSON_KEY.findall(raw))


JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n"
VALID = [
    "Bearer 9f8e7d6c5b4a3210", "bearer abc.def.ghi-123", "BEARER \t" + "A" * 32, "Bearer " + JWT,
    JWT, "eyJab.eyJcd.", "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8t", "sk_live_4eC39HqLyjWDarjtT1zd",
    "rk_test_4eC39HqLyjWDarjtT1zd", "AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY", "AKIAIOSFODNN7EXAMPLE",
    "ASIAY34FZKBOKMUTVV7A", "ghp_16C7e42F292c6912E7710c838347Ae178B4a", "gho_" + "a1" * 18, "ghu_" + "B2" * 18,
    "ghs_" + "c" * 36, "ghr_" + "9" * 40,
    "github_pat_11ABCDEFG0123456789_abcdefghijklmnop", "xoxb-2634628634-2664762346-bxZgW3B", "xoxp-1234567890",
    "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA0Z3VS5\n-----END RSA PRIVATE KEY-----",
    "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA (cut off",
    "-----BEGIN PRIVATE KEY-----x-----END PRIVATE KEY----- Bearer 123456789012 -----END PRIVATE KEY-----",
]  # fmt: skip
NEAR_MISS = [
    "Bearer authentication", "Bearer 12345678901", "bearer\nabc.def.ghi-123", "wearer 9f8e7d6c5b4a3210",
    "BeArEr 9f8e7d6c5b4a3210", "eyJab.eyJc.", "eyJabc", "sk-short", "task-Ab3dEf6hIj9kLm2nOp5qRs8t",
    "disk-Ab3dEf6hIj9kLm2nOp5qRs8t", "sk_live_short", "tk_live_4eC39HqLyjWDarjtT1zd", "AIzaShort",
    "AKIAIOSFODNN7EXAMPL", "AKIAIOSFODNN7EXAMPLEX", "AKIAiosfodnn7example", "ghp_short", "ghx_" + "a" * 40,
    "github_pat_short", "xoxq-1234567890", "xoxb-123", "-----BEGIN RSA PUBLIC KEY-----", "PRIVATE KEY-----",
]  # fmt: skip
FRAGMENTS = [
    "Bearer", "bearer", "BEARER", "earer", "EARER", "wearer ", "eyJ", "eyJhbGci", "sk-", "sk_", "rk_", "k_live_",
    "k_test_", "live_", "test_", "AIza", "AKIA", "ASIA", "gh", "ghp_", "gho_", "ghu_", "ghs_", "ghr_",
    "github_pat_", "xox", "xoxb-", "xoxs-", "-----BEGIN", " RSA ", "PRIVATE KEY-----", "-----END", "task-", "disk-",
    ".", "-", "_", " ", "\t", "\n", "=", "/", "+", "~", ":", '"', "é", "٣", "ß", "\u00a0", "ǅ", "🔑",
]  # fmt: skip
BOUNDARIES = [chr(c) for c in range(128)] + ["é", "٣", "ǅ", "\u00a0", "🔑", "\udc80"]
_ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def crafted() -> list[str]:
    cases = list(VALID + NEAR_MISS)
    for secret in VALID + NEAR_MISS[:12]:
        for b in BOUNDARIES:
            cases += [b + secret, secret + b, b + secret + b]
    cases += [" ".join(VALID), "".join(VALID), "\n".join(VALID + NEAR_MISS), "x".join(NEAR_MISS)]
    cases += ["sk-sk-" + "a" * 30, "Bearer Bearer 9f8e7d6c5b4a3210", "AKIAAKIAIOSFODNN7EXAMPLE",
              "gh" * 30 + "ghp_" + "a" * 40, "eyJeyJab.eyJcd.eyJef.eyJgh.x", "xoxb-xoxb-1234567890"]  # fmt: skip
    return cases


def random_text(rng: random.Random) -> str:
    parts = []
    for _ in range(rng.randint(1, 12)):
        roll = rng.random()
        if roll < 0.55:
            parts.append(rng.choice(FRAGMENTS))
        elif roll < 0.85:
            alphabet = rng.choice([_ALNUM, _ALNUM[:26], _ALNUM[26:52], _ALNUM + "_-.", "0123456789"])
            parts.append("".join(rng.choice(alphabet) for _ in range(rng.choice([1, 3, 10, 16, 20, 22, 32, 36, 40]))))
        else:
            parts.append(rng.choice(VALID + NEAR_MISS))
    return "".join(parts)


def subsets(rng: random.Random) -> list[tuple[SecretPattern, ...]]:
    return [PATTERNS, tuple(p for p in PATTERNS if rng.random() < 0.5)]


@pytest.fixture(params=[1, secrets._CANDIDATE_COST], ids=["at-starts", "dense-falls-back"])
def candidate_cost(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Cost 1: texts never count as dense, so short ones too are matched at their starts."""
    monkeypatch.setattr(secrets, "_CANDIDATE_COST", request.param)


@pytest.mark.usefixtures("candidate_cost")
def test_crafted_texts_redact_as_the_oracle() -> None:
    for value in crafted():
        assert redact_text(value) == oracle_text(value), value
        data = value.encode("utf-8", "surrogateescape")
        assert redact_bytes(data) == oracle_bytes(data), data


@pytest.mark.usefixtures("candidate_cost")
@pytest.mark.parametrize("seed", range(30))
def test_random_texts_redact_as_the_oracle(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(250):
        value = random_text(rng)
        for patterns in subsets(rng):
            assert redact_text(value, patterns) == oracle_text(value, patterns), (value, patterns)
            data = value.encode("utf-8", "surrogateescape")
            assert redact_bytes(data, patterns) == oracle_bytes(data, patterns), (data, patterns)
        raw = bytes(rng.randrange(256) for _ in range(8)) + value.encode() + b"\xff"  # not UTF-8
        assert redact_bytes(raw) == oracle_bytes(raw)


def test_a_bearer_jwt_stays_one_bearer_token() -> None:
    out, count = redact_text("auth: Bearer " + JWT + " end")
    assert (out, count) == ("auth: [REDACTED:bearer_token] end", 1)


@pytest.mark.usefixtures("candidate_cost")
@pytest.mark.parametrize("seed", range(10))
def test_payloads_redact_as_with_the_oracle(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(1000 + seed)
    raws = []
    for _ in range(40):
        texts = [random_text(rng) for _ in range(3)]
        params = {"name": "note", "arguments": {"text": texts[0], texts[1]: texts[2]}}
        raws.append(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}).encode())
        raws.append(b"not json: " + texts[0].encode() + b' "token": "' + texts[1].encode() + b'"')
    fast = [(redact_payload(raw), prepare_payload(raw)) for raw in raws]
    monkeypatch.setattr(redaction, "redact_text", oracle_text)
    monkeypatch.setattr(redaction, "redact_bytes", oracle_bytes)
    assert fast == [(redact_payload(raw), prepare_payload(raw)) for raw in raws]


@pytest.mark.parametrize("seed", range(10))
def test_patterns_in_long_texts_as_the_oracle(seed: int) -> None:
    rng = random.Random(2000 + seed)
    filler = "the gateway records every call " * 40
    for _ in range(150):
        parts = [random_text(rng) for _ in range(rng.randint(1, 4))]
        value = filler[: rng.randint(0, 1200)].join(parts) + rng.choice(["", filler, "AKIAIza", "ASIAIza", "\\u"])
        for raw in (value.encode(), value.encode()[:1100], filler.encode() + rng.choice(FRAGMENTS).encode()):
            assert patterns_in(raw) == oracle_patterns_in(raw), raw


def test_patterns_in_sees_what_an_overlap_hides() -> None:
    """In "AKIAIza" the scan finds AKIA and not the overlapping AIza: api_key is not among them."""
    for raw in (b"AKIAIza" + b"." * 2000, b"AKIAIza" + b"." * 2000 + b"AIza", b"ASIAIza" + b"x" * 1024):
        assert patterns_in(raw) == oracle_patterns_in(raw)
    assert [p.kind for p in patterns_in(b"AKIAIza" + b"." * 2000)] == ["aws_access_key"]


KEYS = [
    "password", "apiKey", "x-api-key", "progressToken", "progress_token", "next-page-token", "maxTokens", "name",
    "api_\u212aey", "clientSecret", "monkey", "token", "keys", "Authorization", "a", "secretary", "jwt", "pwd",
]  # fmt: skip


@pytest.mark.parametrize("seed", range(10))
def test_may_name_secret_as_the_oracle(seed: int) -> None:
    rng = random.Random(3000 + seed)
    for _ in range(300):
        obj = {rng.choice([*KEYS, random_text(rng)]): random_text(rng) for _ in range(rng.randint(0, 6))}
        words = " ".join(rng.choice(KEYS + FRAGMENTS) for _ in range(rng.randint(0, 5)))
        many = {f"k{i}": i for i in range(rng.choice([0, 70]))}
        for raw in (json.dumps({**many, **obj, "text": words}).encode(), json.dumps(obj, ensure_ascii=False).encode(),
                    words.encode(), ('{"' + words + '": 1}').encode()):  # fmt: skip
            assert may_name_secret(raw) == oracle_may_name_secret(raw), raw
