"""Start a real gateway in-process on a free loopback port, with an in-memory sink tests can read."""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from ingress.gateway import Gateway
from ingress.http.app import build_app, start_runner
from ingress.sink import MemoryEventSink
from mcpgw.config import GatewayConfig, parse_config

REPO = Path(__file__).resolve().parents[2]
NODE_BIN = REPO / "node_modules" / ".bin"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def time_server() -> dict[str, Any]:
    return {"command": sys.executable, "args": ["-m", "mcp_server_time", "--local-timezone", "UTC"]}


def reference_server_stdio() -> dict[str, Any]:
    return {"command": sys.executable, "args": ["-m", "examples.reference_server"], "cwd": str(REPO)}


def everything_stdio() -> dict[str, Any]:
    return {"command": str(NODE_BIN / "mcp-server-everything"), "args": ["stdio"]}


@dataclass
class RunningGateway:
    gateway: Gateway
    sink: MemoryEventSink
    port: int

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.base}/mcp"

    def server_url(self, name: str) -> str:
        return f"{self.base}/servers/{name}/mcp"


@asynccontextmanager
async def running_gateway(config: dict[str, Any] | GatewayConfig, wait_ready_s: float = 30.0) -> AsyncIterator[
    RunningGateway
]:
    """Start a gateway; `config` is a gateway.yaml-shaped dict (listen/auth default to loopback/none)."""
    if isinstance(config, dict):
        data = {"auth": "none", **config}
        data.setdefault("listen", {})
        data["listen"] = {"host": "127.0.0.1", "port": free_port(), **data["listen"]}
        config = parse_config(data)
    sink = MemoryEventSink()
    gateway = Gateway(config, sink)
    app = build_app(gateway)
    runner = await start_runner(app)
    site = web.TCPSite(runner, config.listen.host, config.listen.port)
    await site.start()
    try:
        if wait_ready_s:
            await asyncio.gather(*(u.wait_ready(wait_ready_s) for u in gateway.upstreams.values()))
        yield RunningGateway(gateway, sink, config.listen.port)
    finally:
        await runner.cleanup()
