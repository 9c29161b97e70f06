"""ingress/aggregate.py: merged list results, ownership index and opaque cursors."""

from __future__ import annotations

import base64

import pytest

from ingress.aggregate import (
    LIST_METHODS,
    InvalidCursor,
    MergedList,
    decode_cursor,
    encode_cursor,
    merge,
    page,
)
from ingress.naming import Naming


def tools(*names: str) -> list[dict]:
    return [{"name": n, "description": f"d-{n}", "inputSchema": {"type": "object"}} for n in names]


def test_merge_tools_prefix_order_and_owners() -> None:
    a = tools("read", "write")
    b = tools("search", "read")
    merged = merge("tools/list", [("fs", a), ("web", b)], Naming())
    assert [t["name"] for t in merged.items] == ["fs__read", "fs__write", "web__search", "web__read"]
    assert merged.owners == {
        "fs__read": ("fs", "read"),
        "fs__write": ("fs", "write"),
        "web__search": ("web", "search"),
        "web__read": ("web", "read"),
    }
    # other fields travel; inputs are not mutated
    assert merged.items[0]["description"] == "d-read"
    assert merged.items[0]["inputSchema"] == {"type": "object"}
    assert [t["name"] for t in a] == ["read", "write"]
    assert [t["name"] for t in b] == ["search", "read"]


def test_merge_is_deterministic_in_given_server_order() -> None:
    per = [("b", tools("x")), ("a", tools("y"))]
    assert [t["name"] for t in merge("tools/list", per, Naming()).items] == ["b__x", "a__y"]


def test_merge_prompts_are_renamed_too() -> None:
    merged = merge("prompts/list", [("p", [{"name": "greet", "arguments": []}])], Naming())
    assert merged.items == [{"name": "p__greet", "arguments": []}]
    assert merged.owners == {"p__greet": ("p", "greet")}


def test_merge_mode_none_first_server_wins_a_clash() -> None:
    merged = merge("tools/list", [("fs", tools("read", "a")), ("web", tools("read", "b"))], Naming(mode="none"))
    assert [t["name"] for t in merged.items] == ["read", "a", "b"]
    assert merged.items[0]["description"] == "d-read"
    assert merged.owners["read"] == ("fs", "read")
    assert merged.owners["b"] == ("web", "b")


def test_merge_rename_false_keeps_names_and_resolves_clashes() -> None:
    merged = merge("tools/list", [("fs", tools("read")), ("web", tools("read", "get"))], Naming(), rename=False)
    assert [t["name"] for t in merged.items] == ["read", "get"]
    assert merged.owners == {"read": ("fs", "read"), "get": ("web", "get")}


@pytest.mark.parametrize(
    ("method", "key"),
    [("resources/list", "uri"), ("resources/templates/list", "uriTemplate")],
)
def test_merge_resources_are_never_renamed_duplicates_dropped(method: str, key: str) -> None:
    s1 = [{key: "file:///a", "name": "a"}, {key: "file:///b", "name": "b"}]
    s2 = [{key: "file:///b", "name": "b2"}, {key: "mem://c", "name": "c"}]
    merged = merge(method, [("s1", s1), ("s2", s2)], Naming())
    assert [i[key] for i in merged.items] == ["file:///a", "file:///b", "mem://c"]
    assert merged.items[1]["name"] == "b"  # the first server keeps a duplicated URI
    assert merged.owners == {"file:///a": ("s1", "file:///a"), "file:///b": ("s1", "file:///b"),
                             "mem://c": ("s2", "mem://c")}


def test_merge_skips_items_without_a_string_key() -> None:
    items = [{"name": 1}, {"description": "no name"}, {"name": None}, {"name": "ok"}]
    merged = merge("tools/list", [("s", items)], Naming())
    assert [t["name"] for t in merged.items] == ["s__ok"]


def test_merge_duplicate_within_one_server() -> None:
    merged = merge("tools/list", [("s", tools("x", "x"))], Naming())
    assert [t["name"] for t in merged.items] == ["s__x"]


def test_merge_long_names_owner_maps_back_to_original() -> None:
    naming = Naming(max_length=20)
    long = "tool_with_a_long_name_indeed"
    merged = merge("tools/list", [("srv", tools(long))], naming)
    (exposed,) = merged.owners
    assert len(exposed) <= 20
    assert merged.owners[exposed] == ("srv", long)
    assert merged.items[0]["name"] == exposed


def test_merge_unrenamed_when_exposed_equals_key_keeps_identity() -> None:
    item = {"name": "x"}
    merged = merge("tools/list", [("s", [item])], Naming(mode="none"))
    assert merged.items[0] is item


def test_merge_empty() -> None:
    merged = merge("tools/list", [], Naming())
    assert merged.items == [] and merged.owners == {}


def test_list_methods_table() -> None:
    assert LIST_METHODS["tools/list"] == ("tools", "name", True)
    assert LIST_METHODS["prompts/list"] == ("prompts", "name", True)
    assert LIST_METHODS["resources/list"] == ("resources", "uri", False)
    assert LIST_METHODS["resources/templates/list"] == ("resourceTemplates", "uriTemplate", False)


# -- pages and cursors -----------------------------------------------------------------------------


def merged_of(n: int, version: str = "v1") -> MergedList:
    m = merge("tools/list", [("s", tools(*[f"t{i}" for i in range(n)]))], Naming())
    m.version = version
    return m


@pytest.mark.parametrize(("n", "page_size"), [(0, 3), (1, 3), (3, 3), (7, 3), (10, 1), (10, 100), (5, 0), (0, 0)])
def test_page_walk_covers_everything_once(n: int, page_size: int) -> None:
    merged = merged_of(n)
    seen: list[dict] = []
    cursor: str | None = None
    pages = 0
    while True:
        items, cursor = page(merged, cursor, page_size)
        seen.extend(items)
        pages += 1
        assert pages <= n + 2, "pagination does not terminate"
        if page_size > 0:
            assert len(items) <= page_size
        if cursor is None:
            break
    assert seen == merged.items
    expected_pages = 1 if page_size <= 0 or n == 0 else -(-n // page_size)
    assert pages == expected_pages


@pytest.mark.parametrize(("version", "offset"), [("v1", 0), ("v1", 5), ("abc123" * 10, 123456), ("", 3)])
def test_cursor_round_trip(version: str, offset: int) -> None:
    cursor = encode_cursor(version, offset)
    assert isinstance(cursor, str) and cursor.isascii()
    assert decode_cursor(cursor, version) == offset


def test_stale_cursor_after_version_change() -> None:
    merged = merged_of(10, "v1")
    _, cursor = page(merged, None, 3)
    assert cursor is not None
    merged.version = "v2"
    with pytest.raises(InvalidCursor, match="changed"):
        page(merged, cursor, 3)


@pytest.mark.parametrize(
    "cursor",
    [
        "garbage",
        "!!!!",
        "AAAA",
        "not=base64===",
        "ÿÿÿ",
        base64.urlsafe_b64encode(b"g1:v1").decode(),
        base64.urlsafe_b64encode(b"g1:v1:x").decode(),
        base64.urlsafe_b64encode(b"g1:v1:-1").decode(),
        base64.urlsafe_b64encode(b"g2:v1:3").decode(),
        base64.urlsafe_b64encode(b"g1:v1:3:4").decode(),
        base64.urlsafe_b64encode(b"\xff\xfe:v1:3").decode(),
        base64.urlsafe_b64encode(b"g1:v1:1.5").decode(),
    ],
)
def test_garbage_cursor(cursor: str) -> None:
    with pytest.raises(InvalidCursor, match="not one this gateway issued"):
        decode_cursor(cursor, "v1")
    with pytest.raises(InvalidCursor):
        page(merged_of(5, "v1"), cursor, 2)


def test_cursor_is_invalid_cursor_a_value_error() -> None:
    assert issubclass(InvalidCursor, ValueError)


def test_cursor_past_the_end_gives_an_empty_last_page() -> None:
    merged = merged_of(3)
    items, nxt = page(merged, encode_cursor("v1", 10), 2)
    assert items == [] and nxt is None


def test_empty_string_cursor_means_first_page() -> None:
    merged = merged_of(3)
    assert page(merged, "", 2) == page(merged, None, 2)


def test_page_zero_size_ignores_nothing_after_cursor() -> None:
    merged = merged_of(5)
    items, nxt = page(merged, encode_cursor("v1", 2), 0)
    assert items == merged.items[2:] and nxt is None
