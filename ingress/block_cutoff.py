"""A caller-scope block reaches the caller's open server-to-agent streams, not only its next request.

When a principal, session or tenant block is applied in this replica, every session it covers
(`ingress.block_reach`) loses its open streams at once:

- A Streamable HTTP session's GET stream ends cleanly (the SSE response is finished). The session
  itself stays: a blocked request is refused without touching the session either, so while the
  block lasts every request, notification and GET on it is refused with -32012 naming the
  decision, and after an unblock (or expiry) the agent carries on with the same session and opens
  a new GET stream. A session-scope block stays meaningful that way (closing the session would
  turn "block session X" into "make the agent start a new, unblocked session"); a session nobody
  uses any more is collected by the idle timeout as usual.
- A legacy HTTP+SSE connection *is* its session (closing it ends the session, by that transport's
  definition), so it ends with `session_closed`, outcome `blocked`, the detail naming the decision;
  after the block lifts the agent connects again.
- A 2026-07-28 `subscriptions/listen` stream of the caller ends like a gateway-ended subscription.

Each cut of a stream that stays in a kept session is recorded as `message_refused`, outcome
`blocked`, error -32012, direction `gateway_to_agent`, kind `lifecycle`: the gateway refuses the
agent any further traffic on that stream, and the same event type, outcome and code mark every
server-to-agent message withheld while the block lasts, so one query shows all a block withheld.
The record comes first; if the audit log cannot take it the stream is cut all the same (the block
is in force whether or not its effects could be recorded, as for the decision itself) and the
failure is logged.

While a caller is blocked, a server-to-agent message for its session is not delivered and its
non-delivery is recorded the same way (the payload is the message withheld). A server request
that is withheld is answered to the upstream with the -32012 error, so the upstream does not wait
for an agent that will never answer; it travels back the way other undeliverable server requests'
answers do (an error body the connector sends upstream).

Calls already in flight are not cancelled (a block refuses what comes next, it does not undo what
was admitted), but what their upstream sends towards the agent is withheld as above.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable

from ingress import errors
from ingress.block_reach import covered, covers, reaches_callers
from ingress.blocklist import Blocklist, describe, refusal
from ingress.recorder import Recorder, system_context
from ingress.sessions import AgentSession, Outbox
from ingress.sink import SinkUnavailable
from ingress.upstreams.base import CallContext, JsonObject
from schemas.decisions import Decision
from schemas.events import Direction, EventType, Kind, Outcome

log = logging.getLogger("mcpgw.block_cutoff")


class BlockCutoff:
    def __init__(self, blocklist: Blocklist, recorder: Recorder, clock: Callable[[], int]) -> None:
        self.blocklist = blocklist
        self.recorder = recorder
        self.clock = clock

    def blocking(self, principal: str, tenant: str, session_id: str) -> Decision | None:
        """The block on this caller now, if any (one integer test while nothing is blocked)."""
        if not self.blocklist.size:
            return None
        return self.blocklist.match_caller(principal, tenant, session_id, self.clock())

    async def withhold(self, ctx: CallContext, decision: Decision, body: JsonObject, wire: bytes,
                       detail: str = "") -> None:
        """Record that a server-to-agent message (or, with an empty body, a stream) was withheld."""
        message, _ = refusal(decision)
        event = self.recorder.event(EventType.MESSAGE_REFUSED, body, wire, ctx, outcome=Outcome.BLOCKED,
                                    detail=detail or f"not delivered to the agent: {message}")
        event.direction = Direction.GATEWAY_TO_AGENT
        if not body:
            event.kind = Kind.LIFECYCLE
        event.error_code = errors.BLOCKED
        event.error_message = message[:1000]
        await self.recorder.flush(ctx, event)

    def answer(self, request_id: object, decision: Decision) -> JsonObject:
        """What the upstream gets for a server request withheld from a blocked agent."""
        message, data = refusal(decision)
        return {"jsonrpc": "2.0", "id": request_id,
                "error": {"code": errors.BLOCKED, "message": f"the agent is blocked: {message}", "data": data}}

    async def cut(self, decision: Decision, sessions: Iterable[AgentSession],
                  listeners: Iterable[tuple[CallContext, Outbox]],
                  close_session: Callable[[AgentSession, str, Outcome], Awaitable[None]]) -> int:
        """End the open streams `decision` covers; returns how many were cut."""
        now = self.clock()
        if not reaches_callers(decision, now):
            return 0
        why = f"blocked by decision {decision.decision_id} ({describe(decision)})"
        cut = 0
        for session in covered(decision, sessions, now):
            if session.transport == "sse":
                await close_session(session, f"HTTP+SSE connection ended: {why}", Outcome.BLOCKED)
                cut += 1
                continue
            if not session.streams:
                continue
            ctx = system_context(session_id=session.id, principal=session.principal, tenant=session.tenant)
            ctx.transport = session.transport
            ctx.protocol_version = session.protocol_version
            ctx.server = session.target
            await self._recorded(ctx, decision, f"GET stream ended: {why}; the session stays")
            for outbox in session.streams:
                outbox.put_nowait(None)
            cut += len(session.streams)
        for ctx, outbox in listeners:
            if covers(decision, ctx.principal, ctx.tenant, ctx.session_id, now):
                await self._recorded(ctx, decision, f"subscriptions/listen stream ended: {why}")
                outbox.put_nowait(None)
                cut += 1
        return cut

    async def _recorded(self, ctx: CallContext, decision: Decision, detail: str) -> None:
        try:
            await self.withhold(ctx, decision, {}, b"", detail)
        except SinkUnavailable as exc:
            log.error("stream cut not recorded (the audit log is unavailable), cut all the same: %s: %s",
                      detail, exc)
