"""What a dispatcher hands back to the transport: the answer's body, its audit outcome and HTTP status."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ingress import errors
from ingress.blocklist import refusal
from ingress.jsonrpc import JsonObject, error_body
from schemas.decisions import Decision
from schemas.events import Outcome


@dataclass(slots=True)
class Reply:
    body: JsonObject
    outcome: Outcome = Outcome.OK
    http_status: int = 200
    detail: str = ""  # a note for the answer's audit event (e.g. what a list withheld)


def error_reply(ctx_id: Any, code: int, message: str, outcome: Outcome, status: int = 200,
                data: Any = None) -> Reply:
    return Reply(error_body(ctx_id, code, message, data), outcome, status)


def blocked_reply(msg_id: Any, decision: Decision) -> Reply:
    message, data = refusal(decision)
    return error_reply(msg_id, errors.BLOCKED, message, Outcome.BLOCKED, data=data)
