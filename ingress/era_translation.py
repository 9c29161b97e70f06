"""Translating the envelope between protocol eras (pure).

Modern agents get `resultType`, `ttlMs`, `cacheScope` and the answering server's identity on
results from legacy upstreams; legacy agents never see those keys, and legacy upstreams never see
modern `_meta` keys (the modern connector adds its own envelope).
"""

from __future__ import annotations

from collections.abc import Callable

from mcp_types import INVALID_PARAMS

from ingress.aggregate import LIST_METHODS
from ingress.eras import META_SERVER_INFO
from ingress.jsonrpc import JsonObject

CACHEABLE = frozenset({*LIST_METHODS, "resources/read", "server/discover"})
RESOURCE_NOT_FOUND_LEGACY = -32002
MODERN_ONLY_RESULT_KEYS = ("resultType", "ttlMs", "cacheScope")
_MODERN_META_PREFIX = "io.modelcontextprotocol/"


def needs_input(response: JsonObject) -> bool:
    result = response.get("result")
    return isinstance(result, dict) and result.get("resultType") == "input_required"


def for_legacy_upstream(body: JsonObject) -> JsonObject:
    """`body` without the modern `_meta` keys (a new dict only when there are some)."""
    params = body.get("params")
    if not isinstance(params, dict):
        return body
    meta = params.get("_meta")
    if not isinstance(meta, dict):
        return body
    for key in meta:  # a loop, not any(<generator>): most bodies hold one key or none
        if key.startswith(_MODERN_META_PREFIX):
            break
    else:
        return body
    kept = {k: v for k, v in meta.items() if not k.startswith(_MODERN_META_PREFIX)}
    new_params = {k: v for k, v in params.items() if k != "_meta"}
    if kept:
        new_params["_meta"] = kept
    return {**body, "params": new_params}


def modernize(method: str, body: JsonObject, server_info: Callable[[str], JsonObject], target: str,
              ttl_ms: int) -> None:
    """Give an answer to a modern agent the modern result keys, in place.

    `server_info(target)` is called only when the result does not name its server already.
    """
    result = body.get("result")
    if isinstance(result, dict):
        meta = result.get("_meta")
        if not isinstance(meta, dict) or META_SERVER_INFO not in meta:
            result["_meta"] = {**(meta if isinstance(meta, dict) else {}), META_SERVER_INFO: server_info(target)}
        if result.setdefault("resultType", "complete") != "complete":
            return  # input_required results carry no cache hints
        if method in CACHEABLE:
            result.setdefault("ttlMs", ttl_ms)
            result.setdefault("cacheScope", "private")
        return
    error = body.get("error")
    if isinstance(error, dict) and error.get("code") == RESOURCE_NOT_FOUND_LEGACY and method == "resources/read":
        error["code"] = INVALID_PARAMS


def legacy_answer(body: JsonObject) -> None:
    """Take the modern-only result keys out of an answer to a legacy agent, in place."""
    result = body.get("result")
    if isinstance(result, dict):
        for key in MODERN_ONLY_RESULT_KEYS:
            result.pop(key, None)
