"""Suspicious sequences within a session: a sensitive read, then an outbound call within `window_s`.

The classic exfiltration shape: `read_file` / `get_secret` / a database query / a resources/read,
then `send_email` / `http_request` / `fetch` / `upload` / a webhook. Tool names are normalized
(camelCase and kebab-case to snake_case, lowercased) and matched against the configured patterns
by regex search; the verdict per name is cached, since tool names are few. Sessions without a
session id (the stateless protocol era) are keyed by principal alone, which is the best there is.

Agents whose honest work is exactly this (read a file, post a summary) would score all day, so
with `habituate` a (read, outbound tool) pair the principal has made n times before has strength
1/(1+n): the first exfiltration-shaped sequence counts in full, routine ones fade.
"""

from __future__ import annotations

import re
from collections.abc import Hashable

from consumers.risk.lru import Lru
from consumers.risk.settings import SensitiveSequenceSettings
from consumers.risk.signals.hit import Hit

NAME = "sensitive_sequence"
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_SEPARATORS = re.compile(r"[^a-z0-9]+")
_CACHE_LIMIT = 8192
_MAX_PAIRS = 64  # (read, outbound) pairs remembered per principal; the least repeated go first


def normalize_tool_name(name: str) -> str:
    """`readFile`, `read-file`, `Read File` -> `read_file`."""
    return _SEPARATORS.sub("_", _CAMEL.sub("_", name).lower()).strip("_")


class _Session:
    __slots__ = ("read_at", "read_event", "read_what")

    def __init__(self) -> None:
        self.read_at: int | None = None  # when the latest sensitive read happened
        self.read_event = ""
        self.read_what = ""  # the tool, or "resources/read"


class SensitiveSequence:
    name = NAME

    def __init__(self, settings: SensitiveSequenceSettings, max_sessions: int, max_principals: int) -> None:
        self.settings = settings
        self._window_us = settings.window_s * 1e6
        self._sensitive = [re.compile(p) for p in settings.sensitive_tools]
        self._outbound = [re.compile(p) for p in settings.outbound_tools]
        self._kinds: dict[str, tuple[bool, bool]] = {}
        self._sessions: Lru[tuple[Hashable, str], _Session] = Lru(max_sessions)
        self._habits: Lru[Hashable, dict[tuple[str, str], int]] = Lru(max_principals)

    def __len__(self) -> int:
        return len(self._sessions)

    def classify(self, tool: str) -> tuple[bool, bool]:
        """(is sensitive, is outbound) for a tool name."""
        kinds = self._kinds.get(tool)
        if kinds is None:
            norm = normalize_tool_name(tool)
            kinds = (any(p.search(norm) for p in self._sensitive), any(p.search(norm) for p in self._outbound))
            if len(self._kinds) >= _CACHE_LIMIT:
                self._kinds.clear()
            self._kinds[tool] = kinds
        return kinds

    def observe(
        self, principal: Hashable, session_id: str, method: str, tool: str, ts_us: int, event_id: str = ""
    ) -> Hit | None:
        """One agent request; a hit when it is an outbound call soon after a sensitive read in its session."""
        if method == "tools/call":
            sensitive, outbound = self.classify(tool)
        elif method == "resources/read":
            sensitive, outbound = self.settings.resource_reads_are_sensitive, False
        else:
            return None
        if not (sensitive or outbound):
            return None
        key = (principal, session_id)
        hit = None
        if outbound:
            state = self._sessions.get(key)
            if state is not None and state.read_at is not None and 0 <= ts_us - state.read_at <= self._window_us:
                strength = self._novelty(principal, (state.read_what, tool))
                hit = Hit(NAME, strength, (state.read_event,) if state.read_event else ())
        if sensitive:
            # Recorded after the outbound check: one tool both reading and sending is not a sequence.
            state = self._sessions.touch(key, _Session)
            state.read_at = ts_us
            state.read_event = event_id
            state.read_what = tool if method == "tools/call" else method
        return hit

    def _novelty(self, principal: Hashable, pair: tuple[str, str]) -> float:
        """1 for a (read, outbound) pair new to the principal, 1/(1+n) after n times (with `habituate`)."""
        if not self.settings.habituate:
            return 1.0
        habits = self._habits.touch(principal, dict)
        seen = habits.get(pair, 0)
        if not seen and len(habits) >= _MAX_PAIRS:
            del habits[min(habits, key=habits.__getitem__)]
        habits[pair] = seen + 1
        return 1.0 / (1 + seen)
