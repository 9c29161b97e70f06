"""The 2026-07-28 Streamable HTTP request-metadata headers a client must send.

`Mcp-Method`/`Mcp-Name` mirror the body, and `Mcp-Param-{Name}` mirrors tool arguments whose
input-schema property carries `x-mcp-header`. Values that are not plain header-safe ASCII are
sent in the `=?base64?…?=` sentinel form.
"""

from __future__ import annotations

import base64
import re
from typing import Any

__all__ = ["NAME_PARAM", "ParamHeader", "encode_value", "param_headers", "tool_param_headers"]

# Which params field `Mcp-Name` mirrors, per method.
NAME_PARAM = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}

_SAFE = re.compile(r"[\x20-\x7e\t]*")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_MAX_SAFE_INT = 2**53 - 1

ParamHeader = tuple[str, tuple[str, ...]]  # (header name, property path into the arguments)


def encode_value(value: str) -> str:
    if (
        _SAFE.fullmatch(value)
        and value == value.strip(" \t")
        and not (value.startswith("=?base64?") and value.endswith("?="))
    ):
        return value
    return "=?base64?" + base64.b64encode(value.encode()).decode("ascii") + "?="


def _walk(schema: Any, path: tuple[str, ...], out: list[ParamHeader], seen: set[str]) -> bool:
    """Collect annotations reachable through `properties` only; False when one is invalid."""
    if not isinstance(schema, dict):
        return True
    properties = schema.get("properties")
    if not isinstance(properties, dict):
        return True
    for key, sub in properties.items():
        if not isinstance(sub, dict):
            continue
        name = sub.get("x-mcp-header")
        if name is not None:
            if not isinstance(name, str) or not _TOKEN.fullmatch(name) or name.lower() in seen:
                return False
            if sub.get("type") not in ("string", "integer", "boolean"):
                return False
            seen.add(name.lower())
            out.append(("Mcp-Param-" + name, (*path, key)))
        if not _walk(sub, (*path, key), out, seen):
            return False
    return True


def tool_param_headers(tool: Any) -> list[ParamHeader] | None:
    """The `Mcp-Param-*` headers a tool's calls need; None when its annotations are invalid."""
    if not isinstance(tool, dict):
        return []
    out: list[ParamHeader] = []
    return out if _walk(tool.get("inputSchema"), (), out, set()) else None


def param_headers(arguments: Any, specs: list[ParamHeader]) -> list[tuple[str, str]]:
    headers: list[tuple[str, str]] = []
    for header, path in specs:
        value: Any = arguments
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if value is None:
            continue  # absent or null: the header is omitted
        if isinstance(value, bool):
            headers.append((header, "true" if value else "false"))
        elif isinstance(value, int) and abs(value) <= _MAX_SAFE_INT:
            headers.append((header, str(value)))
        elif isinstance(value, str):
            headers.append((header, encode_value(value)))
    return headers
