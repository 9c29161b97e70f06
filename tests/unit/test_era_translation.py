"""ingress/era_translation.py: the envelope between protocol eras."""

from __future__ import annotations

from collections.abc import Callable

from mcp_types import INVALID_PARAMS

from ingress.era_translation import (
    RESOURCE_NOT_FOUND_LEGACY,
    for_legacy_upstream,
    legacy_answer,
    modernize,
    needs_input,
)
from ingress.eras import META_SERVER_INFO
from ingress.jsonrpc import JsonObject

SERVER = {"name": "time", "version": "1"}


def _info_of(asked: list[str]) -> Callable[[str], JsonObject]:
    def server_info(target: str) -> JsonObject:
        asked.append(target)
        return SERVER

    return server_info


def test_modernize_adds_result_type_cache_hints_and_identity() -> None:
    asked: list[str] = []
    body: JsonObject = {"jsonrpc": "2.0", "id": 1, "result": {"tools": []}}
    modernize("tools/list", body, _info_of(asked), "time", 60000)
    assert body["result"] == {"tools": [], "_meta": {META_SERVER_INFO: SERVER}, "resultType": "complete",
                              "ttlMs": 60000, "cacheScope": "private"}
    assert asked == ["time"]


def test_modernize_keeps_a_named_server_and_gives_calls_no_cache_hints() -> None:
    asked: list[str] = []
    theirs = {"name": "up", "version": "2"}
    body: JsonObject = {"id": 1, "result": {"content": [], "_meta": {META_SERVER_INFO: theirs, "k": 1}}}
    modernize("tools/call", body, _info_of(asked), "", 60000)
    assert body["result"] == {"content": [], "_meta": {META_SERVER_INFO: theirs, "k": 1}, "resultType": "complete"}
    assert asked == []  # the identity is only looked up when missing


def test_modernize_leaves_input_required_without_cache_hints() -> None:
    body: JsonObject = {"id": 1, "result": {"resultType": "input_required", "inputRequests": {}}}
    modernize("resources/read", body, _info_of([]), "", 1000)
    assert "ttlMs" not in body["result"] and needs_input(body)


def test_modernize_maps_the_legacy_resource_not_found_code() -> None:
    body: JsonObject = {"id": 1, "error": {"code": RESOURCE_NOT_FOUND_LEGACY, "message": "no"}}
    modernize("resources/read", body, _info_of([]), "", 1000)
    assert body["error"]["code"] == INVALID_PARAMS
    other: JsonObject = {"id": 1, "error": {"code": RESOURCE_NOT_FOUND_LEGACY, "message": "no"}}
    modernize("tools/call", other, _info_of([]), "", 1000)
    assert other["error"]["code"] == RESOURCE_NOT_FOUND_LEGACY


def test_legacy_answer_drops_modern_only_keys() -> None:
    body: JsonObject = {"id": 1, "result": {"resultType": "complete", "ttlMs": 5, "cacheScope": "private", "x": 1}}
    legacy_answer(body)
    assert body == {"id": 1, "result": {"x": 1}}


def test_for_legacy_upstream_strips_only_the_modern_meta_keys() -> None:
    body: JsonObject = {"id": 1, "method": "tools/call", "params": {
        "name": "t", "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "progressToken": 7}}}
    assert for_legacy_upstream(body) == {"id": 1, "method": "tools/call",
                                         "params": {"name": "t", "_meta": {"progressToken": 7}}}
    only_modern: JsonObject = {"id": 1, "params": {"name": "t", "_meta": {"io.modelcontextprotocol/x": 1}}}
    assert for_legacy_upstream(only_modern) == {"id": 1, "params": {"name": "t"}}
    plain: JsonObject = {"id": 1, "params": {"name": "t", "_meta": {"progressToken": 7}}}
    assert for_legacy_upstream(plain) is plain  # nothing to strip: the very same message
