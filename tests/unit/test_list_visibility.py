"""ingress/list_visibility.py and aggregate.visible_page: what a caller is not offered, and pages over it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest

from ingress.aggregate import MergedList, encode_cursor, merge, page, visible_page
from ingress.blocklist import Blocklist
from ingress.list_visibility import hidden_predicate, visible, visible_answer, withheld_detail
from ingress.naming import Naming
from ingress.routing import Route
from schemas.decisions import Decision, DecisionAction, DecisionScope, DecisionSource

NOW = 1_800_000_000_000_000  # µs
TOOL, SERVER = DecisionScope.TOOL, DecisionScope.SERVER
_ids = iter(range(1, 1_000_000))


def block(scope: DecisionScope, subject: str, tenant: str | None = None, expires_at: int | None = None,
          action: DecisionAction = DecisionAction.BLOCK) -> Decision:
    return Decision(ts=NOW, decision_id=f"d{next(_ids)}", action=action, scope=scope, subject=subject, tenant=tenant,
                    reason="test", source=DecisionSource.OPERATOR, expires_at=expires_at)


def blocklist(*decisions: Decision, naming: Naming | None = None) -> Blocklist:
    bl = Blocklist(naming)
    for decision in decisions:
        bl.apply(decision)
    return bl


# Two servers as the aggregate lists them: time (get_time, convert) and files (read, get_time).
PER_SERVER: dict[str, list[tuple[str, list[dict[str, Any]]]]] = {
    "tools/list": [("time", [{"name": "get_time"}, {"name": "convert"}]),
                   ("files", [{"name": "read"}, {"name": "get_time"}])],
    "prompts/list": [("time", [{"name": "get_time"}]), ("files", [{"name": "summary"}])],
    "resources/list": [("time", [{"uri": "time://now"}]), ("files", [{"uri": "file:///a"}])],
    "resources/templates/list": [("time", [{"uriTemplate": "time://{zone}"}]),
                                 ("files", [{"uriTemplate": "file:///{path}"}])],
}
KEY = {"tools/list": "name", "prompts/list": "name", "resources/list": "uri", "resources/templates/list": "uriTemplate"}

# (case, list method, blocks, caller's tenant, keys the caller still sees)
CASES: list[tuple[str, str, list[Decision], str, list[str]]] = [
    ("nothing blocked", "tools/list", [], "acme",
     ["time__get_time", "time__convert", "files__read", "files__get_time"]),
    ("by upstream name: that name on every server", "tools/list", [block(TOOL, "get_time")], "acme",
     ["time__convert", "files__read"]),
    ("by aggregated name: that server's tool only", "tools/list", [block(TOOL, "time__get_time")], "acme",
     ["time__convert", "files__read", "files__get_time"]),
    ("confined to the caller's tenant", "tools/list", [block(TOOL, "convert", tenant="acme")], "acme",
     ["time__get_time", "files__read", "files__get_time"]),
    ("confined to another tenant", "tools/list", [block(TOOL, "convert", tenant="globex")], "acme",
     ["time__get_time", "time__convert", "files__read", "files__get_time"]),
    ("expired", "tools/list", [block(TOOL, "convert", expires_at=NOW)], "acme",
     ["time__get_time", "time__convert", "files__read", "files__get_time"]),
    ("not yet expired", "tools/list", [block(TOOL, "convert", expires_at=NOW + 1)], "acme",
     ["time__get_time", "files__read", "files__get_time"]),
    ("lifted", "tools/list", [block(TOOL, "convert"), block(TOOL, "convert", action=DecisionAction.UNBLOCK)],
     "acme", ["time__get_time", "time__convert", "files__read", "files__get_time"]),
    ("a server: all its tools", "tools/list", [block(SERVER, "time")], "acme", ["files__read", "files__get_time"]),
    ("a server in another tenant", "tools/list", [block(SERVER, "time", tenant="globex")], "acme",
     ["time__get_time", "time__convert", "files__read", "files__get_time"]),
    ("a server and a tool", "tools/list", [block(SERVER, "files"), block(TOOL, "convert")], "acme",
     ["time__get_time"]),
    ("callers without a tenant: only unqualified blocks", "tools/list",
     [block(TOOL, "read", tenant="acme"), block(TOOL, "convert")], "", ["time__get_time", "files__read",
                                                                          "files__get_time"]),
    ("caller blocks do not hide anything", "tools/list",
     [block(DecisionScope.PRINCIPAL, "alice"), block(DecisionScope.TENANT, "acme")], "acme",
     ["time__get_time", "time__convert", "files__read", "files__get_time"]),
    ("a tool block leaves prompts of that name", "prompts/list", [block(TOOL, "get_time")], "acme",
     ["time__get_time", "files__summary"]),
    ("a server block hides its prompts", "prompts/list", [block(SERVER, "time")], "acme", ["files__summary"]),
    ("a server block hides its resources", "resources/list", [block(SERVER, "files")], "acme", ["time://now"]),
    ("a server block hides its templates", "resources/templates/list", [block(SERVER, "time", tenant="acme")],
     "acme", ["file:///{path}"]),
    ("a tool block named like a URI hides no resource", "resources/list", [block(TOOL, "time://now")], "acme",
     ["time://now", "file:///a"]),
]


@pytest.mark.parametrize(("method", "blocks", "tenant", "expected"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_visible_on_the_aggregate(method: str, blocks: list[Decision], tenant: str, expected: list[str]) -> None:
    merged = merge(method, PER_SERVER[method], Naming())
    kept, withheld = visible(method, merged.items, merged.owners.get, blocklist(*blocks), tenant, NOW)
    assert [item[KEY[method]] for item in kept] == expected
    assert withheld == len(merged.items) - len(expected)


@pytest.mark.parametrize(("method", "blocks", "tenant", "expected"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_a_page_walk_shows_what_visible_keeps_once_each(method: str, blocks: list[Decision], tenant: str,
                                                        expected: list[str]) -> None:
    merged = merge(method, PER_SERVER[method], Naming())
    merged.version = "v1"
    hidden = hidden_predicate(method, merged.owners.get, blocklist(*blocks), tenant, NOW)
    for page_size in (0, 1, 2, 3, 10):
        seen, withheld = walk(merged, page_size, lambda: hidden)
        assert [item[KEY[method]] for item in seen] == expected, page_size
        assert withheld == len(merged.items) - len(expected)


def test_the_single_server_view_matches_upstream_names_and_the_aggregated_form() -> None:
    tools = [{"name": "get_time"}, {"name": "convert"}, {"name": "read"}]
    owner: Callable[[str], Route | None] = lambda key: Route("time", key)  # noqa: E731
    bl = blocklist(block(TOOL, "time__convert"), block(TOOL, "read", tenant="acme"))
    kept, withheld = visible("tools/list", tools, owner, bl, "acme", NOW)
    assert kept == [{"name": "get_time"}] and withheld == 2
    kept, withheld = visible("tools/list", tools, owner, bl, "globex", NOW)
    assert kept == [{"name": "get_time"}, {"name": "read"}] and withheld == 1


def test_the_aggregated_form_follows_the_configured_naming() -> None:
    naming = Naming(separator=".")
    merged = merge("tools/list", PER_SERVER["tools/list"], naming)
    bl = blocklist(block(TOOL, "time.convert"), naming=naming)
    kept, withheld = visible("tools/list", merged.items, merged.owners.get, bl, "acme", NOW)
    assert [t["name"] for t in kept] == ["time.get_time", "files.read", "files.get_time"] and withheld == 1


def test_an_empty_blocklist_costs_nothing_and_returns_the_input() -> None:
    items = [{"name": "a"}]
    assert hidden_predicate("tools/list", lambda key: Route("s", key), Blocklist(), "acme", NOW) is None
    kept, withheld = visible("tools/list", items, lambda key: Route("s", key), Blocklist(), "acme", NOW)
    assert kept is items and withheld == 0


def test_nothing_withheld_returns_the_input_itself() -> None:
    items = [{"name": "a"}, {"name": "b"}]
    kept, withheld = visible("tools/list", items, lambda key: Route("s", key), blocklist(block(TOOL, "c")),
                             "acme", NOW)
    assert kept is items and withheld == 0


def test_items_without_a_key_or_an_owner_are_kept() -> None:
    items: list[Any] = [{"name": 3}, {"title": "no name"}, "not an object", {"name": "blocked"}, {"name": "stray"}]
    owners = {"blocked": Route("s", "blocked")}
    kept, withheld = visible("tools/list", items, owners.get, blocklist(block(SERVER, "s"), block(TOOL, "stray")),
                             "acme", NOW)
    assert kept == [{"name": 3}, {"title": "no name"}, "not an object", {"name": "stray"}] and withheld == 1


# -- one upstream's answer ----------------------------------------------------------------------------------


def answer(tools: list[Any], **result: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": 7, "result": {"tools": tools, **result}}


def test_an_answer_loses_only_the_blocked_entries_and_keeps_every_other_field() -> None:
    unknown = {"name": "get_time", "inputSchema": {"type": "object", "$defs": {"x": {}}}, "x-vendor": [1, None],
               "_meta": {"io.example/flag": True}}
    body = {**answer([unknown, {"name": "convert"}, {"name": "read"}], nextCursor="c2",
                     _meta={"k": "v"}), "x-extra": 1}
    before = orjson.dumps(body)
    bl = blocklist(block(TOOL, "convert"), block(TOOL, "time__read"))
    filtered, withheld = visible_answer("tools/list", body, "time", bl, "acme", NOW)
    assert withheld == 2
    assert filtered == {**answer([unknown], nextCursor="c2", _meta={"k": "v"}), "x-extra": 1}
    assert filtered["result"]["tools"][0] is unknown
    assert orjson.dumps(body) == before  # the upstream's answer itself is left as it was


def test_an_answer_with_nothing_to_withhold_is_the_same_object() -> None:
    body = answer([{"name": "get_time"}])
    assert visible_answer("tools/list", body, "time", blocklist(block(TOOL, "other")), "acme", NOW) == (body, 0)
    assert visible_answer("tools/list", body, "time", Blocklist(), "acme", NOW)[0] is body


@pytest.mark.parametrize("body", [
    {"jsonrpc": "2.0", "id": 1, "error": {"code": -32000, "message": "down"}},
    {"jsonrpc": "2.0", "id": 1, "result": "odd"},
    {"jsonrpc": "2.0", "id": 1, "result": {"tools": "odd"}},
    {"jsonrpc": "2.0", "id": 1, "result": {}},
], ids=["error", "result-not-object", "tools-not-list", "no-tools"])
def test_answers_that_are_not_lists_pass_untouched(body: dict[str, Any]) -> None:
    assert visible_answer("tools/list", body, "time", blocklist(block(SERVER, "time")), "acme", NOW) == (body, 0)


def test_a_server_block_empties_any_list_answer_of_that_server() -> None:
    body = {"jsonrpc": "2.0", "id": 1, "result": {"resources": [{"uri": "a://1"}, {"uri": "a://2"}]}}
    filtered, withheld = visible_answer("resources/list", body, "time", blocklist(block(SERVER, "time")), "", NOW)
    assert filtered["result"] == {"resources": []} and withheld == 2


@pytest.mark.parametrize(("method", "count", "detail"), [
    ("tools/list", 1, "withheld 1 blocked tool"),
    ("tools/list", 2, "withheld 2 blocked tools"),
    ("prompts/list", 3, "withheld 3 blocked prompts"),
    ("resources/list", 1, "withheld 1 blocked resource"),
    ("resources/templates/list", 4, "withheld 4 blocked resource templates"),
])
def test_withheld_detail(method: str, count: int, detail: str) -> None:
    assert withheld_detail(method, count) == detail


# -- pages over a filtered list ------------------------------------------------------------------------------


def numbered(n: int) -> MergedList:
    merged = merge("tools/list", [("s", [{"name": f"t{i}"} for i in range(n)])], Naming())
    merged.version = "v1"
    return merged


def hiding(*numbers: int) -> Callable[[dict[str, Any]], bool]:
    names = {f"s__t{i}" for i in numbers}
    return lambda item: item["name"] in names


def walk(merged: MergedList, page_size: int, hidden_now: Callable[[], Callable[[dict[str, Any]], bool] | None]
         ) -> tuple[list[dict[str, Any]], int]:
    """Every page from the first; `hidden_now` is asked before each page (blocks may change between)."""
    seen: list[dict[str, Any]] = []
    withheld = 0
    cursor: str | None = None
    for _ in range(len(merged.items) + 2):
        items, cursor, count = visible_page(merged, cursor, page_size, hidden_now())
        assert page_size <= 0 or len(items) <= page_size
        assert items or cursor is None, "an empty page before the end"
        seen.extend(items)
        withheld += count
        if cursor is None:
            return seen, withheld
    raise AssertionError("pagination does not terminate")


def names(items: list[dict[str, Any]]) -> list[int]:
    return [int(item["name"].removeprefix("s__t")) for item in items]


@pytest.mark.parametrize(("n", "hidden", "page_size", "pages"), [
    (10, (0, 1, 2), 3, [[3, 4, 5], [6, 7, 8], [9]]),
    (10, (3, 4, 5), 3, [[0, 1, 2], [6, 7, 8], [9]]),
    (10, (7, 8, 9), 3, [[0, 1, 2], [3, 4, 5], [6]]),  # no empty page after the last visible item
    (6, (0, 1, 2, 3, 4, 5), 3, [[]]),  # all hidden: one empty last page
    (6, (1, 3), 2, [[0, 2], [4, 5]]),
    (6, (1, 3), 0, [[0, 2, 4, 5]]),
    (0, (), 2, [[]]),
])
def test_pages_are_full_and_end_at_the_last_visible_item(n: int, hidden: tuple[int, ...], page_size: int,
                                                          pages: list[list[int]]) -> None:
    merged = numbered(n)
    cursor: str | None = None
    got: list[list[int]] = []
    for _ in pages:
        items, cursor, _ = visible_page(merged, cursor, page_size, hiding(*hidden))
        got.append(names(items))
    assert got == pages and cursor is None


def test_unfiltered_pages_are_the_plain_pages() -> None:
    merged = numbered(7)
    cursor: str | None = None
    while True:
        plain = page(merged, cursor, 3)
        filtered = visible_page(merged, cursor, 3, lambda item: False)
        assert filtered[:2] == plain and filtered[2] == 0
        cursor = plain[1]
        if cursor is None:
            break


@pytest.mark.parametrize("changes", [
    [(), (2, 3, 4), (2, 3, 4), ()],  # a block lands after the first page
    [(2, 3, 4), (), (), ()],  # lifted after the first page
    [(5,), (0, 1, 2, 3), (9,), ()],
])
def test_blocks_changing_between_pages_never_skip_or_repeat_an_item(changes: list[tuple[int, ...]]) -> None:
    merged = numbered(10)
    rounds = iter(changes)
    seen, _ = walk(merged, 3, lambda: hiding(*next(rounds, ())))
    shown = names(seen)
    assert len(shown) == len(set(shown)) and shown == sorted(shown)
    # every item is either shown or was hidden when its stretch of the list was paged
    assert set(range(10)) - set(shown) <= {i for change in changes for i in change}


def test_a_cursor_from_an_unfiltered_page_works_on_a_filtered_one() -> None:
    merged = numbered(6)
    _, cursor = page(merged, None, 2)
    assert cursor == encode_cursor("v1", 2)
    items, nxt, withheld = visible_page(merged, cursor, 2, hiding(2))
    assert names(items) == [3, 4] and nxt == encode_cursor("v1", 5) and withheld == 1
