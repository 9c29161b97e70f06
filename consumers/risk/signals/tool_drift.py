"""Tool definitions that changed after first sight (the "rug pull": a tool approved as harmless
that later describes itself differently).

Definitions come from `tool_definitions_changed` events (the ingress's catalog emits one, with the
server's whole list, whenever a server's tools change, first sight included) and from upstream
responses to tools/list. Each tool is fingerprinted by SHA-256 over its canonical JSON, per
(server, tool name); the first fingerprint seen is the reference, and any later different one is
drift. A tool that disappears and comes back unchanged is not drift. The reference is kept, so a
tool flapping between two definitions fires on every change away from the first, until an
operator's unblock of the tool makes its latest definition the reference (`accept`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from typing import Any

from consumers.risk.lru import Lru
from consumers.risk.settings import ToolDriftSettings
from consumers.risk.signals.hit import Hit

NAME = "tool_drift"
JsonObject = dict[str, Any]


def definitions_in(payload: bytes) -> list[JsonObject] | None:
    """The tool definitions a `tools/list` result or a `tool_definitions_changed` payload holds.

    None when the payload is not such a message (an error, cut short, not JSON).
    """
    try:
        message = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    if not isinstance(message, dict):
        return None
    result = message.get("result", message)  # a JSON-RPC response, or the catalog's {"tools": [...]}
    tools = result.get("tools") if isinstance(result, dict) else None
    if not isinstance(tools, list):
        return None
    return [t for t in tools if isinstance(t, dict) and isinstance(t.get("name"), str)]


def fingerprint(definition: JsonObject) -> str:
    canonical = json.dumps(definition, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


class ToolDrift:
    name = NAME

    def __init__(self, settings: ToolDriftSettings, max_tools: int) -> None:
        self.settings = settings
        self._first: Lru[tuple[str, str], str] = Lru(max_tools)

    def __len__(self) -> int:
        return len(self._first)

    def observe(self, server: str, definitions: Iterable[tuple[JsonObject, str]]) -> Iterator[tuple[str, Hit]]:
        """(tool name, hit) for each (definition, its `fingerprint`) that differs from the one first seen for it."""
        for definition, digest in definitions:
            name = definition["name"]
            first = self._first.keep((server, name), digest)
            if first != digest:
                yield name, Hit(NAME, 1.0)

    def accept(self, server: str, name: str, digest: str) -> None:
        """Make `digest` the tool's reference (an operator reviewed that definition): no drift for it."""
        self._first.put((server, name), digest)
