"""consumers/risk/scoring.py and lru.py: decaying contributions, the publication rule, bounded maps."""

from __future__ import annotations

import pytest

from consumers.risk.lru import Lru
from consumers.risk.scoring import SubjectScore
from tests.consumers.risk.builders import SECOND, T0

HALF_LIFE = 300 * SECOND

# (signal amounts added at the same instant, accumulating?, the resulting contribution)
ADD_TABLE = [
    ([30.0], False, 30.0),
    ([30.0, 20.0], False, 30.0),  # a level: the strongest recent one
    ([20.0, 30.0], False, 30.0),
    ([30.0, 20.0], True, 50.0),  # accumulating: each adds
    ([60.0, 60.0], True, 90.0),  # never above the weight
    ([0.001], False, None),  # negligible
]


@pytest.mark.parametrize(("amounts", "accumulating", "contribution"), ADD_TABLE)
def test_add(amounts: list[float], accumulating: bool, contribution: float | None) -> None:
    score = SubjectScore(max_evidence=4)
    for amount in amounts:
        score.add("x", amount, 90.0, accumulating, T0)
    assert score.contributions.get("x") == contribution


@pytest.mark.parametrize(("after_s", "value"), [(0, 80), (300, 40), (600, 20), (3000, 0)])
def test_decay_halves_every_half_life(after_s: int, value: int) -> None:
    score = SubjectScore(max_evidence=4)
    score.add("a", 60.0, 90.0, False, T0)
    score.add("b", 20.0, 90.0, False, T0)
    score.at = T0
    score.decay(T0 + after_s * SECOND, HALF_LIFE)
    assert score.total() == value


def test_decay_empties_and_never_runs_backwards() -> None:
    score = SubjectScore(max_evidence=4)
    score.add("a", 50.0, 90.0, False, T0)
    score.at = T0
    score.decay(T0 - 100 * SECOND, HALF_LIFE)  # a late event
    assert score.total() == 50
    score.decay(T0 + 20 * HALF_LIFE, HALF_LIFE)
    assert score.contributions == {} and score.since is None


def test_total_is_clamped() -> None:
    score = SubjectScore(max_evidence=4)
    for name in "abc":
        score.add(name, 90.0, 90.0, False, T0)
    assert score.total() == 100


def test_reasons_largest_first_over_the_floor() -> None:
    score = SubjectScore(max_evidence=4)
    for name, amount in [("b", 10.0), ("a", 10.0), ("c", 40.0), ("d", 0.5)]:
        score.add(name, amount, 90.0, False, T0)
    assert score.reasons(1.0) == ["c", "a", "b"]


# (published before: score, reasons, seconds ago | None; now: score, reasons, fired; due?)
DUE_TABLE = [
    ("first-reason", None, (30, ["rate"], True), True),
    ("new-reason-at-once", (30, ["rate"], 0.1), (35, ["rate", "pii"], True), True),
    ("same-reason-too-soon", (30, ["rate"], 0.5), (60, ["rate"], True), False),
    ("same-reason-later", (30, ["rate"], 1.5), (31, ["rate"], True), True),
    ("decayed-a-little", (30, ["rate"], 10), (27, ["rate"], False), False),
    ("decayed-enough", (30, ["rate"], 10), (25, ["rate"], False), True),
    ("reason-gone", (30, ["rate", "pii"], 10), (28, ["rate"], False), False),
]  # fmt: skip


@pytest.mark.parametrize(("before", "now", "due"), [pytest.param(b, n, d, id=name) for name, b, n, d in DUE_TABLE])
def test_due(before: tuple[int, list[str], float] | None, now: tuple[int, list[str], bool], due: bool) -> None:
    score = SubjectScore(max_evidence=4)
    ts = T0 + 100 * SECOND
    if before is not None:
        score.published(before[0], before[1], ts - int(before[2] * SECOND))
    assert score.due(now[0], now[1], now[2], ts, delta=5, interval_us=SECOND) is due


def test_evidence_is_bounded() -> None:
    score = SubjectScore(max_evidence=3)
    score.evidence.extend(f"e{i}" for i in range(10))
    assert list(score.evidence) == ["e7", "e8", "e9"]


def test_lru_evicts_the_least_recently_touched() -> None:
    lru: Lru[str, int] = Lru(3)
    for key in "abc":
        lru.touch(key, lambda: 0)
    lru.touch("a", lambda: 1)  # a is recent again, keeps its value
    lru.keep("d", 4)
    assert list(lru) == ["c", "a", "d"] and lru["a"] == 0
    lru.put("e", 5)
    assert list(lru) == ["a", "d", "e"]
    assert lru.keep("a", 9) == 0 and list(lru) == ["d", "e", "a"]
    with pytest.raises(ValueError):
        Lru(0)
