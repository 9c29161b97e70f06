"""Upstreams on the deprecated HTTP+SSE transport (protocol 2024-11-05).

The client GETs the SSE URL, waits for the `endpoint` event, then POSTs every message to that
endpoint; everything the server sends (responses, notifications, its own requests) comes back
on the one SSE stream. That stream is a duplex JSON-RPC channel, so `JsonRpcPeer` multiplexes
the agents' calls over it. When the stream drops, calls in flight fail and the supervisor
reconnects and redoes the `initialize` handshake (the server keeps no state across streams).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from urllib.parse import urljoin, urlsplit

import aiohttp

from ingress.config import HttpServerConfig
from ingress.sse_codec import SseError, iter_events
from ingress.upstreams.base import (
    CallContext,
    JsonObject,
    StatusHandler,
    UnsolicitedHandler,
    UpstreamInfo,
    UpstreamState,
    UpstreamTap,
)
from ingress.upstreams.errors import UpstreamProtocolError, UpstreamUnavailable
from ingress.upstreams.http_base import HttpUpstreamBase, describe
from ingress.upstreams.rpc_peer import JsonRpcPeer

__all__ = ["SseUpstream"]

log = logging.getLogger("mcpgw.upstream")

_GET_HEADERS = {"Accept": "text/event-stream"}
_POST_HEADERS = {"Content-Type": "application/json"}


class SseUpstream(HttpUpstreamBase):
    transport = "sse"

    def __init__(
        self,
        name: str,
        config: HttpServerConfig,
        tap: UpstreamTap,
        on_unsolicited: UnsolicitedHandler,
        on_status: StatusHandler,
        system_ctx: Callable[[], CallContext],
        default_timeout: float,
    ) -> None:
        super().__init__(name, config, tap, on_unsolicited, on_status, system_ctx, default_timeout)
        self._peer: JsonRpcPeer | None = None
        self._stream: aiohttp.ClientResponse | None = None
        self._endpoint: str | None = None

    async def request(
        self, body: JsonObject, ctx: CallContext, timeout: float
    ) -> JsonObject:
        if self._status.state is not UpstreamState.READY or self._lost.is_set():
            await self._gate()
        peer = self._peer
        if peer is None:
            raise UpstreamUnavailable(self.name, "not connected")
        return await peer.request(body, ctx, timeout)

    async def notify(self, body: JsonObject, ctx: CallContext) -> None:
        await self._gate()
        peer = self._peer
        if peer is None:
            raise UpstreamUnavailable(self.name, "not connected")
        await peer.notify(body, ctx)

    async def _connect(self) -> UpstreamInfo:
        if self.config.protocol == "modern":
            raise UpstreamProtocolError(self.name, "the HTTP+SSE transport only speaks the initialize era; "
                                        "use protocol auto or legacy")
        http = self._http
        assert http is not None
        try:
            resp = await http.get(self._url, headers=_GET_HEADERS, allow_redirects=False)
        except aiohttp.ClientConnectorError as exc:
            detail = f"cannot connect to {self._url}: {exc.os_error or exc}"
            raise UpstreamUnavailable(self.name, detail) from exc
        self._stream = resp
        if resp.status != 200 or resp.content_type != "text/event-stream":
            raise UpstreamProtocolError(self.name, f"GET {self._url} answered HTTP {resp.status} "
                                        f"({resp.content_type}), not an event stream")
        endpoint: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        endpoint.add_done_callback(lambda f: f.cancelled() or f.exception())
        peer = JsonRpcPeer(self.name, self._send, self._tap, self._on_unsolicited, self._system_ctx)
        self._peer = peer
        self._spawn(self._read(resp, peer, endpoint))
        self._endpoint = await endpoint
        return await peer.initialize(self._timeout)

    async def _read(
        self, resp: aiohttp.ClientResponse, peer: JsonRpcPeer, endpoint: asyncio.Future[str]
    ) -> None:
        reason = "the server closed the SSE stream"
        try:
            async for event in iter_events(resp.content):
                if event.event == "message":
                    if event.data:
                        peer.feed(event.data)
                elif event.event == "endpoint" and not endpoint.done():
                    url = urljoin(self._url, event.data.decode("utf-8", "replace").strip())
                    if urlsplit(url)[:2] != urlsplit(self._url)[:2]:
                        # Never send the configured credentials to another origin.
                        endpoint.set_exception(UpstreamProtocolError(
                            self.name, f"the endpoint {url} is not on the origin of {self._url}"))
                        return
                    endpoint.set_result(url)
        except (aiohttp.ClientError, SseError) as exc:
            reason = f"the SSE stream broke: {describe(exc)}"
        if not endpoint.done():
            endpoint.set_exception(UpstreamUnavailable(self.name, reason))
        peer.close(reason)
        if peer is self._peer and self._status.state is UpstreamState.READY:
            self._connection_lost(self._generation, reason)

    async def _send(self, wire: bytes) -> None:
        http, endpoint = self._http, self._endpoint
        if http is None or endpoint is None:
            raise UpstreamUnavailable(self.name, "not connected")
        try:
            async with http.post(endpoint, data=wire, headers=_POST_HEADERS, allow_redirects=False) as resp:
                if resp.status >= 300:
                    text = (await resp.content.read(300)).decode("utf-8", "replace")
                    detail = f"POST {endpoint} answered HTTP {resp.status}: {text}"
                    raise UpstreamProtocolError(self.name, detail)
        except aiohttp.ClientError as exc:
            raise self._transport_error(exc, self._generation) from exc
        except RuntimeError as exc:
            if http.closed:  # stop() closed the session under this call
                raise UpstreamUnavailable(self.name, "the connector stopped", retryable=False) from exc
            raise

    async def _disconnect(self, final: bool) -> None:
        peer, self._peer = self._peer, None
        if peer is not None:
            peer.close("the upstream connector is stopped" if final else "reconnecting")
            await peer.aclose()
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.close()
        self._endpoint = None
