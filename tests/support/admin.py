"""Talking to a gateway's admin API in tests, and checking what a blocked agent is told."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import aiohttp

from tests.integration.rawmcp import Answer

BLOCKED = -32012
ADMIN_TOKEN = "admin-token-for-decision-tests-0123"


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


ADMIN = bearer(ADMIN_TOKEN)


async def admin(http: aiohttp.ClientSession, base: str, method: str, path: str,
                body: dict[str, Any] | bytes | None = None, headers: dict[str, str] | None = None
                ) -> tuple[int, dict[str, Any], dict[str, str]]:
    """One admin request (with the admin token unless `headers` says otherwise): status, JSON, headers."""
    data = body if isinstance(body, bytes) else None if body is None else json.dumps(body).encode()
    async with http.request(method, base + path, data=data, headers=ADMIN if headers is None else headers) as resp:
        return resp.status, await resp.json(content_type=None), dict(resp.headers)


async def decide(http: aiohttp.ClientSession, base: str, **body: Any) -> dict[str, Any]:
    """POST /admin/decisions (a block unless `action` says otherwise); the decision it answers with."""
    body.setdefault("action", "block")
    if body["action"] == "block":
        body.setdefault("reason", "decision test")
    status, answer, _ = await admin(http, base, "POST", "/admin/decisions", body)
    assert status == 201, answer
    decision: dict[str, Any] = answer["decision"]
    return decision


async def active(http: aiohttp.ClientSession, base: str) -> list[dict[str, Any]]:
    status, answer, _ = await admin(http, base, "GET", "/admin/decisions")
    assert status == 200, answer
    listed: list[dict[str, Any]] = answer["active"]
    return listed


def assert_blocked_by(answer: Answer, decision: dict[str, Any]) -> None:
    assert answer.status == 200, (answer.status, answer.raw[:300])
    error = answer.error
    assert error["code"] == BLOCKED, error
    named = f"({decision['scope']} {decision['subject']}, source {decision['source']}: "
    assert error["message"].startswith(f"Blocked by decision {decision['decision_id']} {named}"), error
    assert error["data"] == {"decision_id": decision["decision_id"], "scope": decision["scope"],
                             "subject": decision["subject"], "source": decision["source"],
                             "expires_at": decision["expires_at"]}


def assert_ok(answer: Answer) -> None:
    assert answer.status == 200 and "result" in answer.body, (answer.status, answer.raw[:300])
