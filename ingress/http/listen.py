"""`subscriptions/listen` (2026-07-28): a modern agent's stream of change notifications.

The gateway runs the subscription itself for the aggregate and for legacy upstreams (it subscribes
upstream to the resources asked for and relays list changes); a modern upstream on its own
endpoint runs its own, and its stream is relayed as is (`passes_listen`).
"""

from __future__ import annotations

import asyncio
import contextlib

import orjson
from aiohttp import web

from ingress import eras
from ingress.gateway import Gateway, Listener
from ingress.http.channel import SSE_HEADERS, pump, sse_event
from ingress.jsonrpc import Message
from ingress.upstreams.base import CallContext


def passes_listen(gateway: Gateway, target: str) -> bool:
    """A modern upstream on its own endpoint runs its own subscriptions: relay its stream as is."""
    upstream = gateway.upstreams.get(target) if target else None
    return upstream is not None and upstream.info is not None and upstream.info.era == "modern"

async def listen(gateway: Gateway, request: web.Request, msg: Message, ctx: CallContext,
                 target: str) -> web.StreamResponse:
    wants = msg.params.get("notifications")
    wants = wants if isinstance(wants, dict) else {}
    listener = Listener(msg.id, target, ctx, wants)
    accepted = {k: v for k, v in wants.items()
                if k in ("toolsListChanged", "promptsListChanged", "resourcesListChanged",
                         "resourceSubscriptions")}
    ack = {"jsonrpc": "2.0", "method": "notifications/subscriptions/acknowledged",
           "params": {"_meta": {eras.META_SUBSCRIPTION_ID: msg.id}, "notifications": accepted}}
    ack_wire = orjson.dumps(ack)
    uris = wants.get("resourceSubscriptions")
    # Upstream subscriptions first: a change right after the ack must already reach us.
    gateway.listeners.add(listener)
    subscribed = await gateway.subscribe_resources(
        [u for u in uris if isinstance(u, str)] if isinstance(uris, list) else [], target)
    try:
        await gateway.recorder.agent_sent(ctx, ack, ack_wire, final=False)
        stream = web.StreamResponse(status=200, headers=SSE_HEADERS)
        await stream.prepare(request)
        await stream.write(sse_event(ack_wire))
        await pump(stream, listener.outbox)
        # The gateway is ending the subscription: close it gracefully with a result.
        done = {"jsonrpc": "2.0", "id": msg.id, "result": {
            "resultType": "complete", "_meta": {eras.META_SUBSCRIPTION_ID: msg.id}}}
        wire = orjson.dumps(done)
        await gateway.recorder.agent_sent(ctx, done, wire)
        with contextlib.suppress(ConnectionError):
            await stream.write(sse_event(wire))
            await stream.write_eof()
    finally:
        gateway.listeners.discard(listener)
        await asyncio.shield(gateway.unsubscribe_resources(subscribed))
    return stream
