"""A tool rare for this principal: one it has never (or almost never) called before.

Judged only once the principal has made `min_history` calls: before that every tool is new and
nothing is rare. Strength is 1 for a tool never seen, falling linearly to 0 at `rare_fraction` of
the principal's calls. Counts are halved when they grow large, so habits change over time and
the state stays small; beyond `max_tools_per_principal` the least-used tool is forgotten.
"""

from __future__ import annotations

from collections.abc import Hashable

from consumers.risk.lru import Lru
from consumers.risk.settings import RareToolSettings
from consumers.risk.signals.hit import Hit

NAME = "rare_tool"
_HALVE_AT = 4096  # total calls; halving keeps each tool's share while old habits fade


class _History:
    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts: dict[Hashable, int] = {}
        self.total = 0


class RareTool:
    name = NAME

    def __init__(self, settings: RareToolSettings, max_subjects: int) -> None:
        self.settings = settings
        self._state: Lru[Hashable, _History] = Lru(max_subjects)

    def __len__(self) -> int:
        return len(self._state)

    def observe(self, subject: Hashable, tool: Hashable) -> Hit | None:
        """Count one call of `tool` by `subject`; a hit when the tool was rare for it until now."""
        history = self._state.touch(subject, _History)
        counts = history.counts
        seen = counts.get(tool, 0)
        hit = None
        s = self.settings
        if history.total >= s.min_history:
            share = seen / history.total
            if share < s.rare_fraction:
                hit = Hit(NAME, 1.0 - share / s.rare_fraction)
        if not seen and len(counts) >= s.max_tools_per_principal:
            del counts[min(counts, key=counts.__getitem__)]  # the least used; first of equals, by insertion
        counts[tool] = seen + 1
        history.total += 1
        if history.total >= _HALVE_AT:
            history.counts = {k: c // 2 for k, c in counts.items() if c > 1}
            history.total = sum(history.counts.values())
        return hit
