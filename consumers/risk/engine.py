"""The risk engine: events in, scores and block decisions out. Pure and deterministic.

Time comes only from `event.ts_us` and every id from the triggering event's id, so the same events
in the same order yield the same output, and replaying the log rebuilds the state (the consumer
suppresses re-publishing what it already published; ids make that a lookup).

Which events are read (a tools/call makes four; the other two repeat these payloads):

- agent_message_received, a request: `request_rate` (every request); `rare_tool` and
  `sensitive_sequence` (tools/call, resources/read); `secret_in_payload` and `pii_in_payload`
  (the arguments of tools/call and prompts/get);
- upstream_message_received, the answer to a tools/call, resources/read or prompts/get:
  `injection_marker`, `secret_in_payload`, `pii_in_payload`;
- upstream_message_received answering tools/list, and tool_definitions_changed: `tool_drift` and
  `injection_marker`, per tool;
- message_refused with outcome unauthenticated: `auth_failures`.

Subjects and the rows published for them (`RiskScore`):

- a principal within its tenant: `tenant`, `principal`, narrowed to the triggering event's
  `session_id`, `tool` and `server`. Blocked with scope `principal` within its tenant, unless
  listed in `never_block`;
- a tool (server, name): `tenant` and `principal` empty, `server` and `tool` set; scored for
  drift and for injection markers in its definition or its results. Blocked with scope `tool`,
  subject `server/tool` (that server's tool only, whatever the ingress's naming) and no tenant
  (one upstream serves every tenant), when a signal of its definition fired (or of its results,
  with `tool_blocks.from_results`), unless `tool_blocks` is off or `never_block` lists `server/tool`;
- a client address, for authentication failures: `principal` is `client:<address>`; never blocked,
  since decisions have no address scope and blocking `anonymous` would stop nobody or everybody.

A block is decided once per subject while it is in force (`ttl_s`); when it has expired and the
score is still over the threshold, the next event scoring the subject blocks it again. An
operator's unblock forgives the subject's score; for a tool it also accepts the tool's latest
definition (no drift, no marker from that definition), which the operator has reviewed.
"""

from __future__ import annotations

from collections import deque
from typing import TypeVar

from consumers.risk.assessment import Assessment
from consumers.risk.blocks import Blocks
from consumers.risk.lru import Lru
from consumers.risk.scoring import SubjectScore
from consumers.risk.settings import RiskSettings
from consumers.risk.signals.auth_failures import AuthFailures
from consumers.risk.signals.hit import Hit
from consumers.risk.signals.injection import InjectionMarkers
from consumers.risk.signals.rarity import RareTool
from consumers.risk.signals.rate import RequestRate
from consumers.risk.signals.sensitive_data import PII, SECRET, SensitiveData
from consumers.risk.signals.sequence import SensitiveSequence
from consumers.risk.signals.text import json_strings
from consumers.risk.signals.tool_drift import ToolDrift, definitions_in, fingerprint
from schemas.decisions import Decision, DecisionAction, DecisionScope, DecisionSource, parse_tool_subject, tool_subject
from schemas.events import EventType, GatewayEvent, Kind, Outcome
from schemas.risk import RiskScore

SCORER = "mcpgw-risk/1"
ACTOR = "rule:score_over_threshold"
SIGNALS = ("request_rate", "rare_tool", "sensitive_sequence", "injection_marker", SECRET, PII, "auth_failures",
           "tool_drift")  # fmt: skip
# Each occurrence adds; the others are levels (the worst recent payload, the current rate, the
# newest sequence).
_ACCUMULATING = frozenset({"injection_marker"})
_SCANNED_ANSWERS = frozenset({"tools/call", "resources/read", "prompts/get"})
_ANSWER_KINDS = (Kind.RESPONSE, Kind.ERROR)

PrincipalKey = tuple[str, str]  # (tenant, principal)
ToolKey = tuple[str, str]  # (server, upstream tool name)
K = TypeVar("K")


class RiskEngine:
    def __init__(self, settings: RiskSettings | None = None) -> None:
        s = self.settings = settings or RiskSettings()
        self._weights = {name: float(getattr(s, name).weight) for name in SIGNALS}
        self._floor = s.reason_floor
        self._half_life_us = s.half_life_s * 1e6
        self._interval_us = s.emit_interval_s * 1e6
        self._ttl_us = int(s.ttl_s * 1e6)
        self._never_block = frozenset(s.never_block) | {""}
        self._tool_threshold = s.tool_blocks.threshold or s.threshold
        self.rate = RequestRate(s.request_rate, s.max_principals) if s.request_rate.enabled else None
        self.rarity = RareTool(s.rare_tool, s.max_principals) if s.rare_tool.enabled else None
        self.sequence = (SensitiveSequence(s.sensitive_sequence, s.max_sessions, s.max_principals)
                         if s.sensitive_sequence.enabled else None)  # fmt: skip
        self.injection = InjectionMarkers(s.injection_marker) if s.injection_marker.enabled else None
        self.sensitive = (SensitiveData(s.secret_in_payload, s.pii_in_payload)
                          if s.secret_in_payload.enabled or s.pii_in_payload.enabled else None)  # fmt: skip
        self.auth = AuthFailures(s.auth_failures, s.max_clients) if s.auth_failures.enabled else None
        self.drift = ToolDrift(s.tool_drift, s.max_tools) if s.tool_drift.enabled else None
        self._principals: Lru[PrincipalKey, SubjectScore] = Lru(s.max_principals)
        self._tools: Lru[ToolKey, SubjectScore] = Lru(s.max_tools)
        # The newest definition's fingerprint per tool, and the one an operator's unblock accepted.
        self._tool_latest: Lru[ToolKey, str] = Lru(s.max_tools)
        self._tool_accepted: Lru[ToolKey, str] = Lru(s.max_tools)
        self._clients: Lru[str, SubjectScore] = Lru(s.max_clients)
        self._blocks = Blocks(s.max_principals + s.max_tools)
        self._seen: set[str] = set()
        self._seen_order: deque[str] = deque()

    def observe(self, event: GatewayEvent) -> Assessment:
        """Fold one event into the state; the scores to publish and the decisions to take because of it."""
        out = Assessment()
        et = event.event_type
        if et is EventType.AGENT_MESSAGE_RECEIVED:
            if event.kind is Kind.REQUEST and self._first_sight(event.event_id):
                self._agent_request(event, out)
        elif et is EventType.UPSTREAM_MESSAGE_RECEIVED:
            if event.kind in _ANSWER_KINDS and self._first_sight(event.event_id):
                self._upstream_answer(event, out)
        elif et is EventType.MESSAGE_REFUSED:
            if event.outcome is Outcome.UNAUTHENTICATED and self.auth is not None and self._first_sight(event.event_id):
                hit = self.auth.observe(event.client_addr, event.ts_us)
                self._score_client(event, [hit] if hit else [], out)
        elif et is EventType.TOOL_DEFINITIONS_CHANGED and self._first_sight(event.event_id):
            self._definitions(event, out)
        return out

    def active_blocks(self, now_us: int) -> list[Decision]:
        """The blocks this engine knows to be in force at `now_us` (its own, and those it was told of)."""
        return self._blocks.active(now_us)

    def note_decision(self, decision: Decision) -> None:
        """Learn of a decision taken elsewhere (an operator, an alert) about a principal or a tool.

        A block counts as in force, so the engine does not repeat it; an unblock ends the block and
        forgives the principal's score and current request rate (not its baseline), either of which
        would otherwise block it again on its next event. A decision without a tenant is about the
        principal in every tenant. An unblock of a tool (`server/tool`) forgives its score and
        accepts its latest definition, which every later tools/list would otherwise report again.
        """
        self._blocks.note(decision)
        if decision.action is not DecisionAction.UNBLOCK:
            return
        if decision.scope is DecisionScope.TOOL:
            self._forgive_tool(decision.subject)
            return
        if decision.scope is not DecisionScope.PRINCIPAL:
            return
        if decision.tenant is not None:
            forgiven = [(decision.tenant, decision.subject)]
        else:  # every tenant's: a scan, but unblocks are rare
            forgiven = [k for k in self._principals if k[1] == decision.subject]
        for key in forgiven:
            self._principals.pop(key, None)
            if self.rate is not None:
                self.rate.forgive(key)

    def state_sizes(self) -> dict[str, int]:
        """Entries held per state map (each bounded by a `max_*` setting)."""
        sizes = {"principals": len(self._principals), "tools": len(self._tools), "clients": len(self._clients),
                 "blocks": len(self._blocks), "recent_event_ids": len(self._seen),
                 "tool_definitions": len(self._tool_latest),
                 "accepted_definitions": len(self._tool_accepted)}  # fmt: skip
        for name, signal in (("request_rate", self.rate), ("rare_tool", self.rarity),
                             ("sensitive_sequence", self.sequence), ("auth_failures", self.auth),
                             ("tool_drift", self.drift)):  # fmt: skip
            if signal is not None:
                sizes[name] = len(signal)
        return sizes

    # -- per event kind -------------------------------------------------------------------------------

    def _agent_request(self, event: GatewayEvent, out: Assessment) -> None:
        key = (event.tenant, event.principal)
        method = event.method
        hits: list[Hit] = []
        if self.rate is not None and (hit := self.rate.observe(key, event.ts_us)):
            hits.append(hit)
        if method == "tools/call" or method == "resources/read":
            tool = event.tool
            if self.rarity is not None and tool and (hit := self.rarity.observe(key, (event.server, tool))):
                hits.append(hit)
            if self.sequence is not None and (
                hit := self.sequence.observe(key, event.session_id, method, tool, event.ts_us, event.event_id)
            ):
                hits.append(hit)
        if self.sensitive is not None and (method == "tools/call" or method == "prompts/get"):
            hits.extend(self.sensitive.scan(event.payload, event.redactions, event.payload_truncated))
        self._score_principal(event, hits, out)

    def _upstream_answer(self, event: GatewayEvent, out: Assessment) -> None:
        method = event.method
        if method == "tools/list":
            self._definitions(event, out)
            return
        if method not in _SCANNED_ANSWERS:
            return
        hits: list[Hit] = []
        injection = self.injection.scan(event.payload) if self.injection is not None else None
        if injection is not None:
            hits.append(injection)
        if self.sensitive is not None:
            hits.extend(self.sensitive.scan(event.payload, event.redactions, event.payload_truncated))
        self._score_principal(event, hits, out)
        if injection is not None and event.tool:
            self._score_tool(event, event.server, event.tool, [injection], out, self.settings.tool_blocks.from_results)

    def _definitions(self, event: GatewayEvent, out: Assessment) -> None:
        if self.drift is None and self.injection is None:
            return
        definitions = definitions_in(event.payload)
        if not definitions:
            return
        server = event.server
        accepted = self._tool_accepted
        current = []  # (definition, fingerprint) of those an operator has not accepted (by unblocking the tool)
        for definition in definitions:
            key = (server, definition["name"])
            digest = fingerprint(definition)
            self._tool_latest.put(key, digest)
            if not accepted or accepted.get(key) != digest:
                current.append((definition, digest))
        hits: dict[str, list[Hit]] = {}
        if self.drift is not None:
            for name, hit in self.drift.observe(server, current):
                hits.setdefault(name, []).append(hit)
        if self.injection is not None:
            for definition, _ in current:
                text = "\n".join(json_strings(definition)).encode("utf-8", "surrogatepass")
                if marked := self.injection.scan_text(text):
                    hits.setdefault(definition["name"], []).append(marked)
        for name, tool_hits in hits.items():
            self._score_tool(event, server, name, tool_hits, out, True)

    # -- subjects -------------------------------------------------------------------------------------

    def _score_principal(self, event: GatewayEvent, hits: list[Hit], out: Assessment) -> None:
        key = (event.tenant, event.principal)
        scored = self._score(self._principals, key, hits, event)
        if scored is None:
            return
        score, value, reasons, fired = scored
        ts = event.ts_us
        block = value >= self.settings.threshold and self._may_block(key, ts)
        if block or score.due(value, reasons, fired, ts, self.settings.emit_delta, self._interval_us):
            out.scores.append(self._row(event, score, value, reasons, event.tenant, event.principal,
                                        f"principal:{event.tenant}/{event.principal}", event.session_id or None,
                                        event.server or None, event.tool or None))  # fmt: skip
        if block:
            self._block(event, score, value, reasons, f"risk-{event.event_id}", DecisionScope.PRINCIPAL,
                        event.principal, event.tenant, out)  # fmt: skip

    def _score_tool(self, event: GatewayEvent, server: str, tool: str, hits: list[Hit], out: Assessment,
                    may_block: bool) -> None:  # fmt: skip
        """Score a tool; `may_block`: whether these hits can block it (see ToolBlockSettings)."""
        scored = self._score(self._tools, (server, tool), hits, event)
        if scored is None:
            return
        score, value, reasons, fired = scored
        ts = event.ts_us
        subject = tool_subject(server, tool)
        block = (may_block and fired and value >= self._tool_threshold and self.settings.tool_blocks.enabled
                 and subject not in self._never_block
                 and not self._blocks.in_force(DecisionScope.TOOL, None, subject, ts))  # fmt: skip
        if block or score.due(value, reasons, fired, ts, self.settings.emit_delta, self._interval_us):
            out.scores.append(self._row(event, score, value, reasons, "", "", f"tool:{subject}", None, server or None,
                                        tool))  # fmt: skip
        if block:
            # No tenant: the upstream, and so the tool's definition, is the same for every tenant.
            self._block(event, score, value, reasons, f"risk-{event.event_id}/tool:{subject}", DecisionScope.TOOL,
                        subject, None, out)  # fmt: skip

    def _block(
        self, event: GatewayEvent, score: SubjectScore, value: int, reasons: list[str], decision_id: str,
        scope: DecisionScope, subject: str, tenant: str | None, out: Assessment,
    ) -> None:  # fmt: skip
        """Decide a block of the subject for `ttl_s`, note it as in force and add it to `out`."""
        ts = event.ts_us
        decision = Decision(
            ts=ts, decision_id=decision_id, action=DecisionAction.BLOCK, scope=scope, subject=subject, tenant=tenant,
            reason=f"risk score {value}: {', '.join(reasons)}", source=DecisionSource.RISK_ENGINE, actor=ACTOR,
            expires_at=ts + self._ttl_us, risk_score=value, evidence_event_ids=list(score.evidence),
        )  # fmt: skip
        self._blocks.note(decision)
        out.decisions.append(decision)

    def _forgive_tool(self, subject: str) -> None:
        key = parse_tool_subject(subject)
        if key is None:  # a subject by bare or aggregated name: not one the engine blocks
            return
        self._tools.pop(key, None)
        latest = self._tool_latest.get(key)
        if latest is not None:
            self._tool_accepted.put(key, latest)
            if self.drift is not None:
                self.drift.accept(key[0], key[1], latest)

    def _score_client(self, event: GatewayEvent, hits: list[Hit], out: Assessment) -> None:
        client = event.client_addr
        scored = self._score(self._clients, client, hits, event)
        if scored is not None:
            score, value, reasons, fired = scored
            if score.due(value, reasons, fired, event.ts_us, self.settings.emit_delta, self._interval_us):
                out.scores.append(self._row(event, score, value, reasons, event.tenant, f"client:{client}",
                                            f"client:{client}", None, None, None))  # fmt: skip

    def _score(
        self, book: Lru[K, SubjectScore], key: K, hits: list[Hit], event: GatewayEvent
    ) -> tuple[SubjectScore, int, list[str], bool] | None:
        """Apply `hits` to the subject's score; None when there is nothing to evaluate yet.

        Without hits a subject is re-evaluated (for decay) at most once per `emit_interval_s`.
        """
        ts = event.ts_us
        if hits:
            score = book.touch(key, self._new_score)
        else:
            existing = book.get(key)
            if existing is None or not existing.contributions:
                return None
            if existing.evaluated_at is not None and ts - existing.evaluated_at < self._interval_us:
                return None
            book.move_to_end(key)
            score = existing
        score.decay(ts, self._half_life_us)
        fired = False
        for hit in hits:
            weight = self._weights[hit.signal]
            amount = weight * hit.strength
            score.add(hit.signal, amount, weight, hit.signal in _ACCUMULATING, ts)
            if amount >= self._floor:
                fired = True
                score.evidence.extend(hit.evidence)
        if fired and event.event_id:
            score.evidence.append(event.event_id)
        score.evaluated_at = ts
        return score, score.total(), score.reasons(self._floor), fired

    def _first_sight(self, event_id: str) -> bool:
        """False for an event id seen among the last `dedup_window`: a redelivery must not count twice."""
        window = self.settings.dedup_window
        if not event_id or not window:
            return True
        if event_id in self._seen:
            return False
        self._seen.add(event_id)
        self._seen_order.append(event_id)
        if len(self._seen_order) > window:
            self._seen.discard(self._seen_order.popleft())
        return True

    def _new_score(self) -> SubjectScore:
        return SubjectScore(self.settings.max_evidence)

    def _may_block(self, key: PrincipalKey, ts: int) -> bool:
        blocks = self._blocks
        return key[1] not in self._never_block and not blocks.in_force(DecisionScope.PRINCIPAL, key[0], key[1], ts)

    def _row(
        self, event: GatewayEvent, score: SubjectScore, value: int, reasons: list[str], tenant: str, principal: str,
        subject: str, session_id: str | None, server: str | None, tool: str | None,
    ) -> RiskScore:  # fmt: skip
        ts = event.ts_us
        score.published(value, reasons, ts)
        return RiskScore(
            ts=ts, score_id=f"{event.event_id}/{subject}", tenant=tenant, principal=principal, session_id=session_id,
            tool=tool, server=server, score=value, reasons=reasons,
            signals={k: round(v, 2) for k, v in sorted(score.contributions.items())}, window_start=score.since,
            window_end=ts, event_id=event.event_id or None, scorer=SCORER,
        )  # fmt: skip
