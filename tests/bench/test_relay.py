"""bench.relay as its own process in front of the real fast upstream: what comes back through it is
byte for byte what comes back directly, for an MCP handshake, a tools/call and a call large enough to
make the relay pause reading while a send buffer drains."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import orjson
import pytest

from bench.loadgen import ACCEPT, LEGACY_VERSION, MODERN_VERSION, call_body
from bench.run import HOST, free_port, wait_port

REPO = Path(__file__).resolve().parents[2]


def _start(argv: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", *argv], cwd=REPO, stdin=subprocess.DEVNULL)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@pytest.fixture
def ports() -> Iterator[tuple[int, int]]:
    """(upstream port, relay port): bench.fast_upstream and bench.relay in front of it, as bench.run starts them."""
    upstream_port, relay_port = free_port(), free_port()
    upstream = _start(["bench.fast_upstream", "--port", str(upstream_port)])
    relay = _start(["bench.relay", "--port", str(relay_port), "--upstream-port", str(upstream_port)])
    try:
        yield upstream_port, relay_port
    finally:
        _stop(relay)
        _stop(upstream)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def _post(
    http: aiohttp.ClientSession, port: int, body: bytes, headers: dict[str, str]
) -> tuple[int, str, bytes, dict[str, str]]:
    async with http.post(f"http://{HOST}:{port}/mcp", data=body, headers=headers) as resp:
        return resp.status, resp.content_type, await resp.read(), dict(resp.headers)


async def _legacy_exchange(http: aiohttp.ClientSession, port: int) -> list[tuple[int, str, bytes]]:
    """initialize, notifications/initialized, tools/call echo: what each answered (status, type, body)."""
    headers = {"Content-Type": "application/json", "Accept": ACCEPT}
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": LEGACY_VERSION, "capabilities": {},
                       "clientInfo": {"name": "relay-test", "version": "0"}}}  # fmt: skip
    status, ctype, body, answer_headers = await _post(http, port, orjson.dumps(init), headers)
    answers = [(status, ctype, body)]
    headers = {**headers, "Mcp-Session-Id": answer_headers["Mcp-Session-Id"], "MCP-Protocol-Version": LEGACY_VERSION}
    note = orjson.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"})
    call = orjson.dumps({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                         "params": {"name": "echo", "arguments": {"text": "through the relay", "n": 7}}})  # fmt: skip
    for message in (note, call):
        status, ctype, body, _ = await _post(http, port, message, headers)
        answers.append((status, ctype, body))
    return answers


async def test_a_legacy_session_answers_byte_for_byte_as_directly(
    ports: tuple[int, int], http: aiohttp.ClientSession
) -> None:
    upstream_port, relay_port = ports
    await wait_port(upstream_port, lambda: True)
    await wait_port(relay_port, lambda: True)
    direct = await _legacy_exchange(http, upstream_port)
    relayed = await _legacy_exchange(http, relay_port)
    assert [a[0] for a in direct] == [200, 202, 200]
    assert b'"through the relay"' in direct[2][2].replace(b'\\"', b'"')
    assert relayed == direct


async def test_a_large_modern_call_answers_byte_for_byte_as_directly(
    ports: tuple[int, int], http: aiohttp.ClientSession
) -> None:
    upstream_port, relay_port = ports
    await wait_port(upstream_port, lambda: True)
    await wait_port(relay_port, lambda: True)
    # ~600 KB each way: far over a transport's 64 KiB high-water mark, under the upstream's 1 MiB body cap.
    body = call_body("echo", {"blob": "x" * 600_000}, "modern")
    body["id"] = "big"
    headers = {"Content-Type": "application/json", "Accept": ACCEPT, "MCP-Protocol-Version": MODERN_VERSION,
               "Mcp-Method": "tools/call", "Mcp-Name": "echo"}  # fmt: skip
    wire = orjson.dumps(body)
    direct = await _post(http, upstream_port, wire, headers)
    relayed = await _post(http, relay_port, wire, headers)
    assert direct[0] == 200 and len(direct[2]) > 600_000
    assert relayed[:3] == direct[:3]
