"""The router shortcut for POST /mcp and POST /servers/{name}/mcp (`ingress/http/hot_routes.py`).

A real aiohttp app and server: each request must reach the handler the router would pick, with the
same match info, whether it takes the shortcut or the router.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest
from aiohttp import web

from ingress.http.app import start_runner


def _recording_app(seen: list[dict[str, object]], middleware: bool = False) -> web.Application:
    async def post(request: web.Request) -> web.Response:
        seen.append({"route": "post", "match": dict(request.match_info), "app": request.app is app,
                     "canonical": request.match_info.route.resource.canonical  # type: ignore[union-attr]
                     if request.match_info.route.resource is not None else None})
        return web.json_response({"server": request.match_info.get("server", "")})

    async def other(request: web.Request) -> web.Response:
        seen.append({"route": "other", "match": dict(request.match_info)})
        return web.Response(text="other")

    @web.middleware
    async def passthrough(request: web.Request, handler: web.RequestHandler) -> web.StreamResponse:
        seen.append({"route": "middleware"})
        return await handler(request)

    app = web.Application(middlewares=[passthrough] if middleware else [])
    for prefix in ("", "/servers/{server}"):
        app.router.add_post(f"{prefix}/mcp", post)
        app.router.add_get(f"{prefix}/mcp", other)
        app.router.add_post(f"{prefix}/messages", other)
    return app


@pytest.fixture
async def served() -> AsyncIterator[tuple[str, list[dict[str, object]]]]:
    seen: list[dict[str, object]] = []
    runner = await start_runner(_recording_app(seen))
    assert runner.server is not None and runner.server.request_handler.__name__ == "handle"  # the shortcut is on
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(("path", "server"), [
    ("/mcp", ""),
    ("/servers/fast/mcp", "fast"),
    ("/servers/a.b-c_d~e/mcp", "a.b-c_d~e"),
    ("/servers/unknown/mcp", "unknown"),  # the endpoint answers unknown names, as through the router
    ("/servers/fast/mcp?x=1", "fast"),  # a query: the router
    ("/servers/%66ast/mcp", "fast"),  # percent-encoded: the router decodes it
    ("/servers/caf%C3%A9/mcp", "café"),
])
async def test_mcp_posts_reach_the_post_handler_with_the_routers_match(
        served: tuple[str, list[dict[str, object]]], path: str, server: str) -> None:
    base, seen = served
    async with aiohttp.ClientSession() as http:
        for _ in range(2):  # the second time from the shortcut's cache
            async with http.post(base + path, data=b"{}") as resp:
                assert resp.status == 200
                assert orjson.loads(await resp.read()) == {"server": server}
    expected = {"route": "post", "match": {"server": server} if server or path != "/mcp" else {}, "app": True,
                "canonical": "/mcp" if path == "/mcp" else "/servers/{server}/mcp"}
    assert seen == [expected, expected]


@pytest.mark.parametrize(("method", "path", "status"), [
    ("POST", "/servers//mcp", 404),
    ("POST", "/servers/a/b/mcp", 404),
    ("POST", "/servers/fast/mcp/", 404),
    ("PUT", "/mcp", 405),
    ("GET", "/servers/fast/mcp", 200),
    ("POST", "/servers/fast/messages", 200),
])
async def test_other_requests_keep_the_router(served: tuple[str, list[dict[str, object]]], method: str,
                                              path: str, status: int) -> None:
    base, seen = served
    async with aiohttp.ClientSession() as http, http.request(method, base + path, data=b"{}") as resp:
        assert resp.status == status
    assert all(s["route"] == "other" for s in seen)


async def test_expect_continue_goes_through_the_router(served: tuple[str, list[dict[str, object]]]) -> None:
    base, seen = served
    async with (aiohttp.ClientSession() as http,
                http.post(base + "/servers/fast/mcp", data=b"{}", expect100=True) as resp):
        assert resp.status == 200
    assert seen[0]["match"] == {"server": "fast"}


async def test_an_app_with_middlewares_keeps_the_router_for_every_request() -> None:
    seen: list[dict[str, object]] = []
    runner = await start_runner(_recording_app(seen, middleware=True))
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        assert runner.server is not None and runner.server.request_handler.__name__ == "_handle"
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/mcp"
        async with aiohttp.ClientSession() as http, http.post(url, data=b"{}") as resp:
            assert resp.status == 200
    finally:
        await runner.cleanup()
    assert [s["route"] for s in seen] == ["middleware", "post"]
