"""Request-rate anomaly: a principal calling far faster than it usually does.

Two estimates per subject, both O(1) per request:

- the current rate, an exponentially weighted moving average over about `window_s` (each request
  adds 1 to a counter that decays with time constant `window_s`; counter / window_s is the rate);
- the baseline, the mean and variance of per-`bucket_s` rates: exact running figures over the
  first buckets, an EWMA with half-life `baseline_half_life_s` once there are more (a plain EWMA
  started at zero would take that long to believe a busy principal is busy). Idle buckets count
  as zeros, folded in closed form however many passed.

Strength is the lesser of two ramps: the current rate between `min_rate_per_s` and
`full_rate_per_s` (an absolute floor, so a quiet principal making a few calls is never a spike),
and its z-score against the baseline between `z_min` and `z_full` (so a principal that is always
busy is judged against itself). A subject first seen less than `warmup_s` ago has no baseline to
judge by and never fires: an automated client's first minute is not a burst. (Forgetting a
subject, beyond the state bound, starts its warm-up again.)
"""

from __future__ import annotations

import math
from collections.abc import Hashable

from consumers.risk.lru import Lru
from consumers.risk.settings import RequestRateSettings
from consumers.risk.signals.hit import Hit, ramp

NAME = "request_rate"


class _Rate:
    __slots__ = ("at", "bucket", "count", "current", "first", "mean", "n", "var")

    def __init__(self, ts_us: int, bucket: int) -> None:
        self.first = ts_us
        self.current = 0.0  # decaying request counter
        self.at = ts_us  # when `current` was last decayed
        self.bucket = bucket  # the bucket being counted
        self.count = 0
        self.mean = 0.0  # baseline: per-bucket rates (requests per second)
        self.var = 0.0
        self.n = 0  # buckets folded into the baseline


class RequestRate:
    name = NAME

    def __init__(self, settings: RequestRateSettings, max_subjects: int) -> None:
        self.settings = settings
        self._tau_us = settings.window_s * 1e6
        self._bucket_us = max(1, int(settings.bucket_s * 1e6))
        self._alpha = 1.0 - 2.0 ** (-settings.bucket_s / settings.baseline_half_life_s)
        self._running = math.ceil(1.0 / self._alpha)  # buckets averaged exactly before the EWMA takes over
        self._floor2 = settings.std_floor_per_s**2
        self._warmup_us = settings.warmup_s * 1e6
        self._state: Lru[Hashable, _Rate] = Lru(max_subjects)

    def __len__(self) -> int:
        return len(self._state)

    def observe(self, subject: Hashable, ts_us: int) -> Hit | None:
        """Count one request of `subject` at `ts_us`; a hit when the current rate is anomalous."""
        bucket = ts_us // self._bucket_us
        state = self._state.get(subject)
        if state is None:
            state = self._state.touch(subject, lambda: _Rate(ts_us, bucket))
        else:
            self._state.move_to_end(subject)
        if bucket > state.bucket:
            self._fold(state, bucket)
        state.count += 1
        dt = ts_us - state.at
        if dt > 0:  # events from other partitions may arrive slightly late: never decay backwards
            state.current *= math.exp(-dt / self._tau_us)
            state.at = ts_us
        state.current += 1.0
        s = self.settings
        rate = state.current / s.window_s
        if rate <= s.min_rate_per_s or ts_us - state.first < self._warmup_us:
            return None
        z = (rate - state.mean) / math.sqrt(state.var + self._floor2)
        strength = min(ramp(rate, s.min_rate_per_s, s.full_rate_per_s), ramp(z, s.z_min, s.z_full))
        return Hit(NAME, strength) if strength > 0.0 else None

    def forgive(self, subject: Hashable) -> None:
        """Drop `subject`'s current rate, keeping its baseline (an operator lifted the block a burst
        caused: the burst's echo in the decaying rate must not block it again at its next call)."""
        state = self._state.get(subject)
        if state is not None:
            state.current = 0.0

    def baseline(self, subject: Hashable) -> tuple[float, float] | None:
        """(mean, standard deviation) of `subject`'s per-bucket rate, for inspection and tests."""
        state = self._state.get(subject)
        return None if state is None else (state.mean, math.sqrt(state.var))

    def _fold(self, state: _Rate, bucket: int) -> None:
        """Close the counted bucket into the baseline, then the idle buckets after it."""
        rate = state.count / self.settings.bucket_s
        if state.n:
            # Learned at most at z_full: a burst must not teach the baseline that bursts are normal
            # (its variance would soon hide the burst itself). Real growth is still learned, slowly.
            rate = min(rate, state.mean + self.settings.z_full * math.sqrt(state.var + self._floor2))
        state.n += 1
        a = max(self._alpha, 1.0 / state.n)  # 1/n: the running mean and variance, exactly
        diff = rate - state.mean
        incr = a * diff
        state.mean += incr
        state.var = (1.0 - a) * (state.var + diff * incr)
        idle = bucket - state.bucket - 1
        if idle > 0:
            self._fold_zeros(state, idle)
        state.bucket = bucket
        state.count = 0

    def _fold_zeros(self, state: _Rate, k: int) -> None:
        if state.n < self._running:
            # Appending j zeros to n values of mean m and variance v: mean n·m/(n+j), and the mean
            # square n·(v + m²)/(n+j) less the new mean squared.
            j = min(k, self._running - state.n)
            n, m = state.n, state.mean
            total = n + j
            state.mean = m * n / total
            state.var = max(0.0, n * (state.var + m * m) / total - state.mean * state.mean)
            state.n = total
            k -= j
        if k > 0:
            # k zeros through the EWMA: mean·b^k and b^k·(var + mean²·(1 - b^k)), b = 1 - alpha.
            bk = (1.0 - self._alpha) ** k
            state.var = bk * (state.var + state.mean * state.mean * (1.0 - bk))
            state.mean *= bk
            state.n += k
