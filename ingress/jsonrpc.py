"""JSON-RPC 2.0 framing and validation for MCP messages (pure, no I/O).

`parse_message` turns bytes into a `Message` or an `Invalid` value carrying the JSON-RPC error
the peer should get (-32700 for bytes that are not JSON, -32600 for JSON that is not a valid
JSON-RPC message). Messages stay plain dicts so unknown fields travel through untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from mcp_types import INVALID_REQUEST, PARSE_ERROR

from schemas.events import Kind

RequestId = str | int
JsonObject = dict[str, Any]


@dataclass(slots=True)
class Message:
    body: JsonObject
    kind: Kind  # REQUEST, NOTIFICATION, RESPONSE or ERROR
    id: RequestId | None
    method: str  # "" for responses

    @property
    def params(self) -> JsonObject:
        params = self.body.get("params")
        return params if isinstance(params, dict) else {}

    @property
    def meta(self) -> JsonObject:
        meta = self.params.get("_meta")
        return meta if isinstance(meta, dict) else {}

    @property
    def is_request(self) -> bool:
        return self.kind is Kind.REQUEST

    @property
    def is_notification(self) -> bool:
        return self.kind is Kind.NOTIFICATION

    @property
    def is_response(self) -> bool:
        return self.kind is Kind.RESPONSE or self.kind is Kind.ERROR

    def dumps(self) -> bytes:
        return orjson.dumps(self.body)


@dataclass(slots=True, frozen=True)
class Invalid:
    code: int
    message: str
    id: RequestId | None = None


def _valid_id(value: object) -> bool:
    return isinstance(value, str | int) and not isinstance(value, bool)


def classify(body: object) -> Message | Invalid:
    """Validate one decoded JSON value as a single JSON-RPC message."""
    if isinstance(body, list):
        return Invalid(INVALID_REQUEST, "JSON-RPC batches are not supported: send one message per request")
    if not isinstance(body, dict):
        return Invalid(INVALID_REQUEST, "a JSON-RPC message must be a JSON object")
    raw_id = body.get("id")
    msg_id = raw_id if _valid_id(raw_id) else None
    if body.get("jsonrpc") != "2.0":
        return Invalid(INVALID_REQUEST, 'the "jsonrpc" member must be exactly "2.0"', msg_id)
    method = body.get("method")
    if method is not None:
        if not isinstance(method, str) or not method:
            return Invalid(INVALID_REQUEST, 'the "method" member must be a non-empty string', msg_id)
        params = body.get("params")
        if params is not None and not isinstance(params, dict):
            return Invalid(INVALID_REQUEST, 'MCP "params" must be a JSON object', msg_id)
        if "id" not in body:
            return Message(body, Kind.NOTIFICATION, None, method)
        if msg_id is None:
            return Invalid(INVALID_REQUEST, 'a request "id" must be a string or an integer (not null)')
        return Message(body, Kind.REQUEST, msg_id, method)
    if "id" not in body or (raw_id is not None and msg_id is None):
        return Invalid(INVALID_REQUEST, 'a message needs a "method" (request or notification) or an "id" '
                       '(response)')
    has_result = "result" in body
    error = body.get("error")
    if has_result == ("error" in body):
        return Invalid(INVALID_REQUEST, 'a response must carry exactly one of "result" and "error"', msg_id)
    if has_result:
        if msg_id is None:
            return Invalid(INVALID_REQUEST, 'a result response needs the "id" of its request (null is for errors)')
        return Message(body, Kind.RESPONSE, msg_id, "")
    code = error.get("code") if isinstance(error, dict) else None
    if not isinstance(error, dict) or not isinstance(code, int) or isinstance(code, bool) or not isinstance(
        error.get("message"), str
    ):
        return Invalid(INVALID_REQUEST, 'a response "error" needs an integer "code" and a string "message"',
                       msg_id)
    return Message(body, Kind.ERROR, msg_id, "")


def parse_message(data: bytes) -> Message | Invalid:
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        return Invalid(PARSE_ERROR, f"parse error: the body is not valid JSON ({exc})")
    return classify(body)


def error_body(msg_id: RequestId | None, code: int, message: str, data: Any = None) -> JsonObject:
    error: JsonObject = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return {"jsonrpc": "2.0", "id": msg_id, "error": error}


def error_bytes(msg_id: RequestId | None, code: int, message: str, data: Any = None) -> bytes:
    return orjson.dumps(error_body(msg_id, code, message, data))


def result_body(msg_id: RequestId | None, result: JsonObject) -> JsonObject:
    return {"jsonrpc": "2.0", "id": msg_id, "result": result}


def error_code_of(body: JsonObject) -> int | None:
    error = body.get("error")
    if isinstance(error, dict):
        code = error.get("code")
        return code if isinstance(code, int) else None
    return None
