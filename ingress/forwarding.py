"""Forwarding one message to one upstream, and what that involves on both endpoints.

The blocklist's target rules are checked last, once the upstream (and tool) is known; a legacy
upstream gets the message without the modern envelope; a modern upstream's `input_required`
answer to a legacy agent is turned into server-to-client requests and retried; resource
subscriptions are counted here, since agents share upstream sessions.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

from mcp_types import INVALID_PARAMS, METHOD_NOT_FOUND

from ingress import errors
from ingress.blocklist import Blocklist
from ingress.catalog import Catalog
from ingress.config import LimitsConfig
from ingress.era_translation import for_legacy_upstream, needs_input
from ingress.jsonrpc import JsonObject, Message, error_body, result_body
from ingress.recorder import Recorder
from ingress.replies import Reply, blocked_reply, error_reply
from ingress.sessions import AgentSession
from ingress.subscriptions import ResourceSubscriptions
from ingress.upstreams.base import CallContext, Upstream
from ingress.upstreams.errors import UpstreamError, UpstreamTimeout
from schemas.events import Outcome

log = logging.getLogger("mcpgw.dispatch")

MAX_INPUT_ROUNDS = 10
LISTEN_TIMEOUT_S = 7 * 24 * 3600.0  # a listen stream lasts until either side closes it


def _now_us() -> int:
    return time.time_ns() // 1000


class Forwarder:
    """The dispatcher's state, and the path of a message to one upstream."""

    def __init__(
        self,
        upstreams: Callable[[], Mapping[str, Upstream]],
        catalog: Catalog,
        limits: LimitsConfig,
        subscriptions: ResourceSubscriptions,
        *,
        blocklist: Blocklist | None = None,
        recorder: Recorder | None = None,
        clock: Callable[[], int] = _now_us,
    ) -> None:
        self._upstreams = upstreams
        self.blocklist = blocklist if blocklist is not None else Blocklist(catalog.naming)
        self.recorder = recorder  # records refusals of notifications, which get no answer to carry them
        self.clock = clock
        self.subscriptions = subscriptions
        self.catalog = catalog
        self.limits = limits

    def _unknown_method(self, msg: Message, ctx: CallContext) -> Reply:
        return error_reply(msg.id, METHOD_NOT_FOUND, f"Method not found: {msg.method}", Outcome.REFUSED,
                           data=msg.method)

    def _timeout(self, upstream: Upstream, method: str = "") -> float:
        if method == "subscriptions/listen":
            return LISTEN_TIMEOUT_S
        config = getattr(upstream, "config", None)
        return getattr(config, "request_timeout_s", None) or self.limits.request_timeout_s

    def _for_upstream(self, body: JsonObject, upstream: Upstream) -> JsonObject:
        """Strip the modern envelope for a legacy upstream; the modern connector adds its own."""
        info = upstream.info
        if info is not None and info.era == "modern":
            return body
        return for_legacy_upstream(body)

    async def _forward(self, server: str, body: JsonObject, ctx: CallContext) -> Reply:
        ctx.server = server
        request_id = body.get("id")
        if self.blocklist.size:
            decision = self.blocklist.match_target(ctx.tenant, ctx.tool, server, self.clock())
            if decision is not None:
                return blocked_reply(request_id, decision)
        upstream = self._upstreams().get(server)
        if upstream is None:
            return error_reply(request_id, INVALID_PARAMS, f"unknown server {server!r}", Outcome.REFUSED)
        try:
            response = await upstream.request(self._for_upstream(body, upstream), ctx,
                                              self._timeout(upstream, str(body.get("method", ""))))
        except UpstreamTimeout as exc:
            return error_reply(request_id, errors.UPSTREAM_TIMEOUT,
                               f"upstream {server!r} did not answer in time: {exc.detail}", Outcome.TIMEOUT,
                               data={"server": server})
        except UpstreamError as exc:
            return error_reply(request_id, errors.UPSTREAM_UNAVAILABLE, f"upstream {server!r} is unavailable: "
                               f"{exc.detail}", Outcome.UPSTREAM_ERROR,
                               data={"server": server, "retryable": exc.retryable})
        if ctx.era != "modern" and needs_input(response) and ctx.handler is not None:
            response = await self._answer_input_required(server, upstream, body, response, ctx)
        outcome = Outcome.UPSTREAM_ERROR if "error" in response else Outcome.OK
        return Reply(response, outcome)

    async def _answer_input_required(self, server: str, upstream: Upstream, body: JsonObject,
                                     response: JsonObject, ctx: CallContext) -> JsonObject:
        """A modern upstream asks a legacy agent: ask it as server-to-client requests, then retry."""
        assert ctx.handler is not None
        request_id = body.get("id")
        for round_no in range(1, MAX_INPUT_ROUNDS + 1):
            result = response["result"]
            answers: JsonObject = {}
            for key, asked in (result.get("inputRequests") or {}).items():
                if not isinstance(asked, dict):
                    continue
                question = {"jsonrpc": "2.0", "id": f"input-{key}", "method": asked.get("method"),
                            "params": asked.get("params") or {}}
                answer = await ctx.handler.request(server, question)
                if "result" not in answer:
                    error = answer.get("error") or {}
                    return error_body(request_id, error.get("code", INVALID_PARAMS),
                                      f"the agent could not answer {asked.get('method')}: {error.get('message')}")
                answers[key] = answer["result"]
            params = {**(body.get("params") or {}), "inputResponses": answers}
            if "requestState" in result:
                params["requestState"] = result["requestState"]
            retry = {**body, "id": f"{request_id}~{round_no}", "params": params}
            try:
                response = await upstream.request(retry, ctx, self._timeout(upstream))
            except UpstreamError as exc:
                return error_body(request_id, errors.UPSTREAM_UNAVAILABLE, f"upstream {server!r}: {exc.detail}")
            response["id"] = request_id
            if not needs_input(response):
                return response
        return error_body(request_id, errors.UPSTREAM_UNAVAILABLE,
                          f"upstream {server!r} still wanted input after {MAX_INPUT_ROUNDS} rounds")

    async def _forward_quietly(self, server: str, msg: Message, ctx: CallContext) -> None:
        upstream = self._upstreams()[server]
        sub = CallContext(ctx.correlation_id, ctx.principal, ctx.tenant, ctx.session_id, ctx.client_addr,
                          ctx.era, ctx.protocol_version, ctx.transport, method=msg.method, server=server)
        try:
            await upstream.request(self._for_upstream(msg.body, upstream), sub, self._timeout(upstream))
        except UpstreamError as exc:
            log.info("%s to %s failed: %s", msg.method, server, exc)

    async def _subscription(self, msg: Message, ctx: CallContext, session: AgentSession | None, server: str,
                            uri: str) -> Reply:
        """Agents share upstream sessions, so subscriptions are counted here, not forwarded one by one."""
        ctx.server = server
        if self.blocklist.size and msg.method == "resources/subscribe":
            decision = self.blocklist.match_target(ctx.tenant, "", server, self.clock())
            if decision is not None:
                return blocked_reply(msg.id, decision)
        if session is None:
            return self._unknown_method(msg, ctx)
        if msg.method == "resources/unsubscribe":
            if session.subscriptions.pop(uri, None) is not None:
                await self.subscriptions.remove(server, uri)
            return Reply(result_body(msg.id, {}))
        if uri not in session.subscriptions:
            if not await self.subscriptions.add(server, uri):
                return error_reply(msg.id, METHOD_NOT_FOUND,
                                   f"server {server!r} does not support resource subscriptions", Outcome.REFUSED)
            session.subscriptions[uri] = server
        return Reply(result_body(msg.id, {}))
