"""Bursts of authentication failures from one client address.

Unauthenticated refusals carry no principal (the ingress records them as `anonymous`), so they
are counted per client address: a counter that decays with time constant `window_s`, +1 per
failure. Strength ramps from `min_failures` to `full_failures` of that decayed count, so a user
mistyping a key twice is nothing and a credential-stuffing run is strength 1 within seconds.
"""

from __future__ import annotations

import math

from consumers.risk.lru import Lru
from consumers.risk.settings import AuthFailuresSettings
from consumers.risk.signals.hit import Hit, ramp

NAME = "auth_failures"


class _Failures:
    __slots__ = ("at", "count")

    def __init__(self, ts_us: int) -> None:
        self.count = 0.0
        self.at = ts_us


class AuthFailures:
    name = NAME

    def __init__(self, settings: AuthFailuresSettings, max_clients: int) -> None:
        self.settings = settings
        self._tau_us = settings.window_s * 1e6
        self._state: Lru[str, _Failures] = Lru(max_clients)

    def __len__(self) -> int:
        return len(self._state)

    def observe(self, client: str, ts_us: int) -> Hit | None:
        """Count one authentication failure from `client`; a hit when they come in a burst."""
        state = self._state.touch(client, lambda: _Failures(ts_us))
        dt = ts_us - state.at
        if dt > 0:
            state.count *= math.exp(-dt / self._tau_us)
            state.at = ts_us
        state.count += 1.0
        strength = ramp(state.count, self.settings.min_failures, self.settings.full_failures)
        return Hit(NAME, strength) if strength > 0.0 else None
