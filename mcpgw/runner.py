"""Running the gateway process: event loop, sink, HTTP server, signals, clean shutdown."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal

from aiohttp import web

from ingress.gateway import Gateway
from ingress.http.app import build_app
from ingress.sink import EventSink, MemoryEventSink
from mcpgw.config import GatewayConfig

log = logging.getLogger("mcpgw")


def make_sink(config: GatewayConfig) -> EventSink:
    capacity = config.event_log.memory.capacity if config.event_log and config.event_log.memory else 1_000_000
    return MemoryEventSink(capacity=capacity)


async def serve(config: GatewayConfig, stop: asyncio.Event | None = None) -> None:
    sink = make_sink(config)
    gateway = Gateway(config, sink)
    app = build_app(gateway)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, config.listen.host, config.listen.port, reuse_address=True)
    await site.start()
    # Everything built so far lives as long as the process: keep the collector from rescanning it,
    # and let it run less often (per-call garbage is mostly acyclic and freed by refcounting).
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 50, 1000)
    addresses = ", ".join(f"http://{a[0]}:{a[1]}" for a in (s.getsockname() for s in site._server.sockets))  # type: ignore[union-attr]
    log.info("mcp-audit-gateway listening on %s (aggregate: /mcp; one server: /servers/NAME/mcp)", addresses)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        await runner.cleanup()
        await sink.close()


def run_gateway(config: GatewayConfig) -> int:
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is optional on platforms without it
        pass
    asyncio.run(serve(config))
    return 0
