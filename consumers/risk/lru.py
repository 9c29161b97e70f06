"""A bounded map that forgets its least recently used entries: the risk state's memory bound.

Eviction depends only on the order of `touch` calls, i.e. on the order of events, so a replay of
the same log evicts the same subjects and stays deterministic.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Lru(OrderedDict[K, V]):
    def __init__(self, limit: int) -> None:
        super().__init__()
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        self.limit = limit

    def touch(self, key: K, factory: Callable[[], V]) -> V:
        """The entry for `key`, made most recent; created with `factory` (evicting the oldest) if absent."""
        value = self.get(key)
        if value is None:
            value = self[key] = factory()
            if len(self) > self.limit:
                self.popitem(last=False)
        else:
            self.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        """Store `value` for `key` as the most recent entry, evicting the oldest beyond the limit."""
        self[key] = value
        self.move_to_end(key)
        if len(self) > self.limit:
            self.popitem(last=False)

    def keep(self, key: K, value: V) -> V:
        """The entry for `key`, made most recent; `value` stored (evicting the oldest) if absent."""
        existing = self.get(key)
        if existing is None:
            self[key] = value
            if len(self) > self.limit:
                self.popitem(last=False)
            return value
        self.move_to_end(key)
        return existing
