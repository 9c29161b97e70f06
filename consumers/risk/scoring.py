"""One subject's score: decaying per-signal contributions, and when it is worth publishing.

A hit of strength s from a signal of weight w raises that signal's contribution to at least w*s
(`level` signals: the current rate, the worst recent payload) or by w*s (`accumulating` signals:
each injection marker adds), never above w. All contributions
halve every `half_life_s`; the score is their sum, rounded and clamped to 0..100.

The publication rule (so that a busy subject does not produce a row per event):

- a new reason (a signal over the floor that the last published score did not name): at once;
- otherwise, at most once per `emit_interval_s` per subject, when a signal fired on this event or
  the score moved by at least `emit_delta` since the last published one (decay included).

The engine always publishes the score that goes with a block decision.
"""

from __future__ import annotations

from collections import deque

from schemas.risk import MAX_SCORE, MIN_SCORE

_NEGLIGIBLE = 0.01  # contributions below this are dropped, so idle subjects empty out


class SubjectScore:
    __slots__ = (
        "at", "contributions", "evaluated_at", "evidence", "published_at", "published_reasons", "published_score",
        "since",
    )  # fmt: skip

    def __init__(self, max_evidence: int) -> None:
        self.contributions: dict[str, float] = {}  # signal -> contribution as of `at`
        self.at = 0
        self.since: int | None = None  # when the contributions last became non-empty
        self.evidence: deque[str] = deque(maxlen=max_evidence)  # ids of recent events that fired
        self.evaluated_at: int | None = None
        self.published_at: int | None = None
        self.published_score = 0
        self.published_reasons: frozenset[str] = frozenset()

    def decay(self, ts_us: int, half_life_us: float) -> None:
        dt = ts_us - self.at
        if dt <= 0:  # a late event: no decay backwards
            return
        self.at = ts_us
        if not self.contributions:
            return
        factor = 2.0 ** (-dt / half_life_us)
        kept = {k: v * factor for k, v in self.contributions.items() if v * factor >= _NEGLIGIBLE}
        self.contributions = kept
        if not kept:
            self.since = None

    def add(self, signal: str, amount: float, cap: float, accumulating: bool, ts_us: int) -> None:
        if amount < _NEGLIGIBLE:
            return
        current = self.contributions.get(signal, 0.0)
        new = min(cap, current + amount) if accumulating else min(cap, max(current, amount))
        if new > current:
            if not self.contributions:
                self.since = ts_us
            self.contributions[signal] = new

    def total(self) -> int:
        value = sum(self.contributions.values())
        return max(MIN_SCORE, min(MAX_SCORE, int(value + 0.5)))

    def reasons(self, floor: float) -> list[str]:
        """Signals contributing at least `floor`, largest first (ties by name, for determinism)."""
        over = [(v, k) for k, v in self.contributions.items() if v >= floor]
        return [k for _, k in sorted(over, key=lambda vk: (-vk[0], vk[1]))]

    def due(self, score: int, reasons: list[str], fired: bool, ts_us: int, delta: int, interval_us: float) -> bool:
        """Whether this score should be published now (the rule in the module docstring)."""
        if not self.published_reasons.issuperset(reasons):
            return True
        if self.published_at is not None and ts_us - self.published_at < interval_us:
            return False
        return fired or abs(score - self.published_score) >= delta

    def published(self, score: int, reasons: list[str], ts_us: int) -> None:
        self.published_at = ts_us
        self.published_score = score
        self.published_reasons = frozenset(reasons)
