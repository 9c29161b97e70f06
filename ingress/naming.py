"""How upstream tools and prompts are named on the aggregated endpoint (pure).

Default: `server__tool`, because several client platforms accept only `[A-Za-z0-9_-]{1,64}`.
Mode `none` exposes names unprefixed (first server in config order wins a clash). Names that
would exceed `max_length` are shortened with a stable hash suffix, so they stay unique.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

NamingMode = Literal["prefix", "none"]


@dataclass(frozen=True, slots=True)
class Naming:
    separator: str = "__"
    mode: NamingMode = "prefix"
    max_length: int = 64

    def expose(self, server: str, name: str) -> str:
        exposed = f"{server}{self.separator}{name}" if self.mode == "prefix" else name
        if len(exposed) <= self.max_length:
            return exposed
        digest = hashlib.sha256(f"{server}\0{name}".encode()).hexdigest()[:8]
        return f"{exposed[: self.max_length - 9]}-{digest}"

    def split(self, exposed: str, servers: Sequence[str]) -> tuple[str, str] | None:
        """Recover (server, name) from a prefixed name without a catalog; None when no server matches.

        The longest matching server name wins, so `a__b` and `a` can both be servers.
        """
        if self.mode != "prefix":
            return None
        best: str | None = None
        for server in servers:
            prefix = server + self.separator
            if exposed.startswith(prefix) and len(exposed) > len(prefix) and (
                best is None or len(server) > len(best)
            ):
                best = server
        if best is None:
            return None
        return best, exposed[len(best) + len(self.separator):]
