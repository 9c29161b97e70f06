"""consumers/risk/signals/rate.py: the current rate against the principal's own baseline."""

from __future__ import annotations

import random

import pytest

from consumers.risk.settings import RequestRateSettings
from consumers.risk.signals.rate import RequestRate
from tests.consumers.risk.builders import SECOND, T0

SUBJECT = ("acme", "alice")


def poisson(rng: random.Random, start: int, rate_per_s: float, duration_s: float) -> list[int]:
    times: list[int] = []
    ts = start
    while True:
        ts += int(rng.expovariate(rate_per_s) * SECOND) + 1
        if ts >= start + duration_s * SECOND:
            return times
        times.append(ts)


def strengths(signal: RequestRate, times: list[int]) -> list[float]:
    return [hit.strength if (hit := signal.observe(SUBJECT, ts)) else 0.0 for ts in times]


# (baseline calls/s, baseline seconds, then calls/s, for seconds, lowest and highest strength at the end)
PHASES = [
    pytest.param(0.2, 300, 40, 5, 1.0, 1.0, id="quiet-then-200-calls-in-5s"),
    pytest.param(0.2, 300, 3, 60, 0.0, 0.0, id="quiet-then-a-few-per-second"),
    pytest.param(20, 300, 20, 60, 0.0, 0.0, id="always-busy"),
    pytest.param(20, 600, 80, 5, 0.5, 1.0, id="busy-then-four-times-busier"),
    pytest.param(0.0, 0, 40, 5, 0.0, 0.0, id="burst-in-the-first-minute-has-no-baseline"),
    pytest.param(2, 300, 9, 30, 0.0, 0.0, id="under-the-absolute-floor"),
]


@pytest.mark.parametrize(("base_rate", "base_s", "rate", "seconds", "low", "high"), PHASES)
def test_strength_after_phases(base_rate: float, base_s: float, rate: float, seconds: float, low: float,
                               high: float) -> None:  # fmt: skip
    rng = random.Random(11)
    signal = RequestRate(RequestRateSettings(), max_subjects=10)
    baseline = poisson(rng, T0, base_rate, base_s) if base_rate else []
    start = T0 + int(base_s * SECOND)
    burst = poisson(rng, start, rate, seconds)
    assert max(strengths(signal, baseline), default=0.0) == 0.0  # learning the baseline never fires
    last = strengths(signal, burst)[-1]
    assert low <= last <= high


def test_an_ordinary_day_never_fires() -> None:
    rng = random.Random(5)
    signal = RequestRate(RequestRateSettings(), max_subjects=10)
    ts, fired = T0, []
    for _ in range(20):  # working sessions of a few calls per second, idle in between
        fired += strengths(signal, times := poisson(rng, ts, rng.uniform(1, 5), rng.uniform(30, 300)))
        ts = (times[-1] if times else ts) + int(rng.uniform(10, 600) * SECOND)
    assert max(fired) == 0.0


def reference_baseline(rates: list[float], alpha: float) -> tuple[float, float]:
    """Mean and standard deviation, folding one bucket at a time: running figures, then the EWMA."""
    mean = var = 0.0
    for n, x in enumerate(rates, 1):
        a = max(alpha, 1 / n)
        diff = x - mean
        mean += a * diff
        var = (1 - a) * (var + diff * a * diff)
    return mean, var**0.5


@pytest.mark.parametrize(("busy", "idle"), [(5, 3), (5, 37), (50, 100), (300, 40)])
def test_idle_buckets_fold_as_zeros(busy: int, idle: int) -> None:
    """The closed forms for idle buckets equal folding zero-rate buckets one by one."""
    settings = RequestRateSettings(baseline_half_life_s=30)  # the EWMA takes over after 44 buckets
    signal = RequestRate(settings, max_subjects=10)
    for i in range(busy):
        for j in range(10):
            signal.observe(SUBJECT, T0 + i * SECOND + j * 1000)
    signal.observe(SUBJECT, T0 + (busy + idle) * SECOND)  # closes the last busy bucket, then the idle ones
    alpha = 1 - 2 ** (-settings.bucket_s / settings.baseline_half_life_s)
    mean, std = reference_baseline([10.0] * busy + [0.0] * idle, alpha)
    got = signal.baseline(SUBJECT)
    assert got is not None
    assert got[0] == pytest.approx(mean, rel=1e-9)
    assert got[1] == pytest.approx(std, rel=1e-6)


def test_a_burst_does_not_become_the_baseline() -> None:
    signal = RequestRate(RequestRateSettings(), max_subjects=10)
    strengths(signal, [T0 + i * 10 * SECOND for i in range(30)])  # one call every 10 s for 5 minutes
    start = T0 + 300 * SECOND
    burst = strengths(signal, [start + i * 25_000 for i in range(800)])  # 40/s for 20 s
    assert min(burst[-400:]) == 1.0
    got = signal.baseline(SUBJECT)
    assert got is not None and got[0] < 2.0


def test_late_events_do_not_decay_backwards() -> None:
    signal = RequestRate(RequestRateSettings(), max_subjects=10)
    strengths(signal, [T0 + i * 10 * SECOND for i in range(30)])
    start = T0 + 300 * SECOND
    strengths(signal, [start + i * 20_000 for i in range(100)])  # 50/s for 2 s
    late = signal.observe(SUBJECT, start)  # from another partition, earlier than the last
    assert late is not None and late.strength > 0


def test_state_is_bounded() -> None:
    signal = RequestRate(RequestRateSettings(), max_subjects=3)
    for i in range(10):
        signal.observe(("acme", f"p{i}"), T0 + i)
    assert len(signal) == 3
    assert signal.baseline(("acme", "p9")) is not None
    assert signal.baseline(("acme", "p0")) is None
