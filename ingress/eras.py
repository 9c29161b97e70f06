"""Protocol eras on one endpoint: which era a request speaks, and whether its envelope is valid (pure).

Legacy (2024-11-05 … 2025-11-25): `initialize`, then `Mcp-Session-Id` on every request.
Modern (2026-07-28): no handshake; each request carries `_meta` protocol version and client
capabilities, mirrored in `MCP-Protocol-Version`, `Mcp-Method` and `Mcp-Name` headers.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from mcp_types import HEADER_MISMATCH, INVALID_PARAMS, INVALID_REQUEST, UNSUPPORTED_PROTOCOL_VERSION
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, MODERN_PROTOCOL_VERSIONS

from ingress.jsonrpc import JsonObject, Message
from ingress.upstreams.mcp_headers import ParamHeader, encode_value, tool_param_headers

Era = Literal["legacy", "modern"]

LEGACY_VERSIONS: tuple[str, ...] = HANDSHAKE_PROTOCOL_VERSIONS
MODERN_VERSIONS: tuple[str, ...] = MODERN_PROTOCOL_VERSIONS
ALL_VERSIONS: tuple[str, ...] = (*MODERN_VERSIONS, *reversed(LEGACY_VERSIONS))
LATEST_LEGACY = LEGACY_VERSIONS[-1]
LATEST_MODERN = MODERN_VERSIONS[-1]
# A legacy request without the header is 2025-03-26 by the spec's backward-compatibility rule.
DEFAULT_LEGACY_HEADERLESS = "2025-03-26"

META_VERSION = "io.modelcontextprotocol/protocolVersion"
META_CAPABILITIES = "io.modelcontextprotocol/clientCapabilities"
META_CLIENT_INFO = "io.modelcontextprotocol/clientInfo"
META_SERVER_INFO = "io.modelcontextprotocol/serverInfo"
META_LOG_LEVEL = "io.modelcontextprotocol/logLevel"
META_SUBSCRIPTION_ID = "io.modelcontextprotocol/subscriptionId"

# Methods whose Mcp-Name header mirrors params.name / params.uri.
NAMED_METHODS: Mapping[str, str] = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}


@dataclass(frozen=True, slots=True)
class Rejection:
    """The request's envelope is wrong: answer `status` with this JSON-RPC error."""

    status: int
    code: int
    message: str
    data: object = None


@dataclass(frozen=True, slots=True)
class Detected:
    era: Era
    version: str  # the modern version, or the legacy header's version ("" when not yet negotiated)
    handshake: bool = False  # a legacy initialize


def negotiate_legacy(requested: object) -> str:
    """The version a legacy `initialize` settles on: the client's if we speak it, else our latest."""
    return requested if isinstance(requested, str) and requested in LEGACY_VERSIONS else LATEST_LEGACY


def decode_header_value(value: str) -> str | None:
    """Undo the `=?base64?…?=` sentinel encoding; None when the encoding is broken."""
    if value.startswith("=?base64?") and value.endswith("?=") and len(value) >= 11:
        payload = value[9:-2]
        try:
            raw = base64.b64decode(payload, validate=True)
            if base64.b64encode(raw).decode() != payload:
                return None  # non-canonical padding bits: a corrupt value must never match by accident
            return raw.decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
    return value


# The sentinel encoding is the client side's job too; one implementation serves both directions.
encode_header_value = encode_value


def unsupported_version(requested: object) -> Rejection:
    return Rejection(400, UNSUPPORTED_PROTOCOL_VERSION, "Unsupported protocol version",
                     {"supported": list(ALL_VERSIONS), "requested": requested})


def detect(message: Message, headers: Mapping[str, str], has_session: bool) -> Detected | Rejection:
    """Tell the era of one POSTed message and validate its envelope.

    Like the SDK's servers, the header decides: a version header outside the legacy set means the
    modern pipeline (so `initialize` sent as 2026-07-28 is an unknown method there).
    """
    header_version = headers.get("mcp-protocol-version")
    if header_version is not None and header_version not in LEGACY_VERSIONS:
        return _validate_modern(message, headers, header_version)
    if has_session:
        return Detected("legacy", header_version or DEFAULT_LEGACY_HEADERLESS)
    if message.method == "initialize":
        return Detected("legacy", "", handshake=True)
    if META_VERSION in message.meta:
        return Rejection(400, HEADER_MISMATCH,
                         "Header mismatch: the MCP-Protocol-Version header is required on every request of "
                         "protocol 2026-07-28")
    return Rejection(400, INVALID_REQUEST,
                     "Bad Request: Missing session ID. Send initialize first (protocol 2025-11-25 and earlier), "
                     "or send MCP-Protocol-Version: 2026-07-28 with the per-request _meta envelope")


def _validate_modern(message: Message, headers: Mapping[str, str], header_version: str) -> Detected | Rejection:
    meta = message.meta
    if message.is_request and (META_VERSION not in meta or META_CAPABILITIES not in meta):
        missing = [k for k in (META_VERSION, META_CAPABILITIES) if k not in meta]
        return Rejection(400, INVALID_PARAMS,
                         f"params._meta is missing the required envelope key(s): {', '.join(missing)}")
    meta_version = meta.get(META_VERSION, header_version)
    if meta_version != header_version:
        return Rejection(400, HEADER_MISMATCH,
                         f"Header mismatch: MCP-Protocol-Version header {header_version!r} does not match "
                         f"body value {meta_version!r}")
    if message.is_request:
        method_header = headers.get("mcp-method")
        if method_header is None:
            return Rejection(400, HEADER_MISMATCH, "Header mismatch: the Mcp-Method header is required")
        if method_header != message.method:
            return Rejection(400, HEADER_MISMATCH,
                             f"Header mismatch: Mcp-Method header value {method_header!r} does not match body "
                             f"value {message.method!r}")
        field = NAMED_METHODS.get(message.method)
        if field is not None:
            body_name = message.params.get(field)
            raw = headers.get("mcp-name")
            if raw is None:
                return Rejection(400, HEADER_MISMATCH,
                                 f"Header mismatch: the Mcp-Name header is required for {message.method}")
            name = decode_header_value(raw)
            if name is None:
                return Rejection(400, HEADER_MISMATCH, "Header mismatch: Mcp-Name has a broken base64 encoding")
            if name != body_name:
                return Rejection(400, HEADER_MISMATCH,
                                 f"Header mismatch: Mcp-Name header value {name!r} does not match body value "
                                 f"{body_name!r}")
    if header_version not in MODERN_VERSIONS:
        return unsupported_version(header_version)
    return Detected("modern", header_version)


_HEADER_SAFE = re.compile(r"[\x20-\x7e\t]*")


def check_param_headers(tool: JsonObject, arguments: object, headers: Mapping[str, str]) -> Rejection | None:
    """Validate `Mcp-Param-*` headers against the tool's `x-mcp-header` annotations and the body."""
    specs = tool_param_headers(tool)
    if not specs:
        return None
    return check_param_specs(specs, arguments, headers)


def check_param_specs(specs: list[ParamHeader], arguments: object, headers: Mapping[str, str]) -> Rejection | None:
    """`check_param_headers` with the tool's header specs already extracted (see `tool_param_headers`)."""
    for header, path in specs:
        raw = headers.get(header)
        value: object = arguments
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        decoded = None
        if raw is not None:
            decoded = decode_header_value(raw) if _HEADER_SAFE.fullmatch(raw) else None
            if decoded is None:
                return Rejection(400, HEADER_MISMATCH, f"Header mismatch: {header} has characters a header value "
                                 "cannot carry; send them base64-encoded (=?base64?…?=)")
        if value is None:
            if raw is not None:
                return Rejection(400, HEADER_MISMATCH,
                                 f"Header mismatch: {header} was sent but the arguments carry no {'.'.join(path)}")
            continue
        if raw is None:
            return Rejection(400, HEADER_MISMATCH,
                             f"Header mismatch: {header} is required because the arguments carry {'.'.join(path)}")
        if isinstance(value, bool):
            matches = decoded == ("true" if value else "false")
        elif isinstance(value, int):
            try:
                matches = float(str(decoded)) == value
            except ValueError:
                matches = False
        else:
            matches = decoded == value
        if not matches:
            return Rejection(400, HEADER_MISMATCH,
                             f"Header mismatch: {header} header value {decoded!r} does not match body value {value!r}")
    return None
