"""Upstream resource subscriptions held on behalf of agents, counted per (server, uri).

Legacy upstreams are subscribed with `resources/subscribe`; modern upstreams (which dropped that
method) get a gateway-held `subscriptions/listen` stream for the URI. Either way, updates arrive
as unsolicited notifications the gateway fans out to the agents that asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable, Mapping

from ingress.eras import META_SUBSCRIPTION_ID
from ingress.recorder import system_context
from ingress.upstreams.base import JsonObject, UnsolicitedHandler, Upstream
from ingress.upstreams.errors import UpstreamError

log = logging.getLogger("mcpgw.subscriptions")

LISTEN_TIMEOUT_S = 7 * 24 * 3600.0


class _Relay:
    """The handler of a gateway-held upstream listen: its notifications become unsolicited ones."""

    def __init__(self, deliver: UnsolicitedHandler) -> None:
        self._deliver = deliver

    async def notification(self, server: str, body: JsonObject) -> None:
        if body.get("method") == "notifications/subscriptions/acknowledged":
            return
        params = body.get("params")
        if isinstance(params, dict) and isinstance(params.get("_meta"), dict):
            meta = {k: v for k, v in params["_meta"].items() if k != META_SUBSCRIPTION_ID}
            params = {k: v for k, v in params.items() if k != "_meta"}
            if meta:
                params["_meta"] = meta
            body = {**body, "params": params}
        await self._deliver(server, body)

    async def request(self, server: str, body: JsonObject) -> JsonObject:
        return {"jsonrpc": "2.0", "id": body.get("id"), "error": {"code": -32601, "message": "not on a listen"}}


class ResourceSubscriptions:
    def __init__(self, upstreams: Callable[[], Mapping[str, Upstream]], deliver: UnsolicitedHandler,
                 timeout_s: float) -> None:
        self._upstreams = upstreams
        self._deliver = deliver
        self._timeout_s = timeout_s
        self._refs: Counter[tuple[str, str]] = Counter()
        self._listens: dict[tuple[str, str], asyncio.Task[None]] = {}

    def _supports(self, upstream: Upstream) -> bool:
        info = upstream.info
        if info is None:
            return False
        resources = info.capabilities.get("resources")
        return isinstance(resources, dict) and bool(resources.get("subscribe"))

    async def add(self, server: str, uri: str) -> bool:
        upstream = self._upstreams().get(server)
        if upstream is None or not self._supports(upstream):
            return False
        key = (server, uri)
        if self._refs[key] == 0:
            assert upstream.info is not None
            if upstream.info.era == "modern":
                self._listens[key] = asyncio.ensure_future(self._listen(upstream, server, uri))
            else:
                await self._call(upstream, server, "resources/subscribe", uri)
        self._refs[key] += 1
        return True

    async def remove(self, server: str, uri: str) -> None:
        key = (server, uri)
        if self._refs[key] <= 0:
            return
        self._refs[key] -= 1
        if self._refs[key] > 0:
            return
        del self._refs[key]
        listen = self._listens.pop(key, None)
        if listen is not None:
            listen.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await listen
            return
        upstream = self._upstreams().get(server)
        if upstream is not None:
            await self._call(upstream, server, "resources/unsubscribe", uri)

    async def _call(self, upstream: Upstream, server: str, method: str, uri: str) -> None:
        body = {"jsonrpc": "2.0", "id": f"gw-{method}", "method": method, "params": {"uri": uri}}
        try:
            await upstream.request(body, system_context(method=method, server=server, resource_uri=uri),
                                   min(10.0, self._timeout_s))
        except UpstreamError as exc:
            log.warning("%s %s on %s failed: %s", method, uri, server, exc)

    async def _listen(self, upstream: Upstream, server: str, uri: str) -> None:
        ctx = system_context(method="subscriptions/listen", server=server, resource_uri=uri)
        ctx.handler = _Relay(self._deliver)
        body = {"jsonrpc": "2.0", "id": f"gw-listen-{uri}", "method": "subscriptions/listen",
                "params": {"notifications": {"resourceSubscriptions": [uri]}}}
        try:
            await upstream.request(body, ctx, LISTEN_TIMEOUT_S)
        except UpstreamError as exc:
            log.warning("listen for %s on %s ended: %s", uri, server, exc)

    async def close(self) -> None:
        tasks = list(self._listens.values())
        self._listens.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


