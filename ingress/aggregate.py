"""Merging list results of several upstreams into one deterministic, paginated list (pure).

Input: per-server item lists in config order. Output: the merged items (renamed for tools and
prompts), an index from exposed name to (server, original name), and pages addressed by opaque
cursors that embed the catalog version, so a cursor from before a change is refused, not misread.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ingress.naming import Naming
from ingress.routing import Route

JsonObject = dict[str, Any]

# list method -> (result key, identifying field, renamed on the aggregate?)
LIST_METHODS: Mapping[str, tuple[str, str, bool]] = {
    "tools/list": ("tools", "name", True),
    "prompts/list": ("prompts", "name", True),
    "resources/list": ("resources", "uri", False),
    "resources/templates/list": ("resourceTemplates", "uriTemplate", False),
}


@dataclass(slots=True)
class MergedList:
    items: list[JsonObject]
    owners: dict[str, Route] = field(default_factory=dict)  # exposed key -> (server, key)
    version: str = ""


def merge(
    method: str,
    per_server: Sequence[tuple[str, Sequence[JsonObject]]],
    naming: Naming,
    rename: bool = True,
) -> MergedList:
    """Merge item lists; servers in the given order, items in each server's own order."""
    _, key_field, renamed = LIST_METHODS[method]
    renamed = renamed and rename
    items: list[JsonObject] = []
    owners: dict[str, Route] = {}
    for server, server_items in per_server:
        for item in server_items:
            key = item.get(key_field)
            if not isinstance(key, str):
                continue
            exposed = naming.expose(server, key) if renamed else key
            if exposed in owners:
                continue  # a clash (naming mode "none", or a duplicated URI): the first server keeps it
            owners[exposed] = Route(server, key)
            if renamed and exposed != key:
                item = {**item, key_field: exposed}
            items.append(item)
    return MergedList(items, owners)


class InvalidCursor(ValueError):
    pass


def encode_cursor(version: str, offset: int) -> str:
    return base64.urlsafe_b64encode(f"g1:{version}:{offset}".encode()).decode()


def decode_cursor(cursor: str, version: str) -> int:
    try:
        tag, cursor_version, offset = base64.urlsafe_b64decode(cursor.encode()).decode().split(":")
        value = int(offset)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidCursor("the cursor is not one this gateway issued") from exc
    if tag != "g1" or value < 0:
        raise InvalidCursor("the cursor is not one this gateway issued")
    if cursor_version != version:
        raise InvalidCursor("the list changed since this cursor was issued: list again from the start")
    return value


def page(merged: MergedList, cursor: str | None, page_size: int) -> tuple[list[JsonObject], str | None]:
    """One page of the merged list and the cursor of the next page (None on the last page)."""
    items, next_cursor, _ = visible_page(merged, cursor, page_size, None)
    return items, next_cursor


def visible_page(merged: MergedList, cursor: str | None, page_size: int,
                 hidden: Callable[[JsonObject], bool] | None) -> tuple[list[JsonObject], str | None, int]:
    """One page of what the caller may see of the merged list, the next page's cursor (None on the
    last page) and how many items this page's stretch of the list withheld.

    Cursors are offsets into the whole merged list, never into a caller's filtered view: a block
    that lands or lifts between two pages then cannot make a page skip or repeat an item, and a
    cursor stays valid whatever is hidden. A page is filled up to `page_size` visible items when
    the list has them, and the last visible item ends the walk (no empty page after it).
    """
    start = decode_cursor(cursor, merged.version) if cursor else 0
    items = merged.items
    if hidden is None:
        if page_size <= 0:
            return items[start:], None, 0
        end = start + page_size
        next_cursor = encode_cursor(merged.version, end) if end < len(items) else None
        return items[start:end], next_cursor, 0
    kept: list[JsonObject] = []
    withheld = 0
    index, count = start, len(items)
    limit = page_size if page_size > 0 else count
    while index < count:
        item = items[index]
        if hidden(item):
            withheld += 1
        elif len(kept) == limit:
            break  # the first visible item of the next page
        else:
            kept.append(item)
        index += 1
    return kept, (encode_cursor(merged.version, index) if index < count else None), withheld
