"""Which listed tools, prompts, resources and templates a caller may see (pure: no I/O, no clock).

An agent is not offered what it may not call: a tool under a tool-scope block (by its upstream or
aggregated name) and everything of a server under a server-scope block, for the caller's tenant
at the time of the request. The rules are `Blocklist.match_target`'s, the ones that refuse the
calls with -32012, so at the moment of listing a list hides exactly what a call would be refused.

Nearly always the blocklist is empty: every entry point returns its input untouched after one
integer test, and callers test `blocklist.size` before they build anything.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ingress.aggregate import LIST_METHODS, JsonObject
from ingress.blocklist import Blocklist
from ingress.routing import Route

# list method -> (one item, several items), for the audit's detail
_NOUNS: Mapping[str, tuple[str, str]] = {
    "tools/list": ("tool", "tools"),
    "prompts/list": ("prompt", "prompts"),
    "resources/list": ("resource", "resources"),
    "resources/templates/list": ("resource template", "resource templates"),
}


def withheld(method: str, route: Route, blocklist: Blocklist, tenant: str, now_us: int) -> bool:
    """Whether the item `route` names (its server and upstream key) is hidden from this caller.

    Only tools can be blocked by name; prompts, resources and templates only with their server.
    """
    tool = route.name if method == "tools/list" else ""
    return blocklist.match_target(tenant, tool, route.server, now_us) is not None


def hidden_predicate(method: str, owner: Callable[[str], Route | None], blocklist: Blocklist, tenant: str,
                     now_us: int) -> Callable[[JsonObject], bool] | None:
    """A test of one listed item: is it withheld? None when the blocklist is empty (nothing is).

    `owner` maps an item's identifying key (exposed name or URI) to its server and upstream key;
    an item it does not know, or without a string key, is never withheld (nothing could match it).
    """
    if not blocklist.size:
        return None
    key_field = LIST_METHODS[method][1]

    def hidden(item: Any) -> bool:
        if not isinstance(item, dict):
            return False
        key = item.get(key_field)
        if not isinstance(key, str):
            return False
        route = owner(key)
        return route is not None and withheld(method, route, blocklist, tenant, now_us)

    return hidden


def visible(method: str, items: Sequence[Any], owner: Callable[[str], Route | None], blocklist: Blocklist,
            tenant: str, now_us: int) -> tuple[Sequence[Any], int]:
    """The items this caller may see, in their order, and how many were withheld.

    When none is withheld the answer is `items` itself, so a caller can pass the original on.
    """
    hidden = hidden_predicate(method, owner, blocklist, tenant, now_us)
    if hidden is None:
        return items, 0
    kept = [item for item in items if not hidden(item)]
    count = len(items) - len(kept)
    return (kept if count else items), count


def visible_answer(method: str, body: JsonObject, server: str, blocklist: Blocklist, tenant: str,
                   now_us: int) -> tuple[JsonObject, int]:
    """One upstream's answer to a list request, without the entries this caller may not see.

    Every other field, of the answer, of its result and of the kept entries, is passed on as it
    came; the answer is rebuilt only when something was withheld (else `body` itself comes back).
    """
    result = body.get("result")
    if not isinstance(result, dict):
        return body, 0
    result_key = LIST_METHODS[method][0]
    items = result.get(result_key)
    if not isinstance(items, list):
        return body, 0
    kept, count = visible(method, items, lambda key: Route(server, key), blocklist, tenant, now_us)
    if not count:
        return body, 0
    return {**body, "result": {**result, result_key: kept}}, count


def withheld_detail(method: str, count: int) -> str:
    """What the audit event of the answer says about it: "withheld 2 blocked tools"."""
    one, several = _NOUNS[method]
    return f"withheld {count} blocked {one if count == 1 else several}"
