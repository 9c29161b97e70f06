"""POST `/mcp` and POST `/servers/{name}/mcp` resolved without aiohttp's router.

Every agent call is one of these two requests. aiohttp's `Application._handle` resolves each one
through the router (two nested coroutines, a regex, a new match info to build and freeze, an event
loop lookup), ~18 µs of a bare request's ~135 µs of server CPU. Here a plain comparison of the raw
path picks the registered POST handler, with a match info built once per path and frozen, exactly
what the router would have produced. Anything else (another method or path, a path that is
percent-encoded, has a query or dot segments, an `Expect` header, middlewares) goes through
`Application._handle` as before, so the answers are the same byte for byte.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import cast

from aiohttp import hdrs, web
from aiohttp.web_urldispatcher import AbstractRoute, UrlMappingMatchInfo

AGGREGATE_PATH = "/mcp"
SERVER_PATH = "/servers/{server}/mcp"
_PREFIX, _SUFFIX = "/servers/", "/mcp"
# Characters after which the router's view of the path (decoded, normalised by yarl) could differ
# from the raw one: those requests take the router.
_UNSAFE = frozenset("/%?#{}")
_MAX_CACHED = 256  # server names seen; unknown names are answered too, so the cache is bounded

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


def _post_routes(app: web.Application) -> dict[str, AbstractRoute]:
    routes: dict[str, AbstractRoute] = {}
    for route in app.router.routes():
        canonical = route.resource.canonical if route.resource is not None else None
        if route.method == hdrs.METH_POST and canonical in (AGGREGATE_PATH, SERVER_PATH):
            routes.setdefault(canonical, route)
    return routes


def route_hot_posts(runner: web.AppRunner) -> None:
    """Answer the two MCP POST routes of a set-up runner's app without going through the router."""
    app = runner.app
    server = runner.server
    routes = _post_routes(app)
    if server is None or app.middlewares or set(routes) != {AGGREGATE_PATH, SERVER_PATH}:
        return  # nothing to shortcut safely: every request keeps the router
    aggregate, named = routes[AGGREGATE_PATH], routes[SERVER_PATH]

    def frozen(match: dict[str, str], route: AbstractRoute) -> UrlMappingMatchInfo:
        info = UrlMappingMatchInfo(match, route)
        info.add_app(app)
        info.freeze()
        return info

    aggregate_info = frozen({}, aggregate)
    post_aggregate = aggregate.handler
    post_named = named.handler
    by_name: dict[str, UrlMappingMatchInfo] = {}
    routed: Handler = server.request_handler

    async def handle(base: web.BaseRequest) -> web.StreamResponse:
        request = cast(web.Request, base)  # the app's request factory makes web.Request
        if request.method == hdrs.METH_POST and hdrs.EXPECT not in request.headers:
            path = request.raw_path
            if path == AGGREGATE_PATH:
                request._match_info = aggregate_info
                return await post_aggregate(request)
            if path.startswith(_PREFIX) and path.endswith(_SUFFIX) and len(path) > len(_PREFIX) + len(_SUFFIX):
                name = path[len(_PREFIX):-len(_SUFFIX)]
                info = by_name.get(name)
                if info is None and name not in (".", "..") and _UNSAFE.isdisjoint(name):
                    info = frozen({"server": name}, named)
                    if len(by_name) < _MAX_CACHED:
                        by_name[name] = info
                if info is not None:
                    request._match_info = info
                    return await post_named(request)
        return await routed(request)

    # Each connection's RequestHandler takes the server's handler when it is made: set before
    # the site starts listening.
    server.request_handler = handle
