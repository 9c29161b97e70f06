"""Raw MCP over HTTP with aiohttp, for tests that need to see exact statuses, headers and bodies.

No SDK in between: each helper builds the exact bytes an agent would send (either protocol era)
and returns what came back, parsing JSON bodies and SSE streams alike. Also: bounded waits on the
in-memory sink and on /proc facts (child processes, open descriptors).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from ingress.sink import MemoryEventSink
from schemas.events import EventType, GatewayEvent, Outcome

MODERN = "2026-07-28"
LEGACY = "2025-11-25"
ACCEPT_BOTH = "application/json, text/event-stream"
META_VERSION = "io.modelcontextprotocol/protocolVersion"
META_CAPS = "io.modelcontextprotocol/clientCapabilities"
META_INFO = "io.modelcontextprotocol/clientInfo"
CLIENT_INFO = {"name": "raw-test-agent", "version": "0.0.1"}
TIMEOUT = aiohttp.ClientTimeout(total=60)


@dataclass
class Answer:
    status: int
    headers: Mapping[str, str]
    raw: bytes
    messages: list[dict[str, Any]] = field(default_factory=list)

    @property
    def body(self) -> dict[str, Any]:
        """The final JSON-RPC message (the only one for a JSON answer)."""
        assert self.messages, f"no JSON-RPC message in the answer (status {self.status}): {self.raw[:500]!r}"
        return self.messages[-1]

    @property
    def error(self) -> dict[str, Any]:
        error = self.body.get("error")
        assert isinstance(error, dict), f"expected a JSON-RPC error, got {self.body}"
        return error

    @property
    def result(self) -> dict[str, Any]:
        result = self.body.get("result")
        assert isinstance(result, dict), f"expected a JSON-RPC result, got {self.body}"
        return result


def parse_sse(raw: bytes) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    for block in raw.replace(b"\r\n", b"\n").split(b"\n\n"):
        data = [line[5:].lstrip() for line in block.split(b"\n") if line.startswith(b"data:")]
        if b"".join(data).strip():  # an empty data field is a priming event, not a message
            messages.append(json.loads(b"\n".join(data)))
    return messages


async def read_answer(resp: aiohttp.ClientResponse) -> Answer:
    raw = await resp.read()
    ctype = resp.headers.get("Content-Type", "")
    messages: list[dict[str, Any]] = []
    if "text/event-stream" in ctype:
        messages = parse_sse(raw)
    elif raw:
        try:
            decoded = json.loads(raw)
        except ValueError:
            decoded = None
        if isinstance(decoded, dict):
            messages = [decoded]
    return Answer(resp.status, resp.headers, raw, messages)


async def post(http: aiohttp.ClientSession, url: str, body: bytes | dict[str, Any] | list[Any],
               headers: Mapping[str, str] | None = None) -> Answer:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    all_headers = {"Content-Type": "application/json", "Accept": ACCEPT_BOTH, **(headers or {})}
    async with http.post(url, data=data, headers=all_headers, timeout=TIMEOUT) as resp:
        return await read_answer(resp)


# -- modern era (2026-07-28) --------------------------------------------------------------------


def modern_body(method: str, params: dict[str, Any] | None = None, id: Any = 1,
                caps: dict[str, Any] | None = None, version: str = MODERN) -> dict[str, Any]:
    params = dict(params or {})
    params["_meta"] = {META_VERSION: version, META_CAPS: caps or {}, META_INFO: CLIENT_INFO,
                       **params.get("_meta", {})}
    return {"jsonrpc": "2.0", "id": id, "method": method, "params": params}


def modern_headers(method: str, name: str | None = None, version: str = MODERN,
                   extra: Mapping[str, str] | None = None) -> dict[str, str]:
    headers = {"MCP-Protocol-Version": version, "Mcp-Method": method}
    if name is not None:
        headers["Mcp-Name"] = name
    return {**headers, **(extra or {})}


async def modern(http: aiohttp.ClientSession, url: str, method: str, params: dict[str, Any] | None = None,
                 id: Any = 1, extra: Mapping[str, str] | None = None) -> Answer:
    name = None
    if params and method in ("tools/call", "prompts/get"):
        name = params.get("name")
    elif params and method == "resources/read":
        name = params.get("uri")
    return await post(http, url, modern_body(method, params, id), modern_headers(method, name, extra=extra))


async def modern_call(http: aiohttp.ClientSession, url: str, tool: str, arguments: dict[str, Any] | None = None,
                      id: Any = 1, extra: Mapping[str, str] | None = None) -> Answer:
    return await modern(http, url, "tools/call", {"name": tool, "arguments": arguments or {}}, id, extra)


# -- legacy era (2025-11-25 Streamable HTTP) --------------------------------------------------------


def request(method: str, params: dict[str, Any] | None = None, id: Any = 1) -> dict[str, Any]:
    body: dict[str, Any] = {"jsonrpc": "2.0", "id": id, "method": method}
    if params is not None:
        body["params"] = params
    return body


def initialize_body(id: Any = 0, capabilities: dict[str, Any] | None = None) -> dict[str, Any]:
    return request("initialize", {"protocolVersion": LEGACY, "capabilities": capabilities or {},
                                  "clientInfo": CLIENT_INFO}, id)


@dataclass
class LegacySession:
    http: aiohttp.ClientSession
    url: str
    id: str
    extra: dict[str, str] = field(default_factory=dict)
    next_id: int = 1

    @property
    def headers(self) -> dict[str, str]:
        return {"Mcp-Session-Id": self.id, "MCP-Protocol-Version": LEGACY, **self.extra}

    async def send(self, body: bytes | dict[str, Any]) -> Answer:
        return await post(self.http, self.url, body, self.headers)

    async def request(self, method: str, params: dict[str, Any] | None = None) -> Answer:
        self.next_id += 1
        return await self.send(request(method, params, self.next_id))

    async def call(self, tool: str, arguments: dict[str, Any] | None = None) -> Answer:
        return await self.request("tools/call", {"name": tool, "arguments": arguments or {}})

    async def delete(self) -> int:
        async with self.http.delete(self.url, headers=self.headers, timeout=TIMEOUT) as resp:
            await resp.read()
            return resp.status


async def open_legacy(http: aiohttp.ClientSession, url: str, extra: Mapping[str, str] | None = None,
                      capabilities: dict[str, Any] | None = None) -> LegacySession:
    answer = await post(http, url, initialize_body(capabilities=capabilities), extra)
    assert answer.status == 200, (answer.status, answer.raw[:500])
    assert "result" in answer.body, answer.body
    session_id = answer.headers.get("Mcp-Session-Id")
    assert session_id, f"initialize returned no Mcp-Session-Id: {dict(answer.headers)}"
    session = LegacySession(http, url, session_id, dict(extra or {}))
    note = await session.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
    assert note.status == 202, (note.status, note.raw)
    return session


# -- the audit trail ------------------------------------------------------------------------------


def refused(sink: MemoryEventSink, code: int | None = None, outcome: Outcome | None = None,
            where: Callable[[GatewayEvent], bool] | None = None) -> list[GatewayEvent]:
    return [e for e in sink.events if e.event_type is EventType.MESSAGE_REFUSED
            and (code is None or e.error_code == code) and (outcome is None or e.outcome is outcome)
            and (where is None or where(e))]


def answered_with_error(sink: MemoryEventSink, code: int, where: Callable[[GatewayEvent], bool] | None = None
                        ) -> list[GatewayEvent]:
    """`agent_message_sent` events carrying JSON-RPC error `code` with an outcome that is not ok."""
    return [e for e in sink.events if e.event_type is EventType.AGENT_MESSAGE_SENT and e.error_code == code
            and e.outcome is not Outcome.OK and (where is None or where(e))]


async def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02,
                     what: str = "condition") -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(interval)


# -- process facts ---------------------------------------------------------------------------------


def child_pids(pid: int | None = None) -> list[int]:
    """Direct children of `pid` (default: this process), from /proc."""
    pid = pid or os.getpid()
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            children.extend(int(c) for c in (task / "children").read_text().split())
        except OSError:
            continue
    return sorted(set(children))


def living_child_pids(pid: int | None = None) -> list[int]:
    """Children that are not zombies (a zombie holds no resources but its exit status)."""
    alive = []
    for child in child_pids(pid):
        try:
            stat = Path(f"/proc/{child}/stat").read_text()
        except OSError:
            continue
        if stat.rsplit(")", 1)[1].split()[0] != "Z":
            alive.append(child)
    return alive


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# -- live SSE streams ------------------------------------------------------------------------------


class SseStream:
    """Reads JSON-RPC messages off an open SSE response, one at a time, with a deadline each."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp
        self.seen: list[dict[str, Any]] = []

    async def next(self, timeout: float = 10.0) -> dict[str, Any] | None:
        """The next message; None when the stream ended."""
        data: list[bytes] = []
        async with asyncio.timeout(timeout):
            while True:
                line = await self.resp.content.readline()
                if not line:
                    return None
                line = line.rstrip(b"\r\n")
                if line.startswith(b"data:"):
                    data.append(line[5:].lstrip())
                elif not line and data and not b"".join(data).strip():
                    data = []  # a priming event (id and retry only): not a message
                elif not line and data:
                    message = json.loads(b"\n".join(data))
                    self.seen.append(message)
                    return message

    async def until(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10.0) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            message = await self.next(max(0.01, deadline - loop.time()))
            if message is None:
                raise AssertionError(f"the stream ended before the expected message; saw {self.seen}")
            if predicate(message):
                return message

    async def ended(self, timeout: float = 10.0) -> bool:
        """True once the server closed the stream (messages before the end are kept in `seen`)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if await self.next(max(0.01, deadline - loop.time())) is None:
                return True


# -- bounded tests ----------------------------------------------------------------------------------


def bounded(seconds: float) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Fail an async test that runs longer than `seconds` instead of letting it hang the suite."""

    def wrap(test: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(test)
        async def run(*args: Any, **kwargs: Any) -> Any:
            try:
                async with asyncio.timeout(seconds):
                    return await test(*args, **kwargs)
            except TimeoutError as exc:
                raise AssertionError(f"{test.__name__} did not finish within {seconds:g}s (hung)") from exc

        return run

    return wrap


def bound_module_tests(namespace: dict[str, Any], seconds: float) -> None:
    """Apply `bounded(seconds)` to every `async def test_*` of a module (call it at the module's end)."""
    for name, value in list(namespace.items()):
        if name.startswith("test_") and inspect.iscoroutinefunction(value):
            namespace[name] = bounded(seconds)(value)
