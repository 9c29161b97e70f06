"""schemas/redaction.py and schemas/jsonpath.py: secrets out, everything else byte-exact."""

from __future__ import annotations

import json
from typing import Any

import pytest

from schemas.jsonpath import JsonPath
from schemas.redaction import SECRET_KINDS, is_secret_key, redact_headers, redact_payload, redact_text
from schemas.secrets import _WORD_ANCHORS, PATTERNS, may_name_secret, patterns_in, secret_prescan

SECRETS = {
    "api_key": ["sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8t", "sk-ant-api03-abcdefghijklmnopqrstuv",
                "sk_live_4eC39HqLyjWDarjtT1zdp7dc", "AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY"],
    "aws_access_key": ["AKIAIOSFODNN7EXAMPLE", "ASIAY34FZKBOKMUTVV7A"],
    "github_token": ["ghp_16C7e42F292c6912E7710c838347Ae178B4a", "github_pat_11ABCDEFG0123456789_abcdefghijklmnop"],
    "slack_token": ["xoxb-2634628634-2664762346-bxZgW3B", "xoxp-1234567890-abcdef"],
    "jwt": ["eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0T",
            "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhIn0."],
    "bearer_token": ["Bearer 9f8e7d6c5b4a3210", "bearer abc.def.ghi-123"],
    "private_key": ["-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA0Z3VS5JJcds3xfn\n-----END RSA PRIVATE KEY-----",
                    "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA (cut off"],
}  # fmt: skip


def rpc(params: dict[str, Any]) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}).encode()


def paths(*texts: str) -> tuple[JsonPath, ...]:
    return tuple(JsonPath.parse(t) for t in texts)


@pytest.mark.parametrize(("kind", "secret"), [(k, s) for k, v in SECRETS.items() for s in v])
def test_secret_patterns_in_any_string(kind: str, secret: str) -> None:
    raw = rpc({"name": "note", "arguments": {"text": f"here: {secret} (keep this)"}})
    out, count = redact_payload(raw)
    assert count == 1
    text = json.loads(out)["params"]["arguments"]["text"]
    assert secret not in text and f"[REDACTED:{kind}]" in text
    assert text.startswith("here: ")
    if kind != "private_key":  # an unterminated key block runs to the end of the string
        assert text.endswith(" (keep this)")
    assert kind in SECRET_KINDS


@pytest.mark.parametrize(("kind", "secret"), [(k, s) for k, v in SECRETS.items() for s in v])
def test_anchors_let_every_secret_through(kind: str, secret: str) -> None:
    """The cheap pre-test must never rule out a pattern that matches."""
    assert kind in {p.kind for p in patterns_in(secret.encode())}
    for p in PATTERNS:
        if p.regex.search(secret):
            assert p in patterns_in(secret.encode())


def _prescan_cases() -> list[bytes]:
    words = [a for p in PATTERNS for a in p.anchors_bytes] + list(_WORD_ANCHORS)
    cases = [s.encode() for v in SECRETS.values() for s in v]
    for w in words:
        cases += [w, w.upper(), w.lower(), w.capitalize(), b'{"x":"..' + w + b'..","' + w + b'Key":"v"}']
    cases += [b'{"clientSecret":"s"}', b'{"API-KEY":"k"}', b'{"t":"\\u0070assword"}', b'{"t":"\\U"}',
              b'{"a":1}', b'{"_meta":{"progressToken":1}}', rpc({"name": "echo", "arguments": {"m": "x" * 64}})]
    return cases


@pytest.mark.parametrize("raw", _prescan_cases())
def test_prescan_agrees_with_the_full_tests(raw: bytes) -> None:
    """The one-scan pre-test may only skip work whose answer it knows: never a match."""
    assert secret_prescan(raw) == (patterns_in(raw), may_name_secret(raw))


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(b'{"a":1}', False), (b'{"_meta":{"progressToken":1}}', False), (b'{"text":"my password is"}', False),
     (b'{"_meta":{"progressToken":1},"token":"x"}', True), (b'{"clientSecret":"x"}', True),
     (b'{"X-Api-Key" : "x"}', True), (b'{"\\u0074oken":"x"}', True), (b'{"monkey":"x"}', False)],
)
def test_secret_key_pre_test(raw: bytes, expected: bool) -> None:
    assert may_name_secret(raw) is expected


def test_clean_payload_is_returned_as_the_same_bytes() -> None:
    raw = b'{"jsonrpc":"2.0",  "id":1,"method":"tools/call","params":{"name":"t","arguments":{"q":"1.0e5"},' \
          b'"_meta":{"progressToken":"p-1"}}, "x":1.0e5}'
    out, count = redact_payload(raw, paths("params.arguments.password"))
    assert out is raw and count == 0


@pytest.mark.parametrize(
    "text",
    ["Bearer authentication is described in RFC 6750", "ask-me-anything-about-the-weather-today", "task-sk-1",
     "the tokens were counted", "eyJ is how base64 JSON starts", "AKIA alone"],
)
def test_near_misses_are_left_alone(text: str) -> None:
    raw = rpc({"arguments": {"text": text, "maxTokens": 100, "progressToken": "t-1", "nextPageToken": "c2"}})
    out, count = redact_payload(raw)
    assert (out, count) == (raw, 0)


@pytest.mark.parametrize(
    ("key", "secret"),
    [("password", True), ("db_password", True), ("clientSecret", True), ("apiKey", True), ("x-api-key", True),
     ("access_token", True), ("refreshToken", True), ("Authorization", True), ("APIKey", True), ("passwd", True),
     ("progressToken", False), ("maxTokens", False), ("tokenizer", False), ("keys", False), ("secretary", False),
     ("next_page_token", False), ("name", False)],
)
def test_secret_key_names(key: str, secret: bool) -> None:
    assert is_secret_key(key) is secret


def test_secret_fields_replace_scalars_and_search_containers() -> None:
    raw = rpc({"arguments": {"password": "hunter2", "pin": 1234, "api_key": 998877, "token": "",
                             "secret": None, "credentials": {"user": "u", "note": "sk-abcdefghijklmnopqrstuvwx"},
                             "ok": True}})
    out, count = redact_payload(raw)
    args = json.loads(out)["params"]["arguments"]
    assert args["password"] == "[REDACTED:secret_field]"
    assert args["api_key"] == "[REDACTED:secret_field]"
    assert args["pin"] == 1234 and args["token"] == "" and args["secret"] is None and args["ok"] is True
    assert args["credentials"] == {"user": "u", "note": "[REDACTED:api_key]"}
    assert count == 3


def test_tool_schemas_that_describe_secrets_stay_intact() -> None:
    raw = json.dumps({"jsonrpc": "2.0", "id": 2, "result": {"tools": [{"name": "login", "inputSchema": {
        "type": "object", "properties": {"password": {"type": "string"}, "token": {"type": "string"}},
        "required": ["password"]}}]}}).encode()
    assert redact_payload(raw) == (raw, 0)


def test_json_paths() -> None:
    raw = json.dumps({"jsonrpc": "2.0", "id": 3, "result": {"content": [
        {"type": "text", "text": "a"}, {"type": "image", "data": "xx"}, {"type": "text", "text": "b"}],
        "structuredContent": {"ssn": "123-45-6789", "other": None}}}).encode()
    out, count = redact_payload(raw, paths("result.content[*].text", "result.structuredContent.*", "nope.x"))
    doc = json.loads(out)["result"]
    assert [c.get("text") for c in doc["content"]] == ["[REDACTED:json_path]", None, "[REDACTED:json_path]"]
    assert doc["content"][1]["data"] == "xx"
    assert doc["structuredContent"] == {"ssn": "[REDACTED:json_path]", "other": None}
    assert count == 3


def test_json_paths_apply_to_each_message_of_a_batch_and_to_indexes() -> None:
    one = {"jsonrpc": "2.0", "id": 1, "method": "m", "params": {"arguments": {"card": "4111"}, "list": [1, 2, 3]}}
    raw = json.dumps([one, one]).encode()
    out, count = redact_payload(raw, paths("params.arguments.card", "params.list[1]"))
    assert count == 4
    for msg in json.loads(out):
        assert msg["params"] == {"arguments": {"card": "[REDACTED:json_path]"}, "list": [1, "[REDACTED:json_path]", 3]}


def test_json_paths_with_patterns_off() -> None:
    raw = rpc({"arguments": {"password": "x", "card": "4111", "note": "sk-abcdefghijklmnopqrstuvwx"}})
    out, count = redact_payload(raw, paths("params.arguments.card"), patterns=False)
    assert count == 1
    args = json.loads(out)["params"]["arguments"]
    assert args == {"password": "x", "card": "[REDACTED:json_path]", "note": "sk-abcdefghijklmnopqrstuvwx"}
    assert redact_payload(raw, patterns=False) == (raw, 0)


@pytest.mark.parametrize("bad", ["", "a..b", "a[x]", "a[*", "a]b", "[*]x", "a.[1"])
def test_bad_json_paths_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="bad JSON path"):
        JsonPath.parse(bad)


def test_json_path_parse() -> None:
    assert JsonPath.parse("result.content[*].text").steps[2].value == "[*]"  # type: ignore[union-attr]
    assert JsonPath.parse("a[0][*]").steps[:2] == ("a", 0)
    assert str(JsonPath.parse("params.*.token")) == "params.*.token"


def test_escaped_secrets_are_found() -> None:
    raw = b'{"a":"\\u0073k-abcdefghijklmnopqrstuvwxyz","\\u0070assword":"x"}'
    out, count = redact_payload(raw)
    assert count == 2
    assert json.loads(out) == {"a": "[REDACTED:api_key]", "password": "[REDACTED:secret_field]"}


def test_a_value_merely_looking_redacted_is_still_redacted() -> None:
    out, count = redact_payload(rpc({"password": "[REDACTED:x] hunter2", "note": "[REDACTED:y] AKIAIOSFODNN7EXAMPLE"}))
    params = json.loads(out)["params"]
    assert params == {"password": "[REDACTED:secret_field]", "note": "[REDACTED:y] [REDACTED:aws_access_key]"}
    assert count == 2


def test_non_json_bytes_get_pattern_and_key_rules() -> None:
    raw = b'{"jsonrpc":"2.0","params":{"password":"hunter2","token":12345,"t":"ghp_16C7e42F292c6912E7710c838347Ae178B4a'
    out, count = redact_payload(raw)
    assert count == 3
    assert b"hunter2" not in out and b"12345" not in out and b"ghp_" not in out
    assert out.startswith(b'{"jsonrpc":"2.0","params":{"password":"[REDACTED:secret_field]"')
    binary = b"\xff\xfe AKIAIOSFODNN7EXAMPLE \x00"
    assert redact_payload(binary) == (b"\xff\xfe [REDACTED:aws_access_key] \x00", 1)
    assert redact_payload(b"\xff\xfe nothing") == (b"\xff\xfe nothing", 0)


def test_redacted_json_keeps_values_exactly() -> None:
    raw = b'{"big":123456789012345678901234567890,"f":0.1,"u":"caf\xc3\xa9 \\ud83d\\ude00","password":"p","n":NaN}'
    out, count = redact_payload(raw)
    assert count == 1
    assert out == b'{"big":123456789012345678901234567890,"f":0.1,"u":"caf\xc3\xa9 \xf0\x9f\x98\x80",' \
                  b'"password":"[REDACTED:secret_field]","n":NaN}'


def test_lone_surrogates_survive_redaction() -> None:
    out, count = redact_payload(b'{"s":"\\ud800","token":"t"}')
    assert (out, count) == (b'{"s":"\\ud800","token":"[REDACTED:secret_field]"}', 1)


def test_redact_text() -> None:
    assert redact_text("key AKIAIOSFODNN7EXAMPLE and xoxb-1234567890-abc") == (
        "key [REDACTED:aws_access_key] and [REDACTED:slack_token]", 2)


def test_headers_deny_by_default() -> None:
    headers = [("Authorization", "Bearer k-123456789"), ("Cookie", "a=b"), ("X-Api-Key", "k"), ("X-Vendor-Token", "t"),
               ("Content-Type", "application/json"), ("Mcp-Session-Id", "s1"), ("X-Note", "use AKIAIOSFODNN7EXAMPLE")]
    out, count = redact_headers(headers)
    assert out == [("Authorization", "[REDACTED:header]"), ("Cookie", "[REDACTED:header]"),
                   ("X-Api-Key", "[REDACTED:header]"), ("X-Vendor-Token", "[REDACTED:header]"),
                   ("Content-Type", "application/json"), ("Mcp-Session-Id", "s1"),
                   ("X-Note", "use [REDACTED:aws_access_key]")]
    assert count == 5


def test_headers_allowlist_never_admits_credentials() -> None:
    headers = {"Authorization": "Bearer x", "Content-Type": "application/json", "User-Agent": "ua", "X-Tenant": "t"}
    out, count = redact_headers(headers, allow={"content-type", "Authorization", "X-Tenant"}, deny={"x-tenant"})
    assert out == [("Authorization", "[REDACTED:header]"), ("Content-Type", "application/json"),
                   ("X-Tenant", "[REDACTED:header]")]
    assert count == 2
