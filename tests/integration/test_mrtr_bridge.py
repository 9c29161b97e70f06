"""The `input_required` bridge (a modern agent in front of a legacy upstream that asks mid-call) under
misuse: the `requestState` must only ever resume the call it was issued for, by the principal it
was issued to, once; concurrent or late retries must end, never hang.

Upstream: `mcp-server-everything` over stdio (legacy), whose `trigger-elicitation-request` tool
sends `elicitation/create` during the call.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from schemas.events import EventType
from tests.integration.rawmcp import Answer, bound_module_tests, modern_body, modern_headers, post, wait_until
from tests.support.gateway import RunningGateway, everything_stdio, running_gateway

pytestmark = [pytest.mark.integration, pytest.mark.node, pytest.mark.asyncio(loop_scope="module")]

ALICE, BOB = "alice-mrtr-key", "bob-mrtr-key"
ELICIT = "ev__trigger-elicitation-request"
CAPS = {"elicitation": {"form": {}}}


def key_entry(key: str, principal: str) -> dict[str, str]:
    return {"key_sha256": hashlib.sha256(key.encode()).hexdigest(), "principal": principal, "tenant": "t"}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gw() -> AsyncIterator[RunningGateway]:
    config = {"servers": {"ev": everything_stdio()},
              "auth": {"api_keys": [key_entry(ALICE, "alice"), key_entry(BOB, "bob")]}}
    async with running_gateway(config) as gateway:
        yield gateway


@pytest_asyncio.fixture(loop_scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def call(http: aiohttp.ClientSession, url: str, key: str, id: Any, tool: str = ELICIT,
               arguments: dict[str, Any] | None = None, **extra: Any) -> Answer:
    body = modern_body("tools/call", {"name": tool, "arguments": arguments or {}, **extra}, id, caps=CAPS)
    headers = {**modern_headers("tools/call", tool), "Authorization": f"Bearer {key}"}
    return await post(http, url, body, headers)


async def asked(http: aiohttp.ClientSession, gw: RunningGateway, key: str = ALICE) -> tuple[str, str]:
    """Start the elicitation tool; return (input key, requestState) of its input_required result."""
    first = await call(http, gw.url, key, "first")
    result = first.result
    assert result["resultType"] == "input_required", first.body
    (input_key, request), = result["inputRequests"].items()
    assert request["method"] == "elicitation/create"
    return input_key, result["requestState"]


def answer_for(input_key: str, name: str) -> dict[str, Any]:
    return {input_key: {"action": "accept", "content": {"name": name}}}


def completed_with(answer: Answer, name: str) -> bool:
    result = answer.body.get("result") or {}
    return result.get("resultType") == "complete" and f"Name: {name}" in str(result.get("content"))


async def test_state_resumes_the_call_for_its_own_principal_only(gw: RunningGateway,
                                                                 http: aiohttp.ClientSession) -> None:
    input_key, state = await asked(http, gw)
    stolen = await call(http, gw.url, BOB, "bob-retry", inputResponses=answer_for(input_key, "Mallory"),
                        requestState=state)
    assert stolen.status == 400 and stolen.error["code"] == -32602
    retry = await call(http, gw.url, ALICE, "alice-retry", inputResponses=answer_for(input_key, "Alice"),
                       requestState=state)
    assert completed_with(retry, "Alice"), retry.body


async def test_state_only_resumes_the_request_it_was_issued_for(gw: RunningGateway,
                                                                http: aiohttp.ClientSession) -> None:
    """2026-07-28 MRTR: the state SHOULD identify the originating request (method and a digest of its
    salient parameters) and be rejected on a request that does not match. Here the retry names
    another tool; resuming the held elicitation call under that name would also mislabel the audit."""
    input_key, state = await asked(http, gw)
    mark = len(gw.sink.events)
    other = await call(http, gw.url, ALICE, "other-tool", tool="ev__echo", arguments={"message": "hi"},
                       inputResponses=answer_for(input_key, "Eve"), requestState=state)
    assert other.status == 400 and other.error["code"] == -32602, other.body
    assert not [e for e in gw.sink.events[mark:] if e.event_type is EventType.UPSTREAM_MESSAGE_SENT
                and b"Eve" in e.payload], "the mismatched retry's answer reached the upstream"
    retry = await call(http, gw.url, ALICE, "right-retry", inputResponses=answer_for(input_key, "Alice"),
                       requestState=state)
    assert completed_with(retry, "Alice"), retry.body


async def test_state_cannot_be_replayed_after_the_call_completed(gw: RunningGateway,
                                                                 http: aiohttp.ClientSession) -> None:
    input_key, state = await asked(http, gw)
    retry = await call(http, gw.url, ALICE, "once", inputResponses=answer_for(input_key, "Alice"),
                       requestState=state)
    assert completed_with(retry, "Alice")
    replay = await call(http, gw.url, ALICE, "twice", inputResponses=answer_for(input_key, "Alice"),
                        requestState=state)
    assert replay.status == 400 and replay.error["code"] == -32602


async def test_concurrent_retries_with_one_state_all_end(gw: RunningGateway, http: aiohttp.ClientSession) -> None:
    """Two retries racing with the same state: each gets an answer (a result or an error); neither
    request may be left hanging."""
    input_key, state = await asked(http, gw)
    retries = [call(http, gw.url, ALICE, f"race-{i}", inputResponses=answer_for(input_key, f"Racer{i}"),
                    requestState=state) for i in range(2)]
    done, pending = await asyncio.wait([asyncio.ensure_future(r) for r in retries], timeout=15)
    for task in pending:
        task.cancel()
    assert not pending, f"{len(pending)} of 2 concurrent retries never got an answer"
    answers = [t.result() for t in done]
    assert sum(1 for a in answers if "result" in a.body and a.body["result"].get("resultType") == "complete") >= 1


async def test_held_call_expires_and_its_state_is_refused() -> None:
    config = {"servers": {"ev": everything_stdio()}, "limits": {"request_timeout_s": 1.5}}
    async with running_gateway(config) as gw, aiohttp.ClientSession() as http:
        body = modern_body("tools/call", {"name": ELICIT, "arguments": {}}, "exp", caps=CAPS)
        first = await post(http, gw.url, body, modern_headers("tools/call", ELICIT))
        input_key = next(iter(first.result["inputRequests"]))
        state = first.result["requestState"]
        await wait_until(lambda: len(gw.gateway.held_calls) == 0, 10, what="the held call expired")
        await gw.sink.wait_for(lambda e: e.event_type is EventType.UPSTREAM_MESSAGE_SENT
                               and e.method == "notifications/cancelled" and e.server == "ev", 10)
        body = modern_body("tools/call", {"name": ELICIT, "arguments": {}, "requestState": state,
                                          "inputResponses": answer_for(input_key, "Late")}, "late", caps=CAPS)
        late = await post(http, gw.url, body, modern_headers("tools/call", ELICIT))
        assert late.status == 400 and late.error["code"] == -32602, late.body


bound_module_tests(globals(), 60)
