"""What the upstreams offer, cached: tools, prompts, resources and resource templates per server.

Lists are fetched on demand (all pages), kept until a `list_changed` notification or their TTL,
and merged in config order. A server that fails or is slow drops out of the merge (its last good
list is used when there is one) and never fails the aggregate. Every change of a server's tool
definitions, first sight included, becomes a `tool_definitions_changed` event.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import orjson

from ingress.aggregate import LIST_METHODS, MergedList, merge
from ingress.naming import Naming
from ingress.recorder import Recorder, system_context
from ingress.routing import NotRouted, Route, route_named, route_resource
from ingress.upstreams.base import JsonObject, Upstream, UpstreamState
from ingress.upstreams.errors import UpstreamError
from ingress.upstreams.mcp_headers import ParamHeader, tool_param_headers
from schemas.events import EventType

log = logging.getLogger("mcpgw.catalog")

MAX_PAGES = 100
_NAMED_LISTS = {"tool": "tools/list", "prompt": "prompts/list"}
_NO_SPECS: list[ParamHeader] = []


@dataclass(slots=True)
class _Entry:
    items: list[JsonObject]
    fetched_at: float
    fingerprint: str
    stale: bool = False
    # tools/list only: tool name -> its `Mcp-Param-*` header specs, built on first use (see `header_specs`)
    header_specs: dict[str, list[ParamHeader]] | None = None


@dataclass(slots=True)
class _Merged:
    merged: MergedList
    built_at: float
    servers: tuple[str, ...] = field(default_factory=tuple)


def _fingerprint(items: Sequence[JsonObject]) -> str:
    return hashlib.sha256(orjson.dumps(items, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


class Catalog:
    def __init__(
        self,
        upstreams: Callable[[], Mapping[str, Upstream]],
        naming: Naming,
        recorder: Recorder,
        ttl_s: float,
        fetch_timeout_s: float = 10.0,
    ) -> None:
        self._upstreams = upstreams
        self.naming = naming
        self._recorder = recorder
        self.ttl_s = ttl_s
        self.fetch_timeout_s = fetch_timeout_s
        self._entries: dict[tuple[str, str], _Entry] = {}
        self._inflight: dict[tuple[str, str], asyncio.Future[_Entry | None]] = {}
        self._merged: dict[str, _Merged] = {}
        self._tool_defs: dict[str, dict[str, str]] = {}

    @property
    def server_names(self) -> list[str]:
        return list(self._upstreams())

    def invalidate(self, server: str, method: str | None = None) -> None:
        for key in [k for k in self._entries if k[0] == server and (method is None or k[1] == method)]:
            self._entries[key].stale = True
        if method is None:
            self._merged.clear()
        else:
            self._merged.pop(method, None)
            if method == "resources/list":
                self._merged.pop("resources/templates/list", None)

    def _fresh(self, entry: _Entry | None) -> bool:
        return entry is not None and not entry.stale and (
            self.ttl_s <= 0 or time.monotonic() - entry.fetched_at < self.ttl_s
        )

    async def server_list(self, server: str, method: str) -> list[JsonObject] | None:
        """One server's full list (all pages); None when it cannot be had and nothing is cached."""
        key = (server, method)
        entry = self._entries.get(key)
        if self._fresh(entry):
            assert entry is not None
            return entry.items
        waiter = self._inflight.get(key)
        if waiter is None:
            waiter = asyncio.ensure_future(self._fetch(server, method))
            self._inflight[key] = waiter
            waiter.add_done_callback(lambda _f: self._inflight.pop(key, None))
        fetched = await asyncio.shield(waiter)
        if fetched is not None:
            return fetched.items
        return entry.items if entry is not None else None

    def _capable(self, upstream: Upstream, method: str) -> bool:
        info = upstream.info
        if info is None:
            return True
        section = {"tools/list": "tools", "prompts/list": "prompts"}.get(method, "resources")
        return section in info.capabilities

    async def _fetch(self, server: str, method: str) -> _Entry | None:
        upstream = self._upstreams().get(server)
        if upstream is None or upstream.status.state is not UpstreamState.READY:
            return None
        if not self._capable(upstream, method):
            entry = _Entry([], time.monotonic(), "")
            self._entries[(server, method)] = entry
            return entry
        result_key = LIST_METHODS[method][0]
        items: list[JsonObject] = []
        cursor: str | None = None
        try:
            for page_no in range(MAX_PAGES):
                params: JsonObject = {"cursor": cursor} if cursor else {}
                body = {"jsonrpc": "2.0", "id": f"catalog-{page_no}", "method": method, "params": params}
                ctx = system_context(method=method, server=server)
                response = await upstream.request(body, ctx, self.fetch_timeout_s)
                result = response.get("result")
                if not isinstance(result, dict):
                    log.warning("%s %s failed: %s", server, method, response.get("error"))
                    return None
                page_items = result.get(result_key)
                if isinstance(page_items, list):
                    items.extend(i for i in page_items if isinstance(i, dict))
                cursor = result.get("nextCursor") if isinstance(result.get("nextCursor"), str) else None
                if not cursor:
                    break
        except (UpstreamError, OSError) as exc:
            log.warning("%s %s failed: %s", server, method, exc)
            return None
        entry = _Entry(items, time.monotonic(), _fingerprint(items))
        previous = self._entries.get((server, method))
        self._entries[(server, method)] = entry
        if previous is None or previous.fingerprint != entry.fingerprint:
            self._merged.pop(method, None)
        if method == "tools/list":
            await self._note_tool_definitions(server, items)
        return entry

    async def _note_tool_definitions(self, server: str, tools: list[JsonObject]) -> None:
        current = {str(t.get("name")): _fingerprint([t]) for t in tools}
        before = self._tool_defs.get(server)
        self._tool_defs[server] = current
        if before == current:
            return
        if before is None:
            detail = f"first seen: {len(current)} tools"
        else:
            added = sorted(current.keys() - before.keys())
            removed = sorted(before.keys() - current.keys())
            changed = sorted(n for n in current.keys() & before.keys() if current[n] != before[n])
            detail = f"added={added} removed={removed} changed={changed}"
        ctx = system_context(method="tools/list", server=server)
        await self._recorder.lifecycle(EventType.TOOL_DEFINITIONS_CHANGED, ctx, detail=detail, server=server,
                                       payload=orjson.dumps({"tools": tools}))

    async def merged(self, method: str, servers: Sequence[str] | None = None) -> MergedList:
        names = tuple(servers if servers is not None else self.server_names)
        cached = self._merged.get(method)
        if cached is not None and cached.servers == names and all(
            self._fresh(self._entries.get((s, method))) or (self._entries.get((s, method)) is None
            and self._upstreams()[s].status.state is not UpstreamState.READY)
            for s in names
        ):
            return cached.merged
        lists = await asyncio.gather(*(self.server_list(s, method) for s in names))
        per_server = [(s, items) for s, items in zip(names, lists, strict=True) if items is not None]
        merged = merge(method, per_server, self.naming)
        merged.version = hashlib.sha256(
            "|".join(f"{s}:{self._entries[(s, method)].fingerprint}" for s, _ in per_server).encode()
        ).hexdigest()[:12]
        self._merged[method] = _Merged(merged, time.monotonic(), names)
        return merged

    def header_specs(self, server: str, tool: str) -> list[ParamHeader] | None:
        """The `Mcp-Param-*` headers calls of `tool` carry, from a fresh cached tools/list; None when
        the list is missing or stale (the caller fetches it). Unknown tools and tools whose
        annotations are invalid have none. Computed once per listing, not per call."""
        entry = self._entries.get((server, "tools/list"))
        if entry is None or not self._fresh(entry):
            return None
        specs = entry.header_specs
        if specs is None:
            specs = entry.header_specs = {
                str(t.get("name")): tool_param_headers(t) or [] for t in entry.items
            }
        return specs.get(tool, _NO_SPECS)

    def cached_owners(self, method: str) -> Mapping[str, Route] | None:
        cached = self._merged.get(method)
        return cached.merged.owners if cached is not None else None

    def cached_route(self, what: str, name: str) -> Route | None:
        """The owner of a tool or prompt (exposed name) in the last merged listing; None when it is
        not there (then `route` decides). No coroutine: this is every call's path on `/mcp`."""
        cached = self._merged.get(_NAMED_LISTS.get(what, ""))
        if cached is None:
            return None
        return cached.merged.owners.get(name)

    async def route(self, what: str, name: str) -> Route | NotRouted:
        """Find the server owning a tool or prompt (exposed name) or a resource URI."""
        servers = self.server_names
        if what == "resource":
            resources = await self.merged("resources/list")
            templates = await self.merged("resources/templates/list")
            exact = {uri: owner[0] for uri, owner in resources.owners.items()}
            pairs = [(owner[0], tpl) for tpl, owner in templates.owners.items()]
            return route_resource(name, exact, pairs, servers)
        method = _NAMED_LISTS.get(what, "prompts/list")
        owners = self.cached_owners(method)
        routed = route_named(name, what, owners, self.naming, servers)
        if isinstance(routed, NotRouted) or owners is None:
            # A miss may be a tool added since the last listing: look again before refusing.
            owners = (await self.merged(method)).owners
            routed = route_named(name, what, owners, self.naming, servers)
        return routed
