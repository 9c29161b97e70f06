"""The admin API: operator decisions, the read-only audit query, and Grafana's alert webhook.

    POST /admin/decisions     {"action", "scope", "subject", "tenant"?, "ttl_s"?, "reason", "actor"?}
                              → 201 {"decision": {...}} (enums as strings, ts/expires_at in UTC µs)
    GET  /admin/decisions     → 200 {"active": [{...}, ...]}
    POST /admin/audit/query   {"sql": "SELECT ..."} → 200 {"columns": [...], "types": [...], "rows": [[...]]}
                              (datetimes as ISO 8601 UTC with a Z, bytes as base64, decimals as strings)
    POST /admin/alerts/grafana  Grafana's webhook, signed (HMAC + timestamp), only with admin.grafana set

Every route but the webhook (which Grafana signs) takes `Authorization: Bearer <token>`, checked in
constant time against `admin.token_sha256`. Errors are `{"error": "<what is wrong and what to do>"}`:
403 when the admin API is not configured, 401 (with `WWW-Authenticate: Bearer`) for a missing or
wrong token, 400 for bad input, 503 when something it needs is down (retry later).

Every request is audited like an agent's message, with method `admin/...`: refusals as a
`message_refused` event; accepted requests as received + answered events, the request made
durable before it acts (audit-first). Query results are recorded as a summary, not the rows: the
SQL is what was asked, and the audit trail must not grow copies of itself.
"""

from __future__ import annotations

import base64
import dataclasses
import hmac
import logging
from decimal import Decimal
from typing import Any

import orjson
from aiohttp import web
from mcp_types import INVALID_PARAMS, INVALID_REQUEST, PARSE_ERROR

from eventlog.base import LogError
from ingress.audit_query import AuditQueryRefused, AuditQueryUnavailable
from ingress.auth import bearer_token, token_sha256
from ingress.decision_feed import now_us
from ingress.decision_input import InvalidDecision, decision_json, operator_decision
from ingress.errors import AUDIT_UNAVAILABLE, UNAUTHENTICATED
from ingress.gateway import Gateway
from ingress.grafana_alerts import GrafanaAlertReceiver, Rejected
from ingress.jsonrpc import JsonObject
from ingress.sink import SinkUnavailable
from ingress.upstreams.base import CallContext
from schemas.decisions import Decision, DecisionAction
from schemas.events import Outcome, new_event_id

log = logging.getLogger("mcpgw.admin")

MAX_ADMIN_BODY = 1024 * 1024
DISABLED = "the admin API is disabled: set admin.token_sha256 in the config"
_CODE_OF_STATUS = {400: INVALID_PARAMS, 401: UNAUTHENTICATED, 403: INVALID_REQUEST, 413: INVALID_REQUEST,
                   503: AUDIT_UNAVAILABLE}
_JSON_OPTIONS = orjson.OPT_NAIVE_UTC | orjson.OPT_UTC_Z | orjson.OPT_NON_STR_KEYS


def _json_default(value: object) -> object:
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")  # payloads are evidence: exact, not decoded
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, set | frozenset):
        return list(value)
    return str(value)


def _response(status: int, data: object, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data, default=_json_default, option=_JSON_OPTIONS),
                        content_type="application/json", headers=headers)


class AdminRequest:
    """One admin request's audit trail: a refusal, or the request (durable first) and its answer."""

    def __init__(self, gateway: Gateway, request: web.Request, method: str, principal: str = "anonymous") -> None:
        self.recorder = gateway.recorder
        self.method = method
        self.request_id = new_event_id()
        self.ctx = CallContext(correlation_id=self.request_id, principal=principal,
                               client_addr=request.remote or "", transport="http", method=method)

    def _body(self) -> JsonObject:
        return {"method": self.method, "id": self.request_id}

    async def refuse(self, status: int, message: str, outcome: Outcome = Outcome.REFUSED, received: bytes = b"",
                     code: int | None = None, headers: dict[str, str] | None = None) -> web.Response:
        try:
            await self.recorder.refused(self.ctx, self._body(), received, code or _CODE_OF_STATUS.get(status, 0),
                                        message, outcome)
        except SinkUnavailable as exc:
            # Nothing was done, so the refusal goes out even though it could not be recorded.
            log.error("audit log unavailable; refusal of %s not recorded: %s", self.method, exc)
        return _response(status, {"error": message}, headers)

    async def received(self, raw: bytes) -> web.Response | None:
        """Record the request durably before acting on it; a response to send if that failed."""
        self.recorder.agent_received(self.ctx, self._body(), raw)
        try:
            await self.recorder.flush(self.ctx)
        except SinkUnavailable as exc:
            log.error("audit log unavailable, refusing %s: %s", self.method, exc)
            return _response(503, {"error": f"the audit log cannot record this request, so nothing was done: {exc}; "
                                            "retry later"})
        return None

    async def answer(self, status: int, data: dict[str, Any], outcome: Outcome = Outcome.OK,
                     recorded: dict[str, Any] | None = None) -> web.Response:
        """Send `data`; the event keeps `recorded` in its place when given (a summary of a large answer)."""
        response = _response(status, data)
        error = data.get("error")
        body: JsonObject = {"id": self.request_id}
        if error is not None:
            body["error"] = {"code": _CODE_OF_STATUS.get(status, 0), "message": str(error)}
        else:
            body["result"] = {}
        wire = orjson.dumps(recorded, default=_json_default) if recorded is not None else response.body
        try:
            await self.recorder.agent_sent(self.ctx, body, wire if isinstance(wire, bytes) else b"", outcome=outcome)
        except SinkUnavailable as exc:
            # The request itself is on record and what it did is done: say so, but still answer.
            log.error("audit log unavailable; the answer to %s %s was not recorded: %s", self.method,
                      self.request_id, exc)
        return response


class AdminApi:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        admin = gateway.config.admin
        self._token_sha256 = bytes.fromhex(admin.token_sha256) if admin is not None else None
        self._grafana: GrafanaAlertReceiver | None = None
        if admin is not None and admin.grafana is not None:
            self._grafana = GrafanaAlertReceiver(admin.grafana, new_event_id)

    def register(self, router: web.UrlDispatcher) -> None:
        router.add_post("/admin/decisions", self.post_decision)
        router.add_get("/admin/decisions", self.list_decisions)
        router.add_post("/admin/audit/query", self.audit_query)
        if self._grafana is not None:
            router.add_post("/admin/alerts/grafana", self.grafana_alert)

    # -- credentials and bodies -----------------------------------------------------------------------

    async def refusal(self, request: web.Request, method: str) -> web.Response | None:
        """For routes outside /admin that take the admin token: the audited refusal, or None if admitted.

        Only refusals are recorded (as `message_refused`): admitting records nothing by itself.
        """
        admitted = await self._admitted(request, method)
        return admitted if isinstance(admitted, web.Response) else None

    async def _admitted(self, request: web.Request, method: str) -> AdminRequest | web.Response:
        audit = AdminRequest(self.gateway, request, method)
        if self._token_sha256 is None:
            return await audit.refuse(403, DISABLED, Outcome.FORBIDDEN)
        token = bearer_token(request.headers.get("Authorization"))
        challenge = {"WWW-Authenticate": 'Bearer realm="mcpgw-admin"'}
        if token is None:
            return await audit.refuse(401, "missing admin credential: send Authorization: Bearer <admin token> "
                                      "(the token whose SHA-256 is admin.token_sha256)", Outcome.UNAUTHENTICATED,
                                      headers=challenge)
        if not hmac.compare_digest(token_sha256(token), self._token_sha256):
            return await audit.refuse(401, "the admin token is not valid (its SHA-256 is not admin.token_sha256)",
                                      Outcome.UNAUTHENTICATED, headers=challenge)
        audit.ctx.principal = "admin"
        return audit

    @staticmethod
    async def _read(request: web.Request, audit: AdminRequest) -> bytes | web.Response:
        too_large = f"the body is over the {MAX_ADMIN_BODY}-byte limit of the admin API"
        if request.content_length is not None and request.content_length > MAX_ADMIN_BODY:
            return await audit.refuse(413, too_large)
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return await audit.refuse(413, too_large)
        if len(raw) > MAX_ADMIN_BODY:
            return await audit.refuse(413, too_large, received=raw[:4096])
        return raw

    @staticmethod
    async def _json(raw: bytes, audit: AdminRequest, example: str) -> object | web.Response:
        try:
            parsed: object = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return await audit.refuse(400, f"the body is not JSON ({exc}); send e.g. {example}", received=raw,
                                      code=PARSE_ERROR)
        return parsed

    # -- decisions ------------------------------------------------------------------------------------

    async def post_decision(self, request: web.Request) -> web.Response:
        audit = await self._admitted(request, "admin/decisions")
        if not isinstance(audit, AdminRequest):
            return audit
        raw = await self._read(request, audit)
        if not isinstance(raw, bytes):
            return raw
        body = await self._json(raw, audit, '{"action": "block", "scope": "principal", "subject": "alice", '
                                            '"reason": "..."}')
        if isinstance(body, web.Response):
            return body
        decision_id = new_event_id()
        try:
            decision = operator_decision(body, now_us=now_us(), decision_id=decision_id)
        except InvalidDecision as exc:
            return await audit.refuse(400, str(exc), received=raw)
        audit.ctx.principal = decision.actor
        audit.ctx.tenant = decision.tenant or ""
        audit.request_id = decision_id  # the request's events and the decision share one id
        failed = await audit.received(raw)
        if failed is not None:
            return failed
        # An unblock naming no tenant means "this subject, wherever it is blocked": blocks confined
        # to one tenant (the risk engine's always are) are separate keys, lifted one by one.
        decisions = [decision, *self._tenant_unblocks(decision)]
        try:
            for each in decisions:
                await self.gateway.decisions.publish(each)
        except LogError as exc:
            log.error("decision %s not recorded: %s", decision_id, exc)
            return await audit.answer(503, {"error": f"the decision could not be recorded, so it is not in force: "
                                                     f"{exc}; retry later"}, Outcome.ERROR)
        answer: dict[str, Any] = {"decision": decision_json(decision)}
        if len(decisions) > 1:
            answer["lifted"] = [decision_json(d) for d in decisions[1:]]
        return await audit.answer(201, answer)

    def _tenant_unblocks(self, unblock: Decision) -> list[Decision]:
        if unblock.action is not DecisionAction.UNBLOCK or unblock.tenant is not None:
            return []
        confined = sorted({d.tenant for d in self.gateway.decisions.active()
                           if d.scope is unblock.scope and d.subject == unblock.subject and d.tenant is not None})
        return [dataclasses.replace(unblock, tenant=tenant, decision_id=f"{unblock.decision_id}-{i}")
                for i, tenant in enumerate(confined, 1)]

    async def list_decisions(self, request: web.Request) -> web.Response:
        audit = await self._admitted(request, "admin/decisions/list")
        if not isinstance(audit, AdminRequest):
            return audit
        failed = await audit.received(b"")
        if failed is not None:
            return failed
        return await audit.answer(200, {"active": [decision_json(d) for d in self.gateway.decisions.active()]})

    # -- audit query ----------------------------------------------------------------------------------

    async def audit_query(self, request: web.Request) -> web.Response:
        audit = await self._admitted(request, "admin/audit/query")
        if not isinstance(audit, AdminRequest):
            return audit
        raw = await self._read(request, audit)
        if not isinstance(raw, bytes):
            return raw
        example = '{"sql": "SELECT principal, count() FROM audit.events GROUP BY principal"}'
        body = await self._json(raw, audit, example)
        if isinstance(body, web.Response):
            return body
        sql = body.get("sql") if isinstance(body, dict) else None
        if not isinstance(sql, str) or not sql.strip():
            return await audit.refuse(400, f"send the query as {example}", received=raw)
        failed = await audit.received(raw)
        if failed is not None:
            return failed
        query = self.gateway.audit_query
        if query is None:
            return await audit.answer(503, {"error": "this gateway process has no audit store: query the process "
                                                     "that runs the audit consumer (mcpgw up), or stop the gateway "
                                                     "and run mcpgw audit query"}, Outcome.ERROR)
        try:
            result = await query(sql)
        except AuditQueryRefused as exc:
            return await audit.answer(400, {"error": str(exc)}, Outcome.REFUSED)
        except AuditQueryUnavailable as exc:
            return await audit.answer(503, {"error": f"{exc}; retry later"}, Outcome.ERROR)
        rows = [list(row) for row in result.rows]
        answer = {"columns": list(result.columns), "types": list(result.types), "rows": rows}
        summary = {"columns": answer["columns"], "types": answer["types"], "row_count": len(rows)}
        return await audit.answer(200, answer, recorded=summary)

    # -- Grafana ----------------------------------------------------------------------------------------

    async def grafana_alert(self, request: web.Request) -> web.Response:
        assert self._grafana is not None  # the route exists only with admin.grafana configured
        audit = AdminRequest(self.gateway, request, "admin/alerts/grafana", principal="grafana")
        raw = await self._read(request, audit)
        if not isinstance(raw, bytes):
            return raw
        outcome = self._grafana.receive(raw, request.headers, now_us())
        if isinstance(outcome, Rejected):
            return await audit.refuse(outcome.status, outcome.message,
                                      Outcome.UNAUTHENTICATED if outcome.status == 401 else Outcome.REFUSED,
                                      received=raw)
        failed = await audit.received(raw)
        if failed is not None:
            self._grafana.forget(outcome)
            return failed
        try:
            for decision in outcome.decisions:
                await self.gateway.decisions.publish(decision)
        except LogError as exc:
            # Grafana retries a failed delivery; forgetting makes that retry count as new, not a duplicate.
            self._grafana.forget(outcome)
            log.error("decisions from a Grafana alert not recorded: %s", exc)
            return await audit.answer(503, {"error": f"the decisions could not be recorded: {exc}; retry later"},
                                      Outcome.ERROR)
        return await audit.answer(200, {"decisions": [decision_json(d) for d in outcome.decisions],
                                        "duplicates": outcome.duplicates, "ignored": outcome.ignored,
                                        "errors": outcome.errors})
