"""ingress/eras.py: era detection, modern envelope validation and header value encoding."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from mcp_types import HEADER_MISMATCH, INVALID_PARAMS, INVALID_REQUEST, UNSUPPORTED_PROTOCOL_VERSION
from multidict import CIMultiDict

from ingress.eras import (
    ALL_VERSIONS,
    DEFAULT_LEGACY_HEADERLESS,
    LATEST_LEGACY,
    LEGACY_VERSIONS,
    META_CAPABILITIES,
    META_VERSION,
    MODERN_VERSIONS,
    Detected,
    Rejection,
    check_param_headers,
    decode_header_value,
    detect,
    encode_header_value,
    negotiate_legacy,
)
from ingress.jsonrpc import Message, classify

MODERN = "2026-07-28"


def msg(method: str | None = "tools/list", msg_id: Any = 1, params: dict | None = None, **extra: Any) -> Message:
    body: dict[str, Any] = {"jsonrpc": "2.0", **extra}
    if method is not None:
        body["method"] = method
    if msg_id is not None:
        body["id"] = msg_id
    if params is not None:
        body["params"] = params
    m = classify(body)
    assert isinstance(m, Message), m
    return m


def envelope(version: str = MODERN, **params: Any) -> dict[str, Any]:
    return {"_meta": {META_VERSION: version, META_CAPABILITIES: {}}, **params}


def modern_headers(method: str, version: str = MODERN, name: str | None = None) -> dict[str, str]:
    headers = {"mcp-protocol-version": version, "mcp-method": method}
    if name is not None:
        headers["mcp-name"] = name
    return headers


def b64(value: str) -> str:
    return "=?base64?" + base64.b64encode(value.encode()).decode() + "?="


def test_version_tables() -> None:
    assert MODERN in MODERN_VERSIONS
    assert set(LEGACY_VERSIONS).isdisjoint(MODERN_VERSIONS)
    assert LATEST_LEGACY == LEGACY_VERSIONS[-1] == "2025-11-25"
    assert set(ALL_VERSIONS) == set(LEGACY_VERSIONS) | set(MODERN_VERSIONS)
    assert len(ALL_VERSIONS) == len(set(ALL_VERSIONS))


# -- routing table ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "headers", "has_session", "expected"),
    [
        # legacy with a session: the header's version, else the headerless default
        (msg("tools/list"), {}, True, Detected("legacy", DEFAULT_LEGACY_HEADERLESS)),
        (msg("tools/list"), {"mcp-protocol-version": "2025-06-18"}, True, Detected("legacy", "2025-06-18")),
        (msg("tools/list"), {"mcp-protocol-version": "2024-11-05"}, True, Detected("legacy", "2024-11-05")),
        (msg("notifications/initialized", msg_id=None), {}, True, Detected("legacy", DEFAULT_LEGACY_HEADERLESS)),
        (msg(None, result={}), {"mcp-protocol-version": "2025-11-25"}, True, Detected("legacy", "2025-11-25")),
        # legacy initialize without a session: the handshake
        (msg("initialize", params={"protocolVersion": "2025-06-18"}), {}, False,
         Detected("legacy", "", handshake=True)),
        (msg("initialize"), {"mcp-protocol-version": "2025-11-25"}, False, Detected("legacy", "", handshake=True)),
        # modern: the header decides, session or not
        (msg("tools/list", params=envelope()), modern_headers("tools/list"), False, Detected("modern", MODERN)),
        (msg("tools/list", params=envelope()), modern_headers("tools/list"), True, Detected("modern", MODERN)),
        (msg("notifications/cancelled", msg_id=None, params={"requestId": 1}),
         {"mcp-protocol-version": MODERN}, False, Detected("modern", MODERN)),
        (msg(None, result={}), {"mcp-protocol-version": MODERN}, False, Detected("modern", MODERN)),
    ],
)
def test_detect_routes(message: Message, headers: dict, has_session: bool, expected: Detected) -> None:
    assert detect(message, headers, has_session) == expected


def test_initialize_sent_as_modern_goes_to_modern_pipeline() -> None:
    m = msg("initialize", params=envelope(protocolVersion=MODERN))
    assert detect(m, modern_headers("initialize"), False) == Detected("modern", MODERN)


@pytest.mark.parametrize(
    ("message", "headers"),
    [
        (msg("tools/list"), {}),
        (msg("tools/list"), {"mcp-protocol-version": "2025-06-18"}),
        (msg("notifications/initialized", msg_id=None), {}),
        (msg(None, result={}), {}),
    ],
)
def test_missing_session(message: Message, headers: dict) -> None:
    result = detect(message, headers, False)
    assert isinstance(result, Rejection)
    assert (result.status, result.code) == (400, INVALID_REQUEST)
    assert "session" in result.message.lower()


def test_modern_body_without_version_header() -> None:
    result = detect(msg("tools/list", params=envelope()), {}, False)
    assert isinstance(result, Rejection)
    assert (result.status, result.code) == (400, HEADER_MISMATCH)
    assert "MCP-Protocol-Version" in result.message


# -- modern validation order -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "headers", "code", "fragment"),
    [
        # 1. missing _meta keys -> -32602 (before anything else, even with an unsupported header)
        (msg("tools/list"), modern_headers("tools/list"), INVALID_PARAMS, META_VERSION),
        (msg("tools/list", params={"_meta": {META_VERSION: MODERN}}), modern_headers("tools/list"),
         INVALID_PARAMS, META_CAPABILITIES),
        (msg("tools/list", params={"_meta": {META_CAPABILITIES: {}}}), modern_headers("tools/list"),
         INVALID_PARAMS, META_VERSION),
        (msg("tools/list", params={"_meta": "junk"}), modern_headers("tools/list"), INVALID_PARAMS, META_VERSION),
        (msg("tools/list"), modern_headers("tools/list", version="v999"), INVALID_PARAMS, META_VERSION),
        (msg("tools/list"), {"mcp-protocol-version": MODERN}, INVALID_PARAMS, META_VERSION),
        # 2. header/body version mismatch -> -32020
        (msg("tools/list", params=envelope("v999")), modern_headers("tools/list"), HEADER_MISMATCH, "'v999'"),
        (msg("tools/list", params=envelope(MODERN)), modern_headers("tools/list", version="v999"),
         HEADER_MISMATCH, "'v999'"),
        (msg("tools/list", params=envelope("2025-06-18")), modern_headers("tools/list"), HEADER_MISMATCH,
         "2025-06-18"),
        (msg("notifications/x", msg_id=None, params={"_meta": {META_VERSION: "v1"}}),
         {"mcp-protocol-version": MODERN}, HEADER_MISMATCH, "'v1'"),
        # 3. Mcp-Method presence and mismatch
        (msg("tools/list", params=envelope()), {"mcp-protocol-version": MODERN}, HEADER_MISMATCH, "Mcp-Method"),
        (msg("tools/list", params=envelope()), modern_headers("prompts/list"), HEADER_MISMATCH, "'prompts/list'"),
        (msg("tools/list", params=envelope()), modern_headers("Tools/List"), HEADER_MISMATCH, "Mcp-Method"),
        # 4. Mcp-Name presence and mismatch for named methods
        (msg("tools/call", params=envelope(name="t")), modern_headers("tools/call"), HEADER_MISMATCH, "Mcp-Name"),
        (msg("prompts/get", params=envelope(name="p")), modern_headers("prompts/get"), HEADER_MISMATCH, "Mcp-Name"),
        (msg("resources/read", params=envelope(uri="file:///a")), modern_headers("resources/read"),
         HEADER_MISMATCH, "Mcp-Name"),
        (msg("tools/call", params=envelope(name="t")), modern_headers("tools/call", name="u"), HEADER_MISMATCH,
         "'u'"),
        (msg("resources/read", params=envelope(uri="file:///a")),
         modern_headers("resources/read", name="file:///b"), HEADER_MISMATCH, "file:///b"),
        (msg("tools/call", params=envelope(name="t")), modern_headers("tools/call", name=b64("u")),
         HEADER_MISMATCH, "'u'"),
        (msg("tools/call", params=envelope(name="t")), modern_headers("tools/call", name="=?base64?!!!?="),
         HEADER_MISMATCH, "base64"),
        (msg("tools/call", params=envelope(name="t")),
         modern_headers("tools/call", name="=?base64?" + base64.b64encode(b"\xff\xfe").decode() + "?="),
         HEADER_MISMATCH, "base64"),
        (msg("tools/call", params=envelope()), modern_headers("tools/call", name="t"), HEADER_MISMATCH, "None"),
        # 5. unsupported version -> -32022 (only once the envelope is otherwise consistent)
        (msg("tools/list", params=envelope("v999")), modern_headers("tools/list", version="v999"),
         UNSUPPORTED_PROTOCOL_VERSION, "Unsupported"),
        (msg("notifications/x", msg_id=None), {"mcp-protocol-version": "2099-01-01"},
         UNSUPPORTED_PROTOCOL_VERSION, "Unsupported"),
    ],
)
def test_modern_rejections(message: Message, headers: dict, code: int, fragment: str) -> None:
    result = detect(message, headers, False)
    assert isinstance(result, Rejection), result
    assert result.status == 400
    assert result.code == code
    assert fragment in result.message


def test_header_2026_with_body_v999_is_header_mismatch_not_unsupported() -> None:
    result = detect(msg("tools/list", params=envelope("v999")), modern_headers("tools/list"), False)
    assert isinstance(result, Rejection)
    assert result.code == HEADER_MISMATCH == -32020


@pytest.mark.parametrize("version", ["v999", "2099-01-01", "", "2026-07-28 "])
def test_unsupported_version_data(version: str) -> None:
    result = detect(msg("tools/list", params=envelope(version)), modern_headers("tools/list", version=version),
                    False)
    assert isinstance(result, Rejection)
    assert result.code == UNSUPPORTED_PROTOCOL_VERSION == -32022
    assert isinstance(result.data, dict)
    assert result.data["requested"] == version
    assert set(result.data["supported"]) == set(ALL_VERSIONS)
    assert MODERN in result.data["supported"]


@pytest.mark.parametrize(
    ("method", "field", "value"),
    [
        ("tools/call", "name", "get_weather"),
        ("tools/call", "name", "wetter für köln"),
        ("tools/call", "name", " padded "),
        ("tools/call", "name", "=?base64?looks-encoded?="),
        ("prompts/get", "name", "greet"),
        ("resources/read", "uri", "file:///tmp/ä b.txt"),
        ("resources/read", "uri", "https://example.com/x?y=1"),
    ],
)
def test_modern_named_methods_accept_encoded_header(method: str, field: str, value: str) -> None:
    m = msg(method, params=envelope(**{field: value}))
    result = detect(m, modern_headers(method, name=encode_header_value(value)), False)
    assert result == Detected("modern", MODERN)


def test_modern_name_header_plain_and_explicit_base64() -> None:
    m = msg("tools/call", params=envelope(name="echo"))
    assert detect(m, modern_headers("tools/call", name="echo"), False) == Detected("modern", MODERN)
    assert detect(m, modern_headers("tools/call", name=b64("echo")), False) == Detected("modern", MODERN)


def test_unnamed_methods_need_no_mcp_name() -> None:
    m = msg("tools/list", params=envelope())
    assert detect(m, modern_headers("tools/list"), False) == Detected("modern", MODERN)


# -- header value encoding -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "plain"),
    [
        ("simple", True),
        ("with space inside", True),
        ("tab\tinside", True),
        ("", True),
        ("file:///a/b?c=d#e", True),
        ("~!@#$%^&*()", True),
        ("=?base64?abc", True),  # only half a sentinel
        ("abc?=", True),
        ("ünïcödé", False),
        ("日本語", False),
        ("emoji 🎉", False),
        (" leading", False),
        ("trailing ", False),
        ("\ttab-led", False),
        ("new\nline", False),
        ("cr\rhere", False),
        ("nul\x00", False),
        ("del\x7f", False),
        ("=?base64?aGk=?=", False),  # looks like a sentinel: must be encoded to survive
        ("=?base64??=", False),
        ("=?base64?=", False),
    ],
)
def test_encode_decode_round_trip(value: str, plain: bool) -> None:
    encoded = encode_header_value(value)
    if plain:
        assert encoded == value
    else:
        assert encoded.startswith("=?base64?") and encoded.endswith("?=")
    assert encoded.isascii()
    assert all(" " <= ch <= "~" or ch == "\t" for ch in encoded)
    assert decode_header_value(encoded) == value


@pytest.mark.parametrize(
    ("raw", "decoded"),
    [
        ("plain", "plain"),
        ("=?base64?aGk=?=", "hi"),
        ("=?base64??=", ""),
        ("=?base64?w7w=?=", "ü"),
        ("=?base64?not base64?=", None),
        ("=?base64?aGk?=", None),  # bad padding
        ("=?base64?//79?=", None),  # valid base64, invalid UTF-8
        # Non-canonical base64 (non-zero trailing bits) decodes to "hi" too, but no encoder emits it;
        # the SDK (mcp.shared.inbound.decode_header_value) rejects it so a corrupt header never
        # matches a body value by accident.
        ("=?base64?aGl=?=", None),
        ("=?base64?abc", "=?base64?abc"),
        ("x=?base64?aGk=?=", "x=?base64?aGk=?="),
    ],
)
def test_decode_header_value(raw: str, decoded: str | None) -> None:
    assert decode_header_value(raw) == decoded


# -- legacy negotiation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("requested", "expected"),
    [
        *[(v, v) for v in LEGACY_VERSIONS],
        (MODERN, LATEST_LEGACY),
        ("2099-01-01", LATEST_LEGACY),
        ("", LATEST_LEGACY),
        (None, LATEST_LEGACY),
        (20250618, LATEST_LEGACY),
        (["2025-06-18"], LATEST_LEGACY),
    ],
)
def test_negotiate_legacy(requested: object, expected: str) -> None:
    assert negotiate_legacy(requested) == expected


# -- Mcp-Param-* headers (check_param_headers) -----------------------------------------------------

PARAM_TOOL = {
    "name": "query",
    "inputSchema": {
        "type": "object",
        "properties": {
            "region": {"type": "string", "x-mcp-header": "Region"},
            "limit": {"type": "integer", "x-mcp-header": "Limit"},
            "dry": {"type": "boolean", "x-mcp-header": "Dry"},
            "opts": {"type": "object", "properties": {"tenant": {"type": "string", "x-mcp-header": "Tenant"}}},
            "free": {"type": "string"},
        },
    },
}


@pytest.mark.parametrize(
    ("arguments", "headers", "ok"),
    [
        pytest.param({}, {}, True, id="nothing-annotated-present"),
        pytest.param({"free": "x"}, {}, True, id="unannotated-argument"),
        pytest.param({"region": "eu-west"}, {"Mcp-Param-Region": "eu-west"}, True, id="string-match"),
        pytest.param({"region": "eu-west"}, {"mcp-param-region": "eu-west"}, True, id="header-name-any-case"),
        pytest.param({"region": "eu-west"}, {"Mcp-Param-Region": "us-east"}, False, id="string-mismatch"),
        pytest.param({"region": "eu-west"}, {}, False, id="argument-without-header"),
        pytest.param({"region": None}, {}, True, id="null-argument-no-header"),
        pytest.param({"region": "köln"}, {"Mcp-Param-Region": encode_header_value("köln")}, True,
                     id="non-ascii-base64"),
        pytest.param({"region": " x "}, {"Mcp-Param-Region": encode_header_value(" x ")}, True,
                     id="edge-whitespace-base64"),
        pytest.param({"region": "x"}, {"Mcp-Param-Region": "=?base64?!!?="}, False, id="broken-base64"),
        pytest.param({"region": "x"}, {"Mcp-Param-Region": "x\x01"}, False, id="control-character"),
        pytest.param({"limit": 42}, {"Mcp-Param-Limit": "42"}, True, id="integer-match"),
        pytest.param({"limit": 42}, {"Mcp-Param-Limit": "42.0"}, True, id="integer-numeric-compare"),
        pytest.param({"limit": 42}, {"Mcp-Param-Limit": "43"}, False, id="integer-mismatch"),
        pytest.param({"limit": 42}, {"Mcp-Param-Limit": "forty-two"}, False, id="integer-not-a-number"),
        pytest.param({"limit": 2**53 + 1}, {"Mcp-Param-Limit": str(2**53)}, False,
                     id="integer-beyond-float-precision"),
        pytest.param({"dry": True}, {"Mcp-Param-Dry": "true"}, True, id="bool-true"),
        pytest.param({"dry": False}, {"Mcp-Param-Dry": "false"}, True, id="bool-false"),
        pytest.param({"dry": True}, {"Mcp-Param-Dry": "1"}, False, id="bool-as-1"),
        pytest.param({"dry": True}, {"Mcp-Param-Dry": "True"}, False, id="bool-capitalised"),
        pytest.param({"opts": {"tenant": "acme"}}, {"Mcp-Param-Tenant": "acme"}, True, id="nested-match"),
        pytest.param({"opts": {"tenant": "acme"}}, {"Mcp-Param-Tenant": "other"}, False, id="nested-mismatch"),
        pytest.param({"opts": "not-an-object"}, {}, True, id="nested-parent-not-object"),
        # The SDK (mcp.shared.inbound.validate_mcp_param_headers): header and argument must be
        # "present together ... or absent together"; a header for an absent argument is a mismatch.
        pytest.param({}, {"Mcp-Param-Region": "eu-west"}, False, id="header-without-argument"),
    ],
)
def test_check_param_headers(arguments: dict, headers: dict, ok: bool) -> None:
    result = check_param_headers(PARAM_TOOL, arguments, CIMultiDict(headers))
    if ok:
        assert result is None, result
    else:
        assert isinstance(result, Rejection), "accepted"
        assert (result.status, result.code) == (400, HEADER_MISMATCH)


@pytest.mark.parametrize(
    "tool",
    [
        {"name": "t"},
        {"name": "t", "inputSchema": {"type": "object", "properties": {"a": {"type": "string"}}}},
        # invalid annotations (a number-typed header): the tool is validated as unannotated
        {"name": "t", "inputSchema": {"properties": {"a": {"type": "number", "x-mcp-header": "A"}}}},
    ],
)
def test_check_param_headers_without_valid_annotations(tool: dict) -> None:
    assert check_param_headers(tool, {"a": 1.5}, CIMultiDict({"Mcp-Param-A": "zzz"})) is None
