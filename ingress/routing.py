"""Which upstream owns a tool, prompt or resource URI (pure).

Tools and prompts are found by their exposed name in the catalog (or, before any catalog exists,
by splitting the `server__` prefix). Resources are routed by URI: an exact match from some
server's resources/list first, then the first server whose resource template matches.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

from ingress.naming import Naming


class Route(NamedTuple):
    """A tuple, so that the catalog's index (exposed name -> (server, name)) holds routes ready
    to hand out: routing a listed name builds nothing."""

    server: str
    name: str  # the upstream's own name (tool, prompt) or the URI


@dataclass(frozen=True, slots=True)
class NotRouted:
    """Nothing owns the name: the error names it and the servers that were searched."""

    what: str  # "tool" | "prompt" | "resource"
    name: str
    searched: tuple[str, ...]

    @property
    def message(self) -> str:
        where = ", ".join(self.searched) if self.searched else "no servers are available"
        return f"unknown {self.what} {self.name!r}: searched {where}"


_EXPR = re.compile(r"\{([+#./;?&]?)([^}]*)\}")


@lru_cache(maxsize=4096)
def template_regex(template: str) -> re.Pattern[str]:
    """A regex matching URIs produced by an RFC 6570 template (operators approximated)."""
    parts: list[str] = []
    pos = 0
    for match in _EXPR.finditer(template):
        parts.append(re.escape(template[pos : match.start()]))
        op = match.group(1)
        if op in ("+", "#"):
            parts.append(".*")
        elif op in ("/", "."):
            parts.append(rf"(?:\{op}[^/?#]*)*")
        elif op in ("?", "&"):
            parts.append(r"(?:[?&][^#]*)?")
        elif op == ";":
            parts.append(r"(?:;[^/?#]*)*")
        else:
            parts.append(r"[^/?#]*")
        pos = match.end()
    parts.append(re.escape(template[pos:]))
    return re.compile("".join(parts) + r"\Z")


def route_named(
    exposed: str,
    what: str,
    owners: Mapping[str, tuple[str, str]] | None,
    naming: Naming,
    servers: Sequence[str],
) -> Route | NotRouted:
    if owners is not None:
        owner = owners.get(exposed)
        if owner is not None:
            return owner if type(owner) is Route else Route(owner[0], owner[1])
    split = naming.split(exposed, servers)
    if split is not None and owners is None:
        return Route(split[0], split[1])
    if split is not None and owners is not None and split[0] not in {s for s, _ in owners.values()}:
        # The server's list is not in the catalog (it was down when the catalog was built):
        # let the server itself answer for the name.
        return Route(split[0], split[1])
    return NotRouted(what, exposed, tuple(servers))


def route_resource(
    uri: str,
    exact: Mapping[str, str],
    templates: Sequence[tuple[str, str]],
    servers: Sequence[str],
) -> Route | NotRouted:
    """`exact`: URI -> server; `templates`: (server, uriTemplate) in config order."""
    server = exact.get(uri)
    if server is not None:
        return Route(server, uri)
    for server, template in templates:
        if template_regex(template).match(uri):
            return Route(server, uri)
    return NotRouted("resource", uri, tuple(servers))
