"""A test server that speaks enough of ClickHouse's HTTP interface to put chDB behind clickhouse-connect.

CI has no ClickHouse server package, yet `ClickHouseStore` must be tested against the real engine,
not a mock. So this module runs, in a subprocess, an aiohttp server whose every SQL statement is
executed by chDB, the ClickHouse engine embedded as a library: the parser, the MergeTree storage,
insert deduplication, materialized views, `readonly` enforcement and error codes are ClickHouse's
own. Only the transport is ours, and it is a pass-through: clickhouse-connect sends Native (binary
columnar) blocks and asks for Native results, and chDB reads and writes Native itself, so no row is
ever decoded or re-encoded here.

What the shim implements (what clickhouse-connect's async client uses):
    GET /ping                      -> "Ok."
    GET|POST /?query=…             the statement from the `query` parameter, the body (if any) is the
                                   INSERT data; or the whole statement (and INSERT data after
                                   `FORMAT <fmt>` and one newline) in the body; or multipart form
                                   fields `query` and `param_*`
    database=…                     USE before the statement
    param_<name>=…                 server-side query parameters ({name:Type} placeholders)
    any other parameter            a ClickHouse setting, applied with SET on the request's own engine
                                   handle (readonly last, as a server applies URL settings before the query)
    default_format=…               the output format when the statement names none (TabSeparated)
    Content-Encoding lz4|zstd|gzip|deflate on request bodies (responses are sent uncompressed, which
                                   HTTP permits whatever Accept-Encoding says)
    X-ClickHouse-Format, -Query-Id, -Summary, -Timezone, -Server-Display-Name response headers;
    errors as ClickHouse sends them: "Code: N. DB::Exception: …" with X-ClickHouse-Exception-Code

What it does not do: users, passwords, grants and row policies (chDB has no access control, so the
`X-ClickHouse-User`/`-Key` headers are ignored and the contract tests that need access control are
server-only), sessions (every request gets a fresh engine handle, like a sessionless HTTP request),
progress headers, response compression, external data.

Run: python -m tests.store.chdb_http --path DIR [--port 0]. It prints `LISTENING <url>` once ready
and exits when its stdin closes, so a crashed test run leaves no server behind.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import re
import sys
import uuid
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import chdb
from aiohttp import web

# Request parameters that steer the HTTP transport rather than the query.
TRANSPORT_PARAMS = frozenset({
    "query", "database", "default_format", "user", "password", "quota_key", "query_id", "session_id",
    "session_timeout", "session_check", "compress", "decompress", "enable_http_compression", "buffer_size",
    "wait_end_of_query", "send_progress_in_http_headers", "http_headers_progress_interval_ms",
    "client_protocol_version", "role", "http_response_buffer_size",
})
# Settings a real server refuses to take from a URL once `readonly` forbids it, so they go in last.
LAST_SETTINGS = ("readonly",)
# ClickHouse's own mapping for the codes the tests meet (HTTPHandler: exceptionCodeToHTTPStatus).
HTTP_STATUS = {62: 400, 36: 400, 115: 400, 60: 404, 81: 404, 46: 404, 164: 403, 497: 403, 516: 401}

_CODE = re.compile(r"Code: (\d+)\.")
_INSERT_WITH_FORMAT = re.compile(rb"\A\s*(INSERT\s.*?)\bFORMAT\s+(\w+)[ \t]*(?:\r?\n)?", re.IGNORECASE | re.DOTALL)
_FORMAT_CLAUSE = re.compile(r"\bFORMAT\s+(\w+)\s*;?\s*\Z", re.IGNORECASE)


class EngineError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        match = _CODE.search(message)
        self.code = int(match.group(1)) if match else 1001  # STD_EXCEPTION, as a server reports unknowns
        start = message.find("Code: ")
        self.text = message[start:] if start >= 0 else f"Code: {self.code}. DB::Exception: {message}"


@dataclass
class Request:
    statement: str
    data: bytes | None = None
    insert_format: str = ""
    database: str = ""
    default_format: str = "TabSeparated"
    settings: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    readonly_get: bool = False


@dataclass
class Outcome:
    body: bytes
    fmt: str
    summary: dict[str, str]


def decompress(body: bytes, encoding: str) -> bytes:
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding == "lz4":
        import lz4.frame  # type: ignore[import-untyped]

        # clickhouse-connect compresses each Native block as its own frame; lz4.frame.decompress
        # would stop after the first one and silently drop the rest of the batch.
        parts: list[bytes] = []
        while body:
            frame = lz4.frame.LZ4FrameDecompressor()
            parts.append(frame.decompress(body))
            body = frame.unused_data
        return b"".join(parts)
    if encoding == "zstd":
        from clickhouse_connect.driver.compression import _zstd_decompress

        return bytes(_zstd_decompress(body))
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    raise EngineError(f"Code: 1001. DB::Exception: the test shim cannot decode Content-Encoding {encoding!r}")


def _sql_value(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class Engine:
    """One chDB engine; each request runs on a fresh handle on the engine's one worker thread."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chdb-http")
        # Keeps the engine (and its directory lock) up between requests.
        self.anchor: Any = None
        self.timezone = "UTC"
        self.version = ""

    def start(self) -> None:
        self.anchor = chdb.connect(self.path)
        row = self.anchor.query("SELECT timezone(), version()", "TabSeparated").bytes().decode().strip()
        self.timezone, self.version = row.split("\t")

    def stop(self) -> None:
        if self.anchor is not None:
            self.anchor.close()
        self.pool.shutdown(wait=True)

    def execute(self, req: Request) -> Outcome:
        handle = chdb.connect(self.path)
        try:
            return self._execute(handle, req)
        except EngineError:
            raise
        except Exception as exc:  # chDB raises RuntimeError subclasses carrying ClickHouse's message
            raise EngineError(str(exc)) from exc
        finally:
            handle.close()

    def _execute(self, handle: Any, req: Request) -> Outcome:
        if req.database:
            handle.query(f"USE `{req.database}`", "TabSeparated")
        settings = dict(req.settings)
        if req.readonly_get and "readonly" not in settings:
            settings["readonly"] = "2"  # a server treats GET as read-only but lets it change settings
        ordered = sorted(settings.items(), key=lambda item: item[0] in LAST_SETTINGS)
        for name, value in ordered:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise EngineError(f"Code: 115. DB::Exception: Unknown setting '{name}'. (UNKNOWN_SETTING)")
            handle.query(f"SET {name} = {_sql_value(value)}", "TabSeparated")
        if req.insert_format and req.data is not None:
            inserter = handle.send_insert(req.statement, req.insert_format)
            try:
                inserter.append(req.data)
                result = inserter.finish()
            except BaseException:
                inserter.cancel()
                raise
            return Outcome(b"", "TabSeparated", {"written_rows": str(result.rows_written),
                                                 "written_bytes": str(result.bytes_written)})
        match = _FORMAT_CLAUSE.search(req.statement)
        fmt = match.group(1) if match else req.default_format
        res = handle.query(req.statement, fmt, params=req.params)
        summary = {"read_rows": str(res.rows_read()), "read_bytes": str(res.bytes_read()),
                   "elapsed_ns": str(int(res.elapsed() * 1e9))}
        return Outcome(bytes(res.bytes() or b""), fmt, summary)


async def parse(request: web.Request) -> Request:
    query = dict(request.query)
    body = b""
    if request.content_type == "multipart/form-data":
        # clickhouse-connect moves long queries and their parameters into a multipart form.
        form = await request.post()
        query.update({k: v for k, v in form.items() if isinstance(v, str)})
    else:
        body = decompress(await request.read(), request.headers.get("Content-Encoding", ""))
    req = Request(statement="", database=query.pop("database", ""),
                  default_format=query.pop("default_format", "TabSeparated"), readonly_get=request.method == "GET")
    text = query.pop("query", None)
    for name, value in query.items():
        if name.startswith("param_"):
            req.params[name[len("param_"):]] = value
        elif name not in TRANSPORT_PARAMS:
            req.settings[name] = value
    if text is not None:
        req.statement, req.data = text, (body or None)
        match = _FORMAT_CLAUSE.search(text)
        if req.data is not None and match and re.match(r"\s*INSERT\b", text, re.IGNORECASE):
            req.statement, req.insert_format = text[: match.start()], match.group(1)
        elif req.data is not None:
            req.statement, req.data = f"{text}\n{req.data.decode()}", None
        return req
    embedded = _INSERT_WITH_FORMAT.match(body)
    if embedded:
        req.statement, req.insert_format = embedded.group(1).decode(), embedded.group(2).decode()
        req.data = body[embedded.end():]
    else:
        req.statement = body.decode()
    return req


def make_app(engine: Engine) -> web.Application:
    async def ping(_: web.Request) -> web.Response:
        return web.Response(text="Ok.\n")

    async def handle(request: web.Request) -> web.Response:
        query_id = request.query.get("query_id") or str(uuid.uuid4())
        headers = {"X-ClickHouse-Query-Id": query_id, "X-ClickHouse-Timezone": engine.timezone,
                   "X-ClickHouse-Server-Display-Name": "chdb-http-shim"}
        try:
            req = await parse(request)
            if not req.statement.strip():
                raise EngineError("Code: 62. DB::Exception: Empty query. (SYNTAX_ERROR)")
            loop = asyncio.get_running_loop()
            outcome = await loop.run_in_executor(engine.pool, engine.execute, req)
        except EngineError as exc:
            headers["X-ClickHouse-Exception-Code"] = str(exc.code)
            return web.Response(status=HTTP_STATUS.get(exc.code, 500), headers=headers,
                                body=f"{exc.text} (version {engine.version})\n".encode())
        headers["X-ClickHouse-Format"] = outcome.fmt
        headers["X-ClickHouse-Summary"] = json.dumps(outcome.summary)
        return web.Response(body=outcome.body, headers=headers, content_type="application/octet-stream")

    app = web.Application(client_max_size=1 << 30)
    app.router.add_get("/ping", ping)
    app.router.add_route("*", "/", handle)
    return app


async def serve(path: str, host: str, port: int) -> None:
    engine = Engine(path)
    engine.start()
    runner = web.AppRunner(make_app(engine), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(f"LISTENING http://{host}:{bound}", flush=True)
    loop = asyncio.get_running_loop()
    try:
        # The parent holds our stdin: when it closes (or dies), so do we.
        await loop.run_in_executor(None, sys.stdin.buffer.read)
    finally:
        await runner.cleanup()
        engine.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--path", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    asyncio.run(serve(args.path, args.host, args.port))


if __name__ == "__main__":
    main()
