"""consumers/risk/signals/auth_failures.py: bursts of unauthenticated refusals per client address."""

from __future__ import annotations

import pytest

from consumers.risk.settings import AuthFailuresSettings
from consumers.risk.signals.auth_failures import AuthFailures
from tests.consumers.risk.builders import SECOND, T0


# (failures, seconds apart, strength of the last one; None: no hit)
@pytest.mark.parametrize(
    ("failures", "apart_s", "strength"),
    [(2, 1, None), (5, 0.1, None), (6, 0.1, 0.05), (20, 10, None), (20, 0.5, 0.87), (25, 0.1, 1.0), (100, 60, None),
     (12, 0.01, 7 / 15)],
)  # fmt: skip
def test_bursts(failures: int, apart_s: float, strength: float | None) -> None:
    signal = AuthFailures(AuthFailuresSettings(), max_clients=10)
    hit = None
    for i in range(failures):
        hit = signal.observe("203.0.113.9", T0 + int(i * apart_s * SECOND))
    if strength is None:
        assert hit is None or hit.strength < 0.25
    else:
        assert hit is not None and hit.strength == pytest.approx(strength, abs=0.05)


def test_clients_are_counted_apart() -> None:
    signal = AuthFailures(AuthFailuresSettings(), max_clients=10)
    for i in range(30):
        signal.observe(f"203.0.113.{i}", T0 + i * 1000)
    assert signal.observe("203.0.113.99", T0 + 31_000) is None


def test_state_is_bounded() -> None:
    signal = AuthFailures(AuthFailuresSettings(), max_clients=4)
    for i in range(10):
        signal.observe(f"203.0.113.{i}", T0)
    assert len(signal) == 4
