"""Run the reference `mcp-server-everything` (Node) as a real HTTP peer on a loopback port.

The server listens on every interface by default; `loopback.cjs` is preloaded through
NODE_OPTIONS to pin it to 127.0.0.1. `everything_server` is an async context manager that
starts it, waits until the port accepts connections and kills it on exit; `kill()` and
`restart()` let tests take the server away and bring it back on the same port. The recording
tap, handler and observer below stand in for the layer above the upstream connectors.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from ingress.upstreams.base import CallContext, JsonObject, UpstreamInfo, UpstreamState, UpstreamStatus

REPO = Path(__file__).resolve().parents[2]
NODE_BIN = REPO / "node_modules" / ".bin"
NODE = NODE_BIN / "node"
EVERYTHING = REPO / "node_modules" / "@modelcontextprotocol" / "server-everything" / "dist" / "index.js"
LOOPBACK_PRELOAD = Path(__file__).resolve().parent / "loopback.cjs"

START_TIMEOUT_S = 30.0


def peers_installed() -> bool:
    return NODE.exists() and EVERYTHING.exists()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_for_port(port: int, timeout: float, proc: asyncio.subprocess.Process | None = None) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        if proc is not None and proc.returncode is not None:
            raise RuntimeError(f"the peer exited with code {proc.returncode} before listening on {port}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if loop.time() > deadline:
                raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout:g}s") from None
            await asyncio.sleep(0.05)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return


@dataclass
class EverythingServer:
    """One `mcp-server-everything` process; `transport` is "streamableHttp" or "sse"."""

    transport: str
    port: int
    proc: asyncio.subprocess.Process | None = None
    log: IO[bytes] = field(default_factory=lambda: tempfile.TemporaryFile())  # noqa: SIM115 - closed in stop

    @property
    def url(self) -> str:
        path = "/sse" if self.transport == "sse" else "/mcp"
        return f"http://127.0.0.1:{self.port}{path}"

    async def start(self) -> None:
        env = dict(os.environ)
        env["PORT"] = str(self.port)
        env["NODE_OPTIONS"] = f"{env.get('NODE_OPTIONS', '')} --require {LOOPBACK_PRELOAD}".strip()
        env["PATH"] = f"{NODE_BIN}{os.pathsep}{env.get('PATH', '')}"
        self.proc = await asyncio.create_subprocess_exec(
            str(NODE), str(EVERYTHING), self.transport,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=self.log,
            env=env, cwd=str(REPO), start_new_session=True,
        )
        try:
            await wait_for_port(self.port, START_TIMEOUT_S, self.proc)
        except BaseException:
            await self.kill()
            raise

    async def kill(self, sig: int = signal.SIGKILL) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    async def restart(self) -> None:
        await self.kill()
        await self.start()

    async def stop(self) -> None:
        await self.kill(signal.SIGTERM)
        self.log.close()

    def stderr(self) -> str:
        self.log.seek(0)
        return self.log.read().decode("utf-8", "replace")


@asynccontextmanager
async def everything_server(transport: str = "streamableHttp", port: int | None = None) -> AsyncIterator[
    EverythingServer
]:
    server = EverythingServer(transport, port or free_port())
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


# -- recording stand-ins for the layer above the connectors ---------------------------------


@dataclass
class TapRecord:
    direction: str  # "sent" | "received"
    server: str
    body: JsonObject
    wire: bytes
    ctx: CallContext
    latency_us: int | None = None

    @property
    def method(self) -> str | None:
        method = self.body.get("method")
        return method if isinstance(method, str) else None


class RecordingTap:
    """An `UpstreamTap` that keeps every message, in order."""

    def __init__(self) -> None:
        self.records: list[TapRecord] = []

    async def sent(self, server: str, body: JsonObject, wire: bytes, ctx: CallContext) -> None:
        self.records.append(TapRecord("sent", server, body, wire, ctx))

    async def received(
        self, server: str, body: JsonObject, wire: bytes, ctx: CallContext, latency_us: int | None
    ) -> None:
        self.records.append(TapRecord("received", server, body, wire, ctx, latency_us))

    def of(self, direction: str, method: str | None = None) -> list[TapRecord]:
        return [r for r in self.records
                if r.direction == direction and (method is None or r.method == method)]

    def methods(self, direction: str) -> list[str | None]:
        return [r.method for r in self.records if r.direction == direction]


class RecordingHandler:
    """A `CallHandler` that records what the upstream sent during a call and answers requests."""

    def __init__(self, answer: Callable[[JsonObject], JsonObject] | None = None) -> None:
        self.notifications: list[JsonObject] = []
        self.requests: list[JsonObject] = []
        self._answer = answer or (lambda body: {"jsonrpc": "2.0", "id": None, "result": {}})

    async def notification(self, server: str, body: JsonObject) -> None:
        self.notifications.append(body)

    async def request(self, server: str, body: JsonObject) -> JsonObject:
        self.requests.append(body)
        return self._answer(body)


class Observer:
    """Collects status changes and unsolicited messages of one connector."""

    def __init__(self) -> None:
        self.states: list[UpstreamState] = []
        self.infos: list[UpstreamInfo | None] = []
        self.unsolicited: list[JsonObject] = []

    async def on_status(self, server: str, status: UpstreamStatus, info: UpstreamInfo | None) -> None:
        self.states.append(status.state)
        self.infos.append(info)

    async def on_unsolicited(self, server: str, body: JsonObject) -> None:
        self.unsolicited.append(body)


def system_ctx() -> CallContext:
    return CallContext(correlation_id="system")


async def eventually(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout:g}s")
        await asyncio.sleep(0.02)
