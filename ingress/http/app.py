"""The aiohttp application: MCP endpoints, legacy SSE, health, readiness, metrics, metadata, admin API."""

from __future__ import annotations

import time

import orjson
from aiohttp import web
from prometheus_client.aiohttp import make_aiohttp_handler

from ingress.gateway import Gateway
from ingress.http.admin import AdminApi
from ingress.http.hot_routes import route_hot_posts
from ingress.http.legacy_sse import LegacySseEndpoint
from ingress.http.mcp_endpoint import McpEndpoint
from ingress.http.session_streams import SessionStreams

GATEWAY_KEY = web.AppKey("gateway", Gateway)


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def build_app(gateway: Gateway) -> web.Application:
    # The body limit is enforced by the endpoints themselves (413 with a JSON-RPC error).
    app = web.Application(client_max_size=gateway.config.limits.max_body_bytes + 1)
    app[GATEWAY_KEY] = gateway
    mcp = McpEndpoint(gateway)
    streams = SessionStreams(gateway)
    sse = LegacySseEndpoint(gateway)
    started = time.time()

    async def healthz(_request: web.Request) -> web.Response:
        return _json({"status": "ok", "uptime_s": round(time.time() - started, 3)})

    async def readyz(_request: web.Request) -> web.Response:
        state = gateway.readiness()
        return _json(state, 200 if state["ready"] else 503)

    async def protected_resource(request: web.Request) -> web.Response:
        path = request.match_info.get("path", "mcp")
        return _json({
            "resource": f"{request.scheme}://{request.host}/{path}",
            "authorization_servers": [],
            "bearer_methods_supported": ["header"],
            "resource_name": "mcp-audit-gateway",
        })

    for prefix in ("", "/servers/{server}"):
        app.router.add_post(f"{prefix}/mcp", mcp.post)
        app.router.add_get(f"{prefix}/mcp", streams.get)
        app.router.add_delete(f"{prefix}/mcp", streams.delete)
        app.router.add_get(f"{prefix}/sse", sse.connect)
        app.router.add_post(f"{prefix}/messages", sse.message)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/.well-known/oauth-protected-resource", protected_resource)
    app.router.add_get("/.well-known/oauth-protected-resource/{path:.*}", protected_resource)
    admin = AdminApi(gateway)
    admin.register(app.router)

    exposition = make_aiohttp_handler(gateway.metrics.registry)
    # Off loopback, metrics name servers and traffic to anyone who can reach the port: with an admin
    # token configured, scrapes must carry it (docs/admin-api.md).
    config = gateway.config
    guarded = config.admin is not None and not config.listen.is_loopback

    async def metrics(request: web.Request) -> web.StreamResponse:
        if guarded:
            refused = await admin.refusal(request, "metrics")
            if refused is not None:
                return refused
        await gateway.metrics.refresh()
        return await exposition(request)

    app.router.add_get("/metrics", metrics)

    async def on_startup(_app: web.Application) -> None:
        await gateway.start()

    async def on_cleanup(_app: web.Application) -> None:
        await gateway.stop()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app


async def start_runner(app: web.Application) -> web.AppRunner:
    """Set up the app's runner, with the two MCP POST routes taken past the router (hot_routes)."""
    # handler_cancellation: an agent that drops its connection cancels its call.
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    route_hot_posts(runner)
    return runner
