"""A minimal, fast MCP server for benchmarks: one tool, `echo`, in both protocol eras.

Streamable HTTP on raw aiohttp (low-level `web.Server`, no router, no access log) with uvloop,
JSON answers only (never SSE), or newline-delimited JSON-RPC on stdin/stdout:

    python -m bench.fast_upstream --port 9100              # http://127.0.0.1:9100/mcp
    python -m bench.fast_upstream --transport stdio

Legacy (2025-11-25): `initialize` → `Mcp-Session-Id`, `notifications/initialized` → 202, then
`tools/list` / `tools/call` / `ping` carrying the session header. Modern (2026-07-28): no session;
`server/discover`, `tools/list`, `tools/call`, `ping` with `MCP-Protocol-Version` and `Mcp-Method`
headers mirroring the body (checked, 400 -32020 on mismatch); results carry `resultType`, and
`server/discover` / `tools/list` add `ttlMs` and `cacheScope`. `echo` answers its arguments as
one text content block (compact JSON). The server does as little as a correct answer needs, so
the gateway's share of a proxied call stands out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import signal
import sys
from typing import Any

import orjson
from aiohttp import web

JsonObject = dict[str, Any]

LEGACY_VERSIONS = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
MODERN_VERSIONS = ("2026-07-28",)
LATEST_LEGACY = LEGACY_VERSIONS[-1]
META_VERSION = "io.modelcontextprotocol/protocolVersion"
META_SERVER_INFO = "io.modelcontextprotocol/serverInfo"

METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INVALID_REQUEST = -32600
PARSE_ERROR = -32700
HEADER_MISMATCH = -32020
UNSUPPORTED_PROTOCOL_VERSION = -32022

SERVER_INFO: JsonObject = {"name": "bench-fast-upstream", "version": "0.1.0"}
CAPABILITIES: JsonObject = {"tools": {}}
ECHO_TOOL: JsonObject = {
    "name": "echo",
    "description": "Return the call's arguments as text.",
    "inputSchema": {"type": "object", "additionalProperties": True},
}
TTL_MS = 60_000

_JSON = "application/json"
_SESSION = "Mcp-Session-Id"


def _result(msg_id: Any, result: JsonObject) -> JsonObject:
    return {"jsonrpc": "2.0", "id": msg_id, "result": result}


def _error(msg_id: Any, code: int, message: str, data: Any = None) -> JsonObject:
    error: JsonObject = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return {"jsonrpc": "2.0", "id": msg_id, "error": error}


def answer(body: JsonObject, modern: bool) -> JsonObject | None:
    """The response to one request (None for a notification), for a message already admitted."""
    msg_id = body.get("id")
    method = body.get("method")
    if "id" not in body:
        return None  # notifications: nothing to answer
    params = body.get("params")
    if type(params) is not dict:
        params = {}
    if method == "tools/call":
        if params.get("name") != "echo":
            return _error(msg_id, INVALID_PARAMS, f"Unknown tool: {params.get('name')!r}")
        args = params.get("arguments")
        result: JsonObject = {
            "content": [{"type": "text", "text": orjson.dumps(args or {}).decode()}],
            "isError": False,
        }
    elif method == "tools/list":
        result = {"tools": [ECHO_TOOL]}
        if modern:
            result["ttlMs"] = TTL_MS
            result["cacheScope"] = "public"
    elif method == "ping":
        result = {}
    elif method == "initialize" and not modern:
        requested = params.get("protocolVersion")
        version = requested if requested in LEGACY_VERSIONS else LATEST_LEGACY
        result = {"protocolVersion": version, "capabilities": CAPABILITIES, "serverInfo": SERVER_INFO}
    elif method == "server/discover":
        result = {
            "supportedVersions": [*MODERN_VERSIONS, *reversed(LEGACY_VERSIONS)],
            "capabilities": CAPABILITIES,
            "_meta": {META_SERVER_INFO: SERVER_INFO},
            "ttlMs": TTL_MS,
            "cacheScope": "public",
        }
    else:
        return _error(msg_id, METHOD_NOT_FOUND, f"Method not found: {method}")
    if modern:
        result["resultType"] = "complete"
    return _result(msg_id, result)


# -- Streamable HTTP -------------------------------------------------------------------------------


class HttpServer:
    def __init__(self) -> None:
        self.sessions: set[str] = set()

    @staticmethod
    def _json(status: int, body: JsonObject, headers: dict[str, str] | None = None) -> web.Response:
        return web.Response(status=status, body=orjson.dumps(body), content_type=_JSON, headers=headers)

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.path != "/mcp":
            return web.Response(status=404, text="not found: the MCP endpoint is /mcp")
        if request.method == "POST":
            return await self._post(request)
        if request.method == "DELETE":
            self.sessions.discard(request.headers.get(_SESSION, ""))
            return web.Response(status=200)
        # GET: no unsolicited stream is offered (the spec allows 405).
        return web.Response(status=405, headers={"Allow": "POST, DELETE"})

    async def _post(self, request: web.BaseRequest) -> web.Response:
        data = await request.read()
        try:
            body = orjson.loads(data)
        except orjson.JSONDecodeError:
            return self._json(400, _error(None, PARSE_ERROR, "parse error"))
        if type(body) is not dict or type(body.get("method")) is not str:
            return self._json(400, _error(None, INVALID_REQUEST, "send one JSON-RPC request or notification"))
        headers = request.headers
        version = headers.get("MCP-Protocol-Version")
        if version is not None and version not in LEGACY_VERSIONS:
            return self._modern(body, version, headers.get("Mcp-Method"))
        return self._legacy(body, headers.get(_SESSION))

    def _modern(self, body: JsonObject, version: str, method_header: str | None) -> web.Response:
        msg_id = body.get("id")
        if version not in MODERN_VERSIONS:
            return self._json(
                400,
                _error(
                    msg_id,
                    UNSUPPORTED_PROTOCOL_VERSION,
                    "Unsupported protocol version",
                    {"supported": [*MODERN_VERSIONS, *LEGACY_VERSIONS], "requested": version},
                ),
            )
        if "id" in body:
            if method_header != body["method"]:
                return self._json(400, _error(msg_id, HEADER_MISMATCH, "Header mismatch: Mcp-Method"))
            params = body.get("params")
            meta = params.get("_meta") if type(params) is dict else None
            if type(meta) is not dict or meta.get(META_VERSION) != version:
                return self._json(
                    400, _error(msg_id, HEADER_MISMATCH, "Header mismatch: _meta protocol version")
                )
        response = answer(body, modern=True)
        if response is None:
            return web.Response(status=202)
        return self._json(200, response)

    def _legacy(self, body: JsonObject, session: str | None) -> web.Response:
        if body["method"] == "initialize" and session is None:
            if "id" not in body:
                return self._json(400, _error(None, INVALID_REQUEST, "initialize must be a request"))
            session = secrets.token_hex(16)
            self.sessions.add(session)
            response = answer(body, modern=False)
            assert response is not None
            return self._json(200, response, {_SESSION: session})
        if session is None:
            return self._json(400, _error(body.get("id"), INVALID_REQUEST, "Bad Request: missing session ID"))
        if session not in self.sessions:
            return self._json(404, _error(body.get("id"), INVALID_REQUEST, "Session not found"))
        response = answer(body, modern=False)
        if response is None:
            return web.Response(status=202)
        return self._json(200, response)


async def serve_http(port: int) -> None:
    server = web.Server(HttpServer().handle, access_log=None)
    runner = web.ServerRunner(server, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, reuse_address=True)
    await site.start()
    bound = runner.addresses[0][1] if runner.addresses else port
    print(f"bench.fast_upstream listening on http://127.0.0.1:{bound}/mcp", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


# -- stdio -----------------------------------------------------------------------------------------


def serve_stdio() -> None:
    """Newline-delimited JSON-RPC; a request carrying the modern `_meta` envelope is answered modern."""
    out = sys.stdout.buffer
    for line in sys.stdin.buffer:
        if not line.strip():
            continue
        try:
            body = orjson.loads(line)
        except orjson.JSONDecodeError:
            out.write(orjson.dumps(_error(None, PARSE_ERROR, "parse error")) + b"\n")
            out.flush()
            continue
        if type(body) is not dict or "method" not in body:
            continue  # answers to server requests: this server never asks
        params = body.get("params")
        meta = params.get("_meta") if type(params) is dict else None
        modern = type(meta) is dict and meta.get(META_VERSION) in MODERN_VERSIONS
        response = answer(body, modern)
        if response is not None:
            out.write(orjson.dumps(response) + b"\n")
            out.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fast_upstream", description=__doc__.split("\n")[0])
    parser.add_argument("--transport", choices=("http", "stdio"), default="http")
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0: any free port)")
    args = parser.parse_args(argv)
    if args.transport == "stdio":
        with contextlib.suppress(KeyboardInterrupt, BrokenPipeError):
            serve_stdio()
        return 0
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        asyncio.run(serve_http(args.port))
    else:
        uvloop.run(serve_http(args.port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
