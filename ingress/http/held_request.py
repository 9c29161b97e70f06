"""Modern calls that may need the agent's input mid-call (MRTR): run held, answered `input_required`.

A modern agent cannot be asked a question while its call runs. When the upstream asks (a legacy
upstream's sampling, elicitation or roots request), the call is held by the gateway, the agent gets
an `input_required` result with a `requestState`, and its retry with `inputResponses` resumes the
held call where it waits.
"""

from __future__ import annotations

import asyncio

from aiohttp import web
from mcp_types import INVALID_PARAMS

from ingress.dispatch import Reply
from ingress.gateway import Gateway
from ingress.http.admission import refuse
from ingress.http.channel import PostChannel
from ingress.jsonrpc import Message, error_body, result_body
from ingress.mrtr import EXPIRED, STATE_PREFIX, HeldCall, input_required, next_outcome, params_digest
from ingress.upstreams.base import CallContext
from schemas.events import Outcome

_KIND_OF = {"tools/call": "tool", "prompts/get": "prompt"}  # what the call names, for the catalog's routing


def may_hold(gateway: Gateway, msg: Message, target: str) -> bool:
    """Whether a modern agent's call must run held: a retry with the gateway's `requestState`, or a
    call routed to an upstream that may ask the agent mid-call (legacy era, or not known yet).

    A modern upstream never asks mid-call (it answers `input_required` itself, which goes through
    as is), so its calls skip the held task, its wake-ups and the params digest.
    """
    state = msg.params.get("requestState")
    if isinstance(state, str) and state.startswith(STATE_PREFIX):
        return True
    server = target
    if not server:
        name = msg.params.get("name")
        owner = gateway.catalog.cached_route(_KIND_OF.get(msg.method, ""), name) if isinstance(name, str) else None
        if owner is None:
            return True  # not routed from the cache (resources, unknown names): run held to be safe
        server = owner.server
    upstream = gateway.upstreams.get(server)
    info = upstream.info if upstream is not None else None
    return info is None or info.era != "modern"

async def request_held(gateway: Gateway, request: web.Request, msg: Message, ctx: CallContext,
                       target: str) -> web.StreamResponse:
    """A call that may need the agent's input: run it held, answer input_required if it asks."""
    timeout = gateway.config.limits.request_timeout_s
    state = msg.params.get("requestState")
    ask_again: list[str] = []
    if isinstance(state, str) and state.startswith(STATE_PREFIX):
        held = gateway.held_calls.find(state, ctx.principal, msg.method, params_digest(msg.params))
        responses = msg.params.get("inputResponses", {})
        if held is None or held.busy or not isinstance(responses, dict):
            problem = ("requestState is unknown, expired, altered, or was issued for another request; call "
                       "again without it" if held is None else
                       "another retry with this requestState is in progress" if held.busy else
                       "inputResponses must be an object")
            ctx.deferred.clear()
            return await refuse(gateway, ctx, 400, INVALID_PARAMS, problem, Outcome.REFUSED, msg.dumps(),
                                msg.body, msg.id)
        held.ctx.deferred.extend(ctx.deferred)
        ctx.deferred.clear()
        channel = PostChannel(request, gateway.recorder, held.ctx, None, timeout)
        held.ctx.handler = channel
        held.answer(responses)
        ask_again = [k for k in held.unanswered() if k not in held.fresh]
    else:
        held = HeldCall(ctx.principal, msg.method, ctx, params_digest(msg.params))
        channel = PostChannel(request, gateway.recorder, ctx, None, timeout)
        ctx.handler = channel
        held.run(asyncio.ensure_future(gateway.dispatcher.request(msg, ctx, target, None)))
    channel.held = held
    held.busy = True
    try:
        outcome = None if ask_again else await next_outcome(held)
    except asyncio.CancelledError:
        gateway.held_calls.drop(held)  # the agent closed the stream: that cancels the call
        raise
    finally:
        held.busy = False
    if outcome is EXPIRED:
        return await channel.finish(Reply(error_body(msg.id, INVALID_PARAMS, "the held call expired before "
                                                     "this retry; call again without requestState"),
                                          Outcome.TIMEOUT))
    if outcome is None:
        keys = ask_again + held.fresh
        held.fresh.clear()
        result = input_required(held, gateway.held_calls.register(held), keys)
        return await channel.finish(Reply(result_body(msg.id, result)))
    gateway.held_calls.drop(held)
    channel.held = None  # the call is over: break the held call <-> channel cycle for the GC
    held.ctx.handler = None
    reply: Reply = outcome
    reply.body["id"] = msg.id
    return await channel.finish(reply)
