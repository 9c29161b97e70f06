"""ingress/jsonrpc.py: framing and validation of single JSON-RPC messages."""

from __future__ import annotations

import orjson
import pytest
from mcp_types import INVALID_REQUEST, PARSE_ERROR

from ingress.jsonrpc import (
    Invalid,
    Message,
    classify,
    error_body,
    error_bytes,
    error_code_of,
    parse_message,
    result_body,
)
from schemas.events import Kind

# -- valid messages -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "kind", "msg_id", "method"),
    [
        ({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, Kind.REQUEST, 1, "tools/list"),
        ({"jsonrpc": "2.0", "id": "abc", "method": "ping"}, Kind.REQUEST, "abc", "ping"),
        ({"jsonrpc": "2.0", "id": 0, "method": "ping"}, Kind.REQUEST, 0, "ping"),
        ({"jsonrpc": "2.0", "id": -7, "method": "ping"}, Kind.REQUEST, -7, "ping"),
        ({"jsonrpc": "2.0", "id": "", "method": "ping"}, Kind.REQUEST, "", "ping"),
        ({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "x"}}, Kind.REQUEST, 2,
         "tools/call"),
        ({"jsonrpc": "2.0", "method": "notifications/initialized"}, Kind.NOTIFICATION, None,
         "notifications/initialized"),
        ({"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progress": 1}},
         Kind.NOTIFICATION, None, "notifications/progress"),
        ({"jsonrpc": "2.0", "id": 3, "result": {}}, Kind.RESPONSE, 3, ""),
        ({"jsonrpc": "2.0", "id": "s", "result": {"tools": []}}, Kind.RESPONSE, "s", ""),
        ({"jsonrpc": "2.0", "id": 4, "error": {"code": -32601, "message": "nope"}}, Kind.ERROR, 4, ""),
        ({"jsonrpc": "2.0", "id": 4, "error": {"code": -1, "message": "", "data": [1]}}, Kind.ERROR, 4, ""),
        # JSON-RPC: an error answering an unreadable request carries id null.
        ({"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "parse"}}, Kind.ERROR, None, ""),
    ],
)
def test_classify_valid(body: dict, kind: Kind, msg_id: object, method: str) -> None:
    msg = classify(body)
    assert isinstance(msg, Message), msg
    assert msg.kind is kind
    assert msg.id == msg_id
    assert type(msg.id) is type(msg_id)
    assert msg.method == method
    assert msg.body is body  # unknown fields travel untouched


def test_classify_keeps_unknown_fields() -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "x", "params": {"a": 1}, "extra": {"z": True}}
    msg = classify(body)
    assert isinstance(msg, Message)
    assert orjson.loads(msg.dumps()) == body


# -- invalid messages -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected_id", "fragment"),
    [
        # batches and non-objects
        ([{"jsonrpc": "2.0", "id": 1, "method": "ping"}], None, "batch"),
        ([], None, "batch"),
        ("hello", None, "JSON object"),
        (1, None, "JSON object"),
        (None, None, "JSON object"),
        (True, None, "JSON object"),
        # jsonrpc version member
        ({"id": 1, "method": "ping"}, 1, '"jsonrpc"'),
        ({"jsonrpc": "1.0", "id": 1, "method": "ping"}, 1, '"jsonrpc"'),
        ({"jsonrpc": 2.0, "id": "a", "method": "ping"}, "a", '"jsonrpc"'),
        # method member
        ({"jsonrpc": "2.0", "id": 1, "method": ""}, 1, '"method"'),
        ({"jsonrpc": "2.0", "id": 1, "method": 5}, 1, '"method"'),
        ({"jsonrpc": "2.0", "id": 1, "method": ["x"]}, 1, '"method"'),
        ({"jsonrpc": "2.0", "method": False}, None, '"method"'),
        # params must be an object in MCP
        ({"jsonrpc": "2.0", "id": 1, "method": "x", "params": [1, 2]}, 1, '"params"'),
        ({"jsonrpc": "2.0", "id": 1, "method": "x", "params": "s"}, 1, '"params"'),
        ({"jsonrpc": "2.0", "id": 1, "method": "x", "params": 3}, 1, '"params"'),
        ({"jsonrpc": "2.0", "method": "x", "params": [1]}, None, '"params"'),
        # request ids: bool, float, null, containers
        ({"jsonrpc": "2.0", "id": None, "method": "x"}, None, "string or an integer"),
        ({"jsonrpc": "2.0", "id": True, "method": "x"}, None, "string or an integer"),
        ({"jsonrpc": "2.0", "id": False, "method": "x"}, None, "string or an integer"),
        ({"jsonrpc": "2.0", "id": 1.5, "method": "x"}, None, "string or an integer"),
        ({"jsonrpc": "2.0", "id": 1.0, "method": "x"}, None, "string or an integer"),
        ({"jsonrpc": "2.0", "id": [1], "method": "x"}, None, "string or an integer"),
        ({"jsonrpc": "2.0", "id": {"a": 1}, "method": "x"}, None, "string or an integer"),
        # neither method nor usable id
        ({"jsonrpc": "2.0"}, None, '"method"'),
        ({"jsonrpc": "2.0", "result": {}}, None, '"method"'),
        ({"jsonrpc": "2.0", "id": True, "result": {}}, None, '"method"'),
        ({"jsonrpc": "2.0", "id": 1.5, "result": {}}, None, '"method"'),
        ({"jsonrpc": "2.0", "id": [], "error": {"code": 1, "message": "m"}}, None, '"method"'),
        # responses: exactly one of result / error
        ({"jsonrpc": "2.0", "id": 1}, 1, "exactly one"),
        ({"jsonrpc": "2.0", "id": 1, "result": {}, "error": {"code": 1, "message": "m"}}, 1, "exactly one"),
        # error object shape
        ({"jsonrpc": "2.0", "id": 1, "error": "boom"}, 1, '"error"'),
        ({"jsonrpc": "2.0", "id": 1, "error": None}, 1, '"error"'),
        ({"jsonrpc": "2.0", "id": 1, "error": {"message": "m"}}, 1, '"error"'),
        ({"jsonrpc": "2.0", "id": 1, "error": {"code": 1}}, 1, '"error"'),
        ({"jsonrpc": "2.0", "id": 1, "error": {"code": 1, "message": 2}}, 1, '"error"'),
        ({"jsonrpc": "2.0", "id": 1, "error": {"code": 1.5, "message": "m"}}, 1, '"error"'),
        ({"jsonrpc": "2.0", "id": 1, "error": {"code": True, "message": "m"}}, 1, '"error"'),
        # The message says "an integer code": a string code must not pass.
        pytest.param({"jsonrpc": "2.0", "id": 1, "error": {"code": "-32000", "message": "m"}}, 1, '"error"',
                     id="error-code-is-a-string"),
    ],
)
def test_classify_invalid(body: object, expected_id: object, fragment: str) -> None:
    result = classify(body)
    assert isinstance(result, Invalid), f"accepted as {result!r}"
    assert result.code == INVALID_REQUEST
    assert result.id == expected_id
    assert fragment in result.message


def test_invalid_keeps_usable_id_for_the_error_reply() -> None:
    result = classify({"jsonrpc": "2.0", "id": "req-9", "method": "x", "params": []})
    assert isinstance(result, Invalid)
    assert result.id == "req-9"


# -- bytes ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"{", b"not json", b"\xff\xfe", b'{"jsonrpc": "2.0",}', b"[1,"])
def test_parse_error(data: bytes) -> None:
    result = parse_message(data)
    assert isinstance(result, Invalid)
    assert result.code == PARSE_ERROR
    assert result.id is None
    assert "not valid JSON" in result.message


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b'{"jsonrpc":"2.0","id":7,"method":"ping"}', (Kind.REQUEST, 7)),
        (b'{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":7}}',
         (Kind.NOTIFICATION, None)),
        (b'{"jsonrpc":"2.0","id":"x","result":{}}', (Kind.RESPONSE, "x")),
        (b'[{"jsonrpc":"2.0","id":7,"method":"ping"}]', INVALID_REQUEST),
        (b"42", INVALID_REQUEST),
        (b"null", INVALID_REQUEST),
        (b'{"jsonrpc":"2.0","id":true,"method":"ping"}', INVALID_REQUEST),
    ],
)
def test_parse_message(data: bytes, expected: object) -> None:
    result = parse_message(data)
    if isinstance(expected, int):
        assert isinstance(result, Invalid)
        assert result.code == expected
    else:
        assert isinstance(result, Message)
        assert (result.kind, result.id) == expected


# -- Message accessors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "expected_params", "expected_meta"),
    [
        (None, {}, {}),
        ({}, {}, {}),
        ({"a": 1}, {"a": 1}, {}),
        ({"_meta": "x"}, {"_meta": "x"}, {}),
        ({"_meta": [1]}, {"_meta": [1]}, {}),
        ({"_meta": {"k": "v"}}, {"_meta": {"k": "v"}}, {"k": "v"}),
    ],
)
def test_params_and_meta(params: object, expected_params: dict, expected_meta: dict) -> None:
    body: dict = {"jsonrpc": "2.0", "id": 1, "method": "x"}
    if params is not None:
        body["params"] = params
    msg = classify(body)
    assert isinstance(msg, Message)
    assert msg.params == expected_params
    assert msg.meta == expected_meta


@pytest.mark.parametrize(
    ("body", "is_request", "is_notification", "is_response"),
    [
        ({"jsonrpc": "2.0", "id": 1, "method": "x"}, True, False, False),
        ({"jsonrpc": "2.0", "method": "x"}, False, True, False),
        ({"jsonrpc": "2.0", "id": 1, "result": {}}, False, False, True),
        ({"jsonrpc": "2.0", "id": 1, "error": {"code": 1, "message": "m"}}, False, False, True),
    ],
)
def test_kind_predicates(body: dict, is_request: bool, is_notification: bool, is_response: bool) -> None:
    msg = classify(body)
    assert isinstance(msg, Message)
    assert (msg.is_request, msg.is_notification, msg.is_response) == (is_request, is_notification, is_response)


# -- error / result bodies ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("msg_id", "code", "message", "data", "expected_error"),
    [
        (1, -32600, "bad", None, {"code": -32600, "message": "bad"}),
        ("a", -32602, "x", {"k": 1}, {"code": -32602, "message": "x", "data": {"k": 1}}),
        (None, -32700, "parse", None, {"code": -32700, "message": "parse"}),
        (2, -1, "m", 0, {"code": -1, "message": "m", "data": 0}),
        (2, -1, "m", False, {"code": -1, "message": "m", "data": False}),
        (2, -1, "m", {}, {"code": -1, "message": "m", "data": {}}),
        (2, -1, "m", "", {"code": -1, "message": "m", "data": ""}),
    ],
)
def test_error_body_and_bytes(msg_id: object, code: int, message: str, data: object, expected_error: dict) -> None:
    expected = {"jsonrpc": "2.0", "id": msg_id, "error": expected_error}
    assert error_body(msg_id, code, message, data) == expected
    raw = error_bytes(msg_id, code, message, data)
    assert isinstance(raw, bytes)
    assert orjson.loads(raw) == expected
    # What we emit must itself be a valid JSON-RPC error.
    parsed = parse_message(raw)
    assert isinstance(parsed, Message)
    assert parsed.kind is Kind.ERROR
    assert parsed.id == msg_id
    assert error_code_of(parsed.body) == code


def test_result_body() -> None:
    assert result_body(5, {"a": 1}) == {"jsonrpc": "2.0", "id": 5, "result": {"a": 1}}


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"error": {"code": -32601, "message": "m"}}, -32601),
        ({"error": {"code": "x", "message": "m"}}, None),
        ({"error": "x"}, None),
        ({"result": {}}, None),
        ({}, None),
    ],
)
def test_error_code_of(body: dict, code: int | None) -> None:
    assert error_code_of(body) == code


def test_result_response_with_null_id_is_invalid() -> None:
    # JSON-RPC 2.0 §5: id null is only for *errors* about a request whose id could not be read;
    # MCP request ids are never null, so a successful result can answer no request.
    result = classify({"jsonrpc": "2.0", "id": None, "result": {}})
    assert isinstance(result, Invalid), f"accepted as {result!r}"
    assert result.code == INVALID_REQUEST
