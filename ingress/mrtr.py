"""Held calls: server-to-client requests from a legacy upstream, offered to a modern agent as MRTR.

A 2026-07-28 agent cannot be asked anything mid-call; it is told `input_required` instead and
retries the call with `inputResponses` and the `requestState` it was given. When a legacy
upstream asks (sampling, elicitation, roots) during such a call, the gateway keeps the upstream
call open ("held"), answers the agent with an `InputRequiredResult`, and on the retry feeds the
answers to the waiting upstream and carries on. `requestState` is an opaque handle sealed with an
HMAC and bound to the principal and the method, so a forged or replayed state is refused.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import secrets
from dataclasses import dataclass, field
from typing import Any

import orjson

from ingress.upstreams.base import CallContext, JsonObject

EXPIRED = object()  # next_outcome's answer for a held call that was dropped while a retry waited
MRTR_METHODS = frozenset({"tools/call", "prompts/get", "resources/read"})
STATE_PREFIX = "mcpgw1."


def params_digest(params: JsonObject) -> str:
    """What a retry must repeat: the original params, less the MRTR fields and the envelope."""
    core = {k: v for k, v in params.items() if k not in ("inputResponses", "requestState", "_meta")}
    return hashlib.sha256(orjson.dumps(core, option=orjson.OPT_SORT_KEYS)).hexdigest()


@dataclass(eq=False)
class HeldCall:
    principal: str
    method: str
    ctx: CallContext
    digest: str = ""
    busy: bool = False  # a retry is being served: a second concurrent one is refused
    task: asyncio.Task[Any] | None = None
    handle: str = ""  # minted when the call is first held: most calls never need one
    asked: dict[str, tuple[JsonObject, asyncio.Future[JsonObject]]] = field(default_factory=dict)
    fresh: list[str] = field(default_factory=list)  # keys not yet shown to the agent
    expiry: asyncio.TimerHandle | None = None
    _wake: asyncio.Future[None] | None = None
    _keys: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def run(self, task: asyncio.Task[Any]) -> None:
        self.task = task
        task.add_done_callback(self._woken)

    def _woken(self, _task: object = None) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    def ask(self, request: JsonObject) -> asyncio.Future[JsonObject]:
        """Queue one input request for the agent; the future gets the agent's answer."""
        key = f"input-{next(self._keys)}"
        future: asyncio.Future[JsonObject] = asyncio.get_running_loop().create_future()
        self.asked[key] = (request, future)
        self.fresh.append(key)
        self._woken()
        return future

    def answer(self, responses: JsonObject) -> None:
        for key, value in responses.items():
            entry = self.asked.get(key)
            if entry is not None and not entry[1].done():
                entry[1].set_result(value if isinstance(value, dict) else {"value": value})

    def unanswered(self) -> dict[str, JsonObject]:
        return {k: req for k, (req, fut) in self.asked.items() if not fut.done()}


class HeldCalls:
    """The registry of held calls of this ingress process."""

    def __init__(self, ttl_s: float, secret: bytes | None = None) -> None:
        self.ttl_s = ttl_s
        self._secret = secret or secrets.token_bytes(32)
        self._calls: dict[str, HeldCall] = {}

    def __len__(self) -> int:
        return len(self._calls)

    def seal(self, call: HeldCall) -> str:
        mac = hmac.new(self._secret, f"{call.handle}|{call.principal}|{call.method}|{call.digest}".encode(),
                       hashlib.sha256)
        return f"{STATE_PREFIX}{call.handle}.{mac.hexdigest()[:32]}"

    def register(self, call: HeldCall) -> str:
        if not call.handle:
            call.handle = secrets.token_hex(12)
        if call.handle not in self._calls:
            self._calls[call.handle] = call
        self._arm(call)
        return self.seal(call)

    def _arm(self, call: HeldCall) -> None:
        if call.expiry is not None:
            call.expiry.cancel()
        call.expiry = asyncio.get_running_loop().call_later(self.ttl_s, self.drop, call)

    def find(self, state: object, principal: str, method: str, digest: str) -> HeldCall | None:
        if not isinstance(state, str) or not state.startswith(STATE_PREFIX):
            return None
        handle, _, _mac = state[len(STATE_PREFIX):].partition(".")
        call = self._calls.get(handle)
        if call is None or call.principal != principal or call.method != method or call.digest != digest:
            return None
        if not hmac.compare_digest(self.seal(call), state):
            return None
        self._arm(call)
        return call

    def drop(self, call: HeldCall) -> None:
        """Forget a held call; if the agent never came back, cancel it upstream."""
        if call.handle:
            self._calls.pop(call.handle, None)
        if call.expiry is not None:
            call.expiry.cancel()
        if call.task is not None and not call.task.done():
            call.task.cancel()
        for _request, future in call.asked.values():
            if not future.done():
                future.cancel()
        call._woken()

    def close(self) -> None:
        for call in list(self._calls.values()):
            self.drop(call)


async def next_outcome(call: HeldCall) -> Any:
    """Wait until the held call finishes (its `Reply`) or needs input (None)."""
    assert call.task is not None
    while True:
        if call.task.cancelled():
            return EXPIRED
        if call.task.done():
            return call.task.result()
        if call.fresh:
            return None
        call._wake = asyncio.get_running_loop().create_future()
        await call._wake


def input_required(call: HeldCall, state: str, keys: list[str]) -> JsonObject:
    requests: JsonObject = {}
    for key in keys:
        request, _future = call.asked[key]
        requests[key] = request
    return {"resultType": "input_required", "inputRequests": requests, "requestState": state}
