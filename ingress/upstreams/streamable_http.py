"""Streamable HTTP upstreams, in either protocol era.

Legacy (2025-11-25): one `initialize`d session (Mcp-Session-Id) shared by every agent, so ids and
progress tokens are rewritten to gateway-unique values; a call's notifications and the server's
requests arrive on its POST's SSE stream, unrelated traffic on the session's GET stream.
Modern (2026-07-28): no session; every request carries the `_meta` envelope and the mirrored
headers, ids go through untouched, and change notifications arrive on a `subscriptions/listen`
stream. `auto` probes `server/discover` the way the SDK does and falls back to `initialize`.
The exchange itself (POST, JSON or SSE answer, resumption) lives in `http_exchange`, the routing
of the server's other messages in `http_messages`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

import aiohttp
import orjson
from mcp_types import (
    CLIENT_CAPABILITIES_META_KEY,
    CLIENT_INFO_META_KEY,
    LOG_LEVEL_META_KEY,
    PROTOCOL_VERSION_META_KEY,
    UNSUPPORTED_PROTOCOL_VERSION,
)

from ingress.config import HttpServerConfig
from ingress.sse_codec import SseError, iter_events
from ingress.upstreams.base import (
    GATEWAY_CLIENT_INFO,
    CallContext,
    JsonObject,
    StatusHandler,
    UnsolicitedHandler,
    UpstreamState,
    UpstreamTap,
)
from ingress.upstreams.errors import UpstreamProtocolError, UpstreamTimeout
from ingress.upstreams.http_handshake import INIT_HEADERS, MODERN_GATEWAY_CAPS, HttpHandshake
from ingress.upstreams.http_messages import Call, SessionExpired
from ingress.upstreams.mcp_headers import (
    NAME_PARAM,
    ParamHeader,
    encode_value,
    param_headers,
    tool_param_headers,
)

__all__ = ["StreamableHttpUpstream"]

log = logging.getLogger("mcpgw.upstream")

# Envelope keys mean nothing to a legacy server, and the SDK's dual-era loop rejects them there.
_ENVELOPE_KEYS = frozenset((
    PROTOCOL_VERSION_META_KEY, CLIENT_CAPABILITIES_META_KEY, CLIENT_INFO_META_KEY, LOG_LEVEL_META_KEY
))
_LIST_FLAGS = (
    ("tools", "toolsListChanged"), ("prompts", "promptsListChanged"), ("resources", "resourcesListChanged")
)
_HEADER_CACHE_MAX = 1024


class StreamableHttpUpstream(HttpHandshake):
    transport = "streamable_http"

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
        self._param_specs: dict[str, list[ParamHeader]] = {}
        self._resource_uris: tuple[str, ...] = ()
        self._stream_task: asyncio.Task[None] | None = None
        self._reinit_lock = asyncio.Lock()

    # -- requests ---------------------------------------------------------------------------

    def request(
        self, body: JsonObject, ctx: CallContext, timeout: float
    ) -> Coroutine[Any, Any, JsonObject]:
        # Not a coroutine itself: when the upstream is ready the caller awaits the call's own
        # coroutine (one frame less per call).
        if self._status.state is UpstreamState.READY and not self._lost.is_set():
            if self._modern:
                return self._modern_call(body, ctx, timeout, self._generation)
            return self._legacy_call(body, ctx, timeout, self._generation)
        return self._gated_request(body, ctx, timeout)

    async def _gated_request(self, body: JsonObject, ctx: CallContext, timeout: float) -> JsonObject:
        generation = await self._gate()
        if self._modern:
            return await self._modern_call(body, ctx, timeout, generation)
        return await self._legacy_call(body, ctx, timeout, generation)

    async def notify(self, body: JsonObject, ctx: CallContext) -> None:
        generation = await self._gate()
        method = body.get("method")
        if self._modern:
            if method == "notifications/cancelled":
                return  # on this wire closing the call's stream is the cancellation (cancel its task)
            await self._post_message(body, ctx, self._headers_for(str(method), None), generation)
            return
        if method == "notifications/cancelled":
            remapped = self._remap_cancel(body, ctx)
            if remapped is None:
                return  # not one of this agent's calls in flight here: nothing to cancel
            body = remapped
        await self._post_message(body, ctx, self._headers, generation)

    def set_resource_subscriptions(self, uris: Iterable[str]) -> None:
        """The resource URIs the modern listen stream asks updates for (the stream is reopened)."""
        uris = tuple(dict.fromkeys(uris))
        if uris == self._resource_uris:
            return
        self._resource_uris = uris
        if self._modern and self._status.state is UpstreamState.READY:
            self._restart_stream(self._generation)

    async def _legacy_call(
        self, body: JsonObject, ctx: CallContext, limit_s: float, generation: int
    ) -> JsonObject:
        self._next_id += 1
        uid = self._next_id
        method = body.get("method")
        call = Call(ctx, method if isinstance(method, str) else "", body.get("id"))
        out = dict(body)
        out["id"] = uid
        params = out.get("params")
        if type(params) is dict:
            meta = params.get("_meta")
            if type(meta) is dict:
                fresh: JsonObject | None = None
                if "progressToken" in meta:
                    call.token = meta["progressToken"]
                    token = f"g{uid}"
                    fresh = {**meta, "progressToken": token}
                    self._by_token[token] = call
                # Calls the forwarder sends have none left (it strips the envelope for a legacy
                # upstream), so this is one C-speed test, not a scan.
                if not meta.keys().isdisjoint(_ENVELOPE_KEYS):
                    fresh = {k: v for k, v in (fresh or meta).items() if k not in _ENVELOPE_KEYS}
                if fresh is not None:
                    out["params"] = {**params, "_meta": fresh}
        self._calls[uid] = call
        try:
            with self._deadline(limit_s):
                response = await self._legacy_send(out, uid, call, generation)
        except TimeoutError:
            self._cancel_later(uid, f"no answer within {limit_s:g}s", ctx)
            raise UpstreamTimeout(self.name, f"{call.method} got no answer within {limit_s:g}s") from None
        except asyncio.CancelledError:
            self._cancel_later(uid, "cancelled by the client", ctx)
            raise
        finally:
            del self._calls[uid]
            if call.token is not None:
                self._by_token.pop(f"g{uid}", None)
            if call.children:
                for child in call.children:
                    child.cancel()
        return {**response, "id": call.original_id}

    async def _legacy_send(self, out: JsonObject, uid: int, call: Call, generation: int) -> JsonObject:
        wire = orjson.dumps(out)
        try:
            return (await self._exchange(out, wire, uid, call, self._headers, generation))[0]
        except SessionExpired as expired:
            await self._reinitialize(expired.session_id, generation)
        try:
            return (await self._exchange(out, wire, uid, call, self._headers, generation))[0]
        except SessionExpired:
            raise UpstreamProtocolError(self.name, "the session expired again after initialize") from None

    async def _modern_call(
        self, body: JsonObject, ctx: CallContext, limit_s: float, generation: int
    ) -> JsonObject:
        method = body.get("method")
        if not isinstance(method, str):
            method = ""
        params = body.get("params")
        if type(params) is not dict:
            params = {}
        meta = params.get("_meta")
        envelope: JsonObject = dict(meta) if type(meta) is dict else {}
        envelope[PROTOCOL_VERSION_META_KEY] = self._version
        caps = ctx.client_capabilities
        envelope[CLIENT_CAPABILITIES_META_KEY] = (
            caps if caps is not None and ctx.era == "modern" else MODERN_GATEWAY_CAPS
        )
        if CLIENT_INFO_META_KEY not in envelope:
            envelope[CLIENT_INFO_META_KEY] = GATEWAY_CLIENT_INFO
        if ctx.log_level and LOG_LEVEL_META_KEY not in envelope:
            envelope[LOG_LEVEL_META_KEY] = ctx.log_level
        out = {**body, "params": {**params, "_meta": envelope}}
        name_field = NAME_PARAM.get(method)
        name = params.get(name_field) if name_field is not None else None
        headers = self._headers_for(method, name if isinstance(name, str) else None)
        if ctx.mirror_headers:
            headers = {**ctx.mirror_headers, **headers}
        if self._param_specs and method == "tools/call" and isinstance(name, str):
            specs = self._param_specs.get(name)
            if specs:
                extra = param_headers(params.get("arguments"), specs)
                if extra:
                    headers = {**headers, **dict(extra)}
        call = Call(ctx, method, body.get("id"))
        try:
            with self._deadline(limit_s):
                wire = orjson.dumps(out)
                response = (await self._exchange(out, wire, call.original_id, call, headers, generation))[0]
        except TimeoutError:
            # Leaving the exchange closed the response stream, which is this era's cancellation.
            raise UpstreamTimeout(self.name, f"{method} got no answer within {limit_s:g}s") from None
        error = response.get("error")
        if error is not None:
            if isinstance(error, dict) and error.get("code") == UNSUPPORTED_PROTOCOL_VERSION:
                self._connection_lost(generation, f"the server stopped accepting protocol {self._version}")
        elif method == "tools/list":
            self._learn_tools(response)
        return response

    def _headers_for(self, method: str, name: str | None) -> dict[str, str]:
        key = (method, name)
        headers = self._modern_headers.get(key)
        if headers is None:
            if len(self._modern_headers) >= _HEADER_CACHE_MAX:
                self._modern_headers.clear()
            headers = {**INIT_HEADERS, "MCP-Protocol-Version": self._version, "Mcp-Method": method}
            if name is not None:
                headers["Mcp-Name"] = encode_value(name)
            self._modern_headers[key] = headers
        return headers

    def _learn_tools(self, response: JsonObject) -> None:
        result = response.get("result")
        tools = result.get("tools") if isinstance(result, dict) else None
        for tool in tools if isinstance(tools, list) else ():
            name = tool.get("name") if isinstance(tool, dict) else None
            if not isinstance(name, str):
                continue
            specs = tool_param_headers(tool)
            if specs is None:
                log.warning("upstream %s: tool %r has invalid x-mcp-header annotations", self.name, name)
                specs = []
            if specs:
                self._param_specs[name] = specs
            else:
                self._param_specs.pop(name, None)

    def _remap_cancel(self, body: JsonObject, ctx: CallContext) -> JsonObject | None:
        params = body.get("params")
        if not isinstance(params, dict):
            return None
        wanted = params.get("requestId")
        for uid, call in self._calls.items():
            if call.original_id == wanted and call.ctx.session_id == ctx.session_id:
                return {**body, "params": {**params, "requestId": uid}}
        return None

    async def _reinitialize(self, stale_session: str | None, generation: int) -> None:
        async with self._reinit_lock:
            if self._session_id != stale_session:
                return  # another call already replaced the session
            log.info("upstream %s: session %s expired; initializing a new one", self.name, stale_session)
            self._info = await self._initialize(generation)
            self._restart_stream(generation)

    def _on_ready(self, generation: int) -> None:
        self._restart_stream(generation)

    def _restart_stream(self, generation: int) -> None:
        if self._stream_task is not None:
            self._stream_task.cancel()
        stream = self._listen(generation) if self._modern else self._get_stream(generation)
        self._stream_task = self._spawn(stream)

    async def _disconnect(self, final: bool) -> None:
        self._stream_task = None
        session, self._session_id = self._session_id, None
        if final and session is not None and self._http is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self.config.connect_timeout_s):
                    async with self._http.delete(self._url, headers=self._get_headers, allow_redirects=False):
                        pass  # 200, 204 or 405 (termination not allowed): nothing more to do

    # -- background streams -----------------------------------------------------------------

    async def _get_stream(self, generation: int) -> None:
        """The legacy session's GET stream: unrelated notifications and server requests."""
        assert self._http is not None
        session = self._session_id
        last_id: str | None = None
        retry_ms: int | None = None
        opened = False
        failures = 0
        while True:
            headers = self._get_headers
            if last_id is not None:
                headers = {**headers, "Last-Event-ID": last_id}
            try:
                async with self._http.get(self._url, headers=headers, allow_redirects=False) as resp:
                    if resp.status == 405:
                        return  # the server offers no GET stream
                    if resp.status != 200 or resp.content_type != "text/event-stream":
                        if (opened or resp.status == 404) and session == self._session_id:
                            self._connection_lost(generation, f"the GET stream got HTTP {resp.status}")
                        return
                    opened = True
                    failures = 0
                    async for event in iter_events(resp.content):
                        if event.id is not None:
                            last_id = event.id
                        if event.retry is not None:
                            retry_ms = event.retry
                        if event.data and event.event == "message":
                            await self._stream_message(event.data)
            except aiohttp.ClientConnectorError as exc:
                self._connection_lost(generation, f"cannot connect to {self._url}: {exc.os_error or exc}")
                return
            except (aiohttp.ClientError, SseError) as exc:
                log.info("upstream %s: GET stream dropped: %s", self.name, exc)
                failures += 1
            resume_ms = retry_ms if retry_ms is not None and not failures else None
            await asyncio.sleep(resume_ms / 1000 if resume_ms is not None else self._backoff(failures))

    async def _listen(self, generation: int) -> None:
        """The modern `subscriptions/listen` stream, reopened with backoff while the server lives."""
        assert self._http is not None
        capabilities = self._info.capabilities if self._info is not None else {}
        wanted: JsonObject = {}
        for capability, flag in _LIST_FLAGS:
            cap = capabilities.get(capability)
            if isinstance(cap, dict) and cap.get("listChanged"):
                wanted[flag] = True
        resources = capabilities.get("resources")
        if self._resource_uris and isinstance(resources, dict) and resources.get("subscribe"):
            wanted["resourceSubscriptions"] = list(self._resource_uris)
        if not wanted:
            return
        headers = self._headers_for("subscriptions/listen", None)
        failures = 0
        while True:
            ctx = self._system_ctx()
            self._next_id += 1
            body = {"jsonrpc": "2.0", "id": f"gw-listen-{self._next_id}", "method": "subscriptions/listen",
                    "params": {"notifications": wanted, "_meta": {
                        PROTOCOL_VERSION_META_KEY: self._version,
                        CLIENT_INFO_META_KEY: GATEWAY_CLIENT_INFO,
                        CLIENT_CAPABILITIES_META_KEY: MODERN_GATEWAY_CAPS,
                    }}}
            wire = orjson.dumps(body)
            await self._tap.sent(self.name, body, wire, ctx)
            acknowledged = False
            try:
                post = self._http.post(self._url, data=wire, headers=headers, allow_redirects=False)
                async with post as resp:
                    if resp.status != 200 or resp.content_type != "text/event-stream":
                        await self._record_body(resp, ctx)
                        log.warning("upstream %s: listen refused (HTTP %s)", self.name, resp.status)
                        return
                    async for event in iter_events(resp.content):
                        if not event.data:
                            continue
                        message = await self._listen_message(event.data, ctx)
                        if message is None:
                            continue
                        if "method" not in message:
                            break  # the server ended the subscription gracefully
                        if message["method"] == "notifications/subscriptions/acknowledged":
                            acknowledged = True
                        elif "id" not in message:
                            await self._deliver_unsolicited(message)
            except aiohttp.ClientConnectorError as exc:
                self._connection_lost(generation, f"cannot connect to {self._url}: {exc.os_error or exc}")
                return
            except (aiohttp.ClientError, SseError) as exc:
                log.info("upstream %s: listen stream dropped: %s", self.name, exc)
            failures = 0 if acknowledged else failures + 1
            await asyncio.sleep(self._backoff(failures))

    async def _listen_message(self, data: bytes, ctx: CallContext) -> JsonObject | None:
        try:
            message = orjson.loads(data)
        except orjson.JSONDecodeError:
            message = None
        if not isinstance(message, dict):
            await self._tap.received(self.name, {}, data, ctx, None)
            return None
        await self._tap.received(self.name, message, data, ctx, None)
        return message
