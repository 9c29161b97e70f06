"""Running the gateway process: event loop, sink, HTTP server, signals, clean shutdown."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import socket
import uuid
from contextlib import AsyncExitStack

from aiohttp import web

from consumers.risk_consumer import RISK_TOPICS
from eventlog.base import TOPIC_EVENTS, LogUnavailable
from eventlog.embedded.log import LogLocked
from ingress.gateway import Gateway
from ingress.http.app import build_app, start_runner
from mcpgw.audit_runtime import RunningConsumer, start_audit_consumer
from mcpgw.config import GatewayConfig
from mcpgw.consumer_metrics import ConsumerMetricsCollector, LogEndOffsets, in_process
from mcpgw.decisions_runtime import open_gateway_ports
from mcpgw.log_ends import ScrapedEnds
from mcpgw.risk_runtime import PROJECTION_SPECS, RunningRisk, start_risk
from mcpgw.sinks import open_event_log

log = logging.getLogger("mcpgw")


async def serve(config: GatewayConfig, stop: asyncio.Event | None = None, consumers: bool = False) -> None:
    """Run the ingress; with `consumers`, also the audit and risk consumers (`mcpgw up`)."""
    async with AsyncExitStack() as stack:
        instance = config.instance_id or f"{socket.gethostname()}:{uuid.uuid4().hex[:8]}"
        opened = await open_event_log(config, instance, stack)
        durable = opened.local_log is not None or config.kafka is not None
        audit: RunningConsumer | None = None
        risk: RunningRisk | None = None
        if consumers and durable:
            # Stopped after the ingress (the stack unwinds in reverse), so the last events get stored.
            audit = await start_audit_consumer(config, opened.local_log, stack)
            risk = await start_risk(config, opened.local_log, stack)  # needs only the log, not the store
        ports = await open_gateway_ports(config, opened.local_log, audit, stack)
        gateway = Gateway(config, opened.sink, instance, decision_log=ports.decision_log,
                          audit_query=ports.audit_query)
        local_log = opened.local_log
        if audit is not None or risk is not None:
            stored = local_log.committed_offsets if local_log is not None else None
            gateway.metrics.register(ConsumerMetricsCollector(lambda: in_process(audit, risk), stored))
        if local_log is not None:
            # Next to the committed offsets, so one scrape gives each group's lag; the log holds its
            # ends in memory, so a scrape costs no I/O.
            gateway.metrics.register(LogEndOffsets(local_log.high_watermarks))
        elif config.kafka is not None and (audit is not None or risk is not None):
            # Kafka's ends take a broker round trip: read by /metrics before it exports (at most once
            # a second, bounded wait), as `mcpgw consume`'s listener does, for the topics the
            # in-process consumers read (each read once, however often listed).
            topics = [TOPIC_EVENTS, *RISK_TOPICS, *(spec.topic for spec in PROJECTION_SPECS)]
            ends = ScrapedEnds(config.kafka, None, topics)
            gateway.metrics.add_refresher(ends.refresh)
            gateway.metrics.register(LogEndOffsets(ends.ends))
        app = build_app(gateway)
        runner = await start_runner(app)
        stack.push_async_callback(runner.cleanup)  # closed before the sink: in-flight calls record
        site = web.TCPSite(runner, config.listen.host, config.listen.port, reuse_address=True)
        await site.start()
        # Everything built so far lives as long as the process: keep the collector from rescanning
        # it, and let it run less often (per-call garbage is mostly acyclic and freed by refcounting).
        gc.collect()
        gc.freeze()
        gc.set_threshold(20_000, 50, 1000)
        sockets = getattr(site._server, "sockets", None) or []
        addresses = ", ".join(f"http://{s.getsockname()[0]}:{s.getsockname()[1]}" for s in sockets)
        log.info("mcp-audit-gateway listening on %s (aggregate: /mcp; one server: /servers/NAME/mcp)", addresses)
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("shutting down")


def install_fast_loop() -> None:
    """uvloop where available: the ingress and the consumers spend a good part of their CPU in the loop."""
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is optional on platforms without it
        pass


def run_gateway(config: GatewayConfig, consumers: bool = False) -> int:
    install_fast_loop()
    try:
        asyncio.run(serve(config, consumers=consumers))
    except LogLocked as exc:
        log.error("cannot start: %s. Another gateway is using data_dir %s; stop it, or give this one its own "
                  "data_dir", exc, config.data_dir)
        return 1
    except LogUnavailable as exc:
        log.error("cannot start: the event log is unavailable: %s", exc)
        return 1
    return 0
