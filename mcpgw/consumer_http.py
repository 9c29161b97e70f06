"""The metrics and health listener of a consumer run on its own (`mcpgw consume audit|risk`).

Under `mcpgw up` the consumers' families, and the embedded log's `mcpgw_log_end_offset`, are on the
gateway's /metrics (mcpgw.runner). A consumer in its own process (the distributed deployment,
compose.yaml) serves the same families, under the same names, on `consumers.metrics` (host, and
`audit_port` or `risk_port`; a port of null: no listener):

    GET /metrics   `mcpgw_consumer_*{consumer}` (ConsumerMetricsCollector), `process_*`, `python_*`,
                   and `mcpgw_log_end_offset{topic, partition}`: where each topic the consumer reads
                   ends, read at scrape time (mcpgw.log_ends.ScrapedEnds), so a consumer's lag is
                   `mcpgw_log_end_offset - on(topic, partition) group_right mcpgw_consumer_committed_offset`.
                   Off loopback with `admin.token_sha256` set, only with `Authorization: Bearer <admin
                   token>` (the ingress's rule for its /metrics; docs/admin-api.md).
    GET /healthz   200 while the consumers run, 503 once one has stopped; with each group's `paused`.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AsyncExitStack

import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.aiohttp import make_aiohttp_handler

from consumers.pipeline import ConsumerMetrics
from eventlog.embedded.log import EmbeddedLog
from ingress.auth import bearer_token, token_sha256
from ingress.config import ListenConfig
from mcpgw.config import GatewayConfig
from mcpgw.consumer_metrics import ConsumerMetricsCollector, LogEndOffsets
from mcpgw.log_ends import ScrapedEnds

log = logging.getLogger("mcpgw.consumers")


class ConsumerHttp:
    """The listener's handlers; `start_consumer_http` wires and starts it."""

    def __init__(self, config: GatewayConfig, role: str, local_log: EmbeddedLog | None, topics: Sequence[str],
                 consumers: Callable[[], Mapping[str, ConsumerMetrics]],
                 tasks: Sequence[asyncio.Future[None]], *, loopback: bool) -> None:
        self._role = role
        self._consumers = consumers
        self._tasks = list(tasks)
        admin = config.admin
        # The ingress's rule: a token is asked for only off loopback, and only when one is configured.
        self._token_sha256 = bytes.fromhex(admin.token_sha256) if admin is not None and not loopback else None
        self._started = time.time()
        self._ends = ScrapedEnds(config.kafka, local_log, topics)
        self.registry = CollectorRegistry()
        stored = local_log.committed_offsets if local_log is not None else None
        self.registry.register(ConsumerMetricsCollector(consumers, stored))
        self.registry.register(LogEndOffsets(self._ends.ends))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self._export = make_aiohttp_handler(self.registry)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/healthz", self.healthz)
        return app

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        if self._token_sha256 is not None:
            # The rule of the ingress's /metrics (ingress/http/admin.py), without the audit record.
            token = bearer_token(request.headers.get("Authorization"))
            if token is None or not hmac.compare_digest(token_sha256(token), self._token_sha256):
                return _json({"error": "send Authorization: Bearer <admin token> (the token whose SHA-256 is "
                                       "admin.token_sha256)"}, 401, {"WWW-Authenticate": 'Bearer realm="mcpgw-admin"'})
        await self._ends.refresh()
        return await self._export(request)

    async def healthz(self, _request: web.Request) -> web.Response:
        stopped = [t for t in self._tasks if t.done()]
        consumers = {name: {"paused": m.paused, "last_commit": m.last_commit} for name, m in self._consumers().items()}
        return _json({"status": "stopped" if stopped else "ok", "role": self._role,
                      "uptime_s": round(time.time() - self._started, 3), "consumers": consumers},
                     503 if stopped else 200)


def _json(data: object, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json", headers=headers)


def listener_port(config: GatewayConfig, role: str) -> int | None:
    metrics = config.consumers.metrics
    return metrics.risk_port if role == "risk" else metrics.audit_port


async def start_consumer_http(config: GatewayConfig, role: str, host: str, port: int, local_log: EmbeddedLog | None,
                              topics: Sequence[str], consumers: Callable[[], Mapping[str, ConsumerMetrics]],
                              tasks: Sequence[asyncio.Future[None]],
                              stack: AsyncExitStack) -> list[str]:
    """Serve /metrics and /healthz on host:port until the stack closes; the addresses it listens on."""
    http = ConsumerHttp(config, role, local_log, topics, consumers, tasks,
                        loopback=ListenConfig(host=host).is_loopback)
    runner = web.AppRunner(http.app(), access_log=None)
    await runner.setup()
    stack.push_async_callback(runner.cleanup)
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    sockets = getattr(site._server, "sockets", None) or []
    addresses = [f"http://{s.getsockname()[0]}:{s.getsockname()[1]}" for s in sockets]
    log.info("%s consumer: /metrics and /healthz on %s", role, ", ".join(addresses))
    return addresses
