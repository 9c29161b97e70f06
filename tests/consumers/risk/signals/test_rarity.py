"""consumers/risk/signals/rarity.py: a tool this principal (almost) never calls."""

from __future__ import annotations

import pytest

from consumers.risk.settings import RareToolSettings
from consumers.risk.signals.rarity import RareTool

WHO = ("acme", "alice")


def history(signal: RareTool, calls: dict[str, int]) -> None:
    for tool, n in calls.items():
        for _ in range(n):
            signal.observe(WHO, ("notes", tool))


# (calls made before, the next tool, expected strength; None: no hit)
TABLE = [
    pytest.param({"search": 49}, "delete_all", None, id="too-little-history"),
    pytest.param({"search": 50}, "delete_all", 1.0, id="never-seen"),
    pytest.param({"search": 50}, "search", None, id="habitual"),
    pytest.param({"search": 199, "export": 1}, "export", 0.5, id="once-in-200-is-half-rare"),
    pytest.param({"search": 99, "export": 1}, "export", None, id="once-in-100-is-the-limit"),
    pytest.param({"search": 30, "get": 30, "list": 30}, "get", None, id="varied-habits"),
]


@pytest.mark.parametrize(("calls", "tool", "strength"), TABLE)
def test_rarity(calls: dict[str, int], tool: str, strength: float | None) -> None:
    signal = RareTool(RareToolSettings(), max_subjects=10)
    history(signal, calls)
    hit = signal.observe(WHO, ("notes", tool))
    assert (hit.strength if hit else None) == (pytest.approx(strength) if strength is not None else None)


def test_tools_are_told_apart_by_server() -> None:
    signal = RareTool(RareToolSettings(), max_subjects=10)
    history(signal, {"search": 60})
    hit = signal.observe(WHO, ("web", "search"))
    assert hit is not None and hit.strength == 1.0


def test_principals_are_judged_apart() -> None:
    signal = RareTool(RareToolSettings(), max_subjects=10)
    history(signal, {"search": 60})
    assert signal.observe(("acme", "bob"), ("notes", "delete_all")) is None  # bob has no history yet
    assert signal.observe(("other-tenant", "alice"), ("notes", "delete_all")) is None


def test_the_least_used_tool_is_forgotten_beyond_the_bound() -> None:
    signal = RareTool(RareToolSettings(max_tools_per_principal=3, rare_fraction=0.05), max_subjects=10)
    history(signal, {"a": 40, "b": 30, "c": 2})
    signal.observe(WHO, ("notes", "d"))  # a fourth tool evicts the least used: c
    hit = signal.observe(WHO, ("notes", "c"))
    assert hit is not None and hit.strength == 1.0


def test_counts_are_halved_when_large() -> None:
    """Old habits fade: a tool used 10 times long ago is rare again after thousands of other calls."""
    signal = RareTool(RareToolSettings(), max_subjects=10)
    history(signal, {"export": 10, "search": 5000})
    hit = signal.observe(WHO, ("notes", "export"))
    assert hit is not None and hit.strength > 0.5


def test_state_is_bounded() -> None:
    signal = RareTool(RareToolSettings(), max_subjects=2)
    for i in range(5):
        signal.observe(("acme", f"p{i}"), ("notes", "search"))
    assert len(signal) == 2
