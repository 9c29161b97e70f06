"""A closed-loop load generator speaking MCP Streamable HTTP (`tools/call`), with aiohttp.

C workers each keep one call in flight; the run stops after N calls or T seconds, whichever comes
first. Bodies and headers are encoded once (only the JSON-RPC id is spliced in per call) and every
call's latency is kept, so the generator's own cost per call stays small and the same for every
target it is pointed at.

Modern era (default): no handshake; every call carries `MCP-Protocol-Version: 2026-07-28`,
`Mcp-Method`, `Mcp-Name` and the `_meta` envelope. Legacy era: each worker `initialize`s its own
session (`Mcp-Session-Id`) and sends `notifications/initialized` first.

    python -m bench.loadgen http://127.0.0.1:9100/mcp -c 16 --duration 5
    python -m bench.loadgen http://127.0.0.1:8080/mcp --tool fast__echo -c 1 --calls 2000 --era legacy
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
import orjson

Era = Literal["modern", "legacy"]

MODERN_VERSION = "2026-07-28"
LEGACY_VERSION = "2025-11-25"
CLIENT_INFO = {"name": "bench-loadgen", "version": "0.1.0"}
ACCEPT = "application/json, text/event-stream"
_ID_MARK = "\x00ID\x00"


@dataclass
class LoadResult:
    url: str
    concurrency: int
    calls: int
    errors: int
    duration_s: float
    latencies_ns: list[int] = field(repr=False, default_factory=list)
    first_error: str = ""

    @property
    def throughput(self) -> float:
        return self.calls / self.duration_s if self.duration_s > 0 else 0.0

    def percentile_ms(self, q: float) -> float:
        return percentile_ms(sorted(self.latencies_ns), q)

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.latencies_ns)
        return {
            "url": self.url,
            "concurrency": self.concurrency,
            "calls": self.calls,
            "errors": self.errors,
            "duration_s": round(self.duration_s, 3),
            "throughput": round(self.throughput, 1),
            "p50_ms": round(percentile_ms(ordered, 0.50), 4),
            "p99_ms": round(percentile_ms(ordered, 0.99), 4),
            "first_error": self.first_error,
        }


def percentile_ms(ordered_ns: list[int], q: float) -> float:
    """Nearest-rank percentile of already sorted nanosecond samples, in milliseconds."""
    if not ordered_ns:
        return float("nan")
    rank = min(len(ordered_ns) - 1, max(0, int(q * len(ordered_ns) + 0.5) - 1))
    return ordered_ns[rank] / 1e6


def _split_body(body: dict[str, Any]) -> tuple[bytes, bytes]:
    """Encode `body` once, around its id: the id (a JSON string) is spliced in per call."""
    wire = orjson.dumps(body)
    mark = orjson.dumps(_ID_MARK)
    prefix, suffix = wire.split(mark)
    return prefix, suffix


def call_body(tool: str, arguments: dict[str, Any], era: Era) -> dict[str, Any]:
    params: dict[str, Any] = {"name": tool, "arguments": arguments}
    if era == "modern":
        params["_meta"] = {
            "io.modelcontextprotocol/protocolVersion": MODERN_VERSION,
            "io.modelcontextprotocol/clientCapabilities": {},
            "io.modelcontextprotocol/clientInfo": CLIENT_INFO,
        }
    return {"jsonrpc": "2.0", "id": _ID_MARK, "method": "tools/call", "params": params}


async def legacy_handshake(http: aiohttp.ClientSession, url: str) -> str:
    """initialize + notifications/initialized; returns the session id."""
    init = {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {"protocolVersion": LEGACY_VERSION, "capabilities": {}, "clientInfo": CLIENT_INFO},
    }
    headers = {"Content-Type": "application/json", "Accept": ACCEPT}
    async with http.post(url, data=orjson.dumps(init), headers=headers) as resp:
        data = await resp.read()
        session = resp.headers.get("Mcp-Session-Id")
        if resp.status != 200 or not session:
            raise RuntimeError(f"initialize at {url} failed: HTTP {resp.status} {data[:300]!r}")
    headers = {**headers, "Mcp-Session-Id": session, "MCP-Protocol-Version": LEGACY_VERSION}
    note = b'{"jsonrpc":"2.0","method":"notifications/initialized"}'
    async with http.post(url, data=note, headers=headers) as resp:
        await resp.read()
        if resp.status != 202:
            raise RuntimeError(f"notifications/initialized at {url} got HTTP {resp.status}")
    return session


async def delete_session(http: aiohttp.ClientSession, url: str, session: str) -> None:
    async with http.delete(url, headers={"Mcp-Session-Id": session, "MCP-Protocol-Version": LEGACY_VERSION}):
        pass


class LoadGen:
    """Calls one tool at one URL; legacy sessions are opened once and reused across runs."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        url: str,
        tool: str = "echo",
        era: Era = "modern",
        arguments: dict[str, Any] | None = None,
    ) -> None:
        self.http = http
        self.url = url
        self.era = era
        self.arguments = arguments if arguments is not None else {"message": "x" * 64}
        self._prefix, self._suffix = _split_body(call_body(tool, self.arguments, era))
        self._headers: dict[str, str] = {"Content-Type": "application/json", "Accept": ACCEPT}
        if era == "modern":
            self._headers.update(
                {"MCP-Protocol-Version": MODERN_VERSION, "Mcp-Method": "tools/call", "Mcp-Name": tool}
            )
        self.sessions: list[str] = []

    async def _worker_headers(self, concurrency: int) -> list[dict[str, str]]:
        if self.era == "modern":
            return [self._headers] * concurrency
        while len(self.sessions) < concurrency:
            self.sessions.append(await legacy_handshake(self.http, self.url))
        return [
            {**self._headers, "Mcp-Session-Id": s, "MCP-Protocol-Version": LEGACY_VERSION}
            for s in self.sessions[:concurrency]
        ]

    async def close(self) -> None:
        sessions, self.sessions = self.sessions, []
        for session in sessions:
            with contextlib.suppress(aiohttp.ClientError):
                await delete_session(self.http, self.url, session)

    async def run(
        self, concurrency: int, calls: int | None = None, duration_s: float | None = None
    ) -> LoadResult:
        """Closed loop at `concurrency` until `calls` calls or `duration_s` seconds (10 s if neither)."""
        if calls is None and duration_s is None:
            duration_s = 10.0
        headers = await self._worker_headers(concurrency)
        budget = calls if calls is not None else 1 << 62
        issued = 0
        errors = 0
        first_error = ""
        latencies: list[int] = []
        record = latencies.append
        clock = time.perf_counter_ns
        started = clock()
        deadline = started + int(duration_s * 1e9) if duration_s is not None else 1 << 62
        http, url, suffix = self.http, self.url, self._suffix

        async def worker(w: int) -> None:
            nonlocal issued, errors, first_error
            prefix = self._prefix + f'"w{w}-'.encode()
            hdrs = headers[w]
            n = 0
            while issued < budget:
                issued += 1
                n += 1
                body = prefix + str(n).encode() + b'"' + suffix
                t0 = clock()
                if t0 >= deadline:
                    issued -= 1
                    return
                try:
                    async with http.post(url, data=body, headers=hdrs) as resp:
                        data = await resp.read()
                        status = resp.status
                except aiohttp.ClientError as exc:
                    data, status = str(exc).encode(), -1
                record(clock() - t0)
                if status != 200 or b'"error":{' in data or b'"isError":true' in data:
                    errors += 1
                    if not first_error:
                        first_error = f"HTTP {status}: {data[:300].decode(errors='replace')}"

        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        elapsed = (clock() - started) / 1e9
        return LoadResult(self.url, concurrency, len(latencies), errors, elapsed, latencies, first_error)


def client_session(limit: int = 0) -> aiohttp.ClientSession:
    """A client session with no proxy lookup, no per-host limit and keep-alive connections."""
    connector = aiohttp.TCPConnector(limit=limit, limit_per_host=0, keepalive_timeout=60)
    return aiohttp.ClientSession(
        connector=connector, trust_env=False, auto_decompress=False, timeout=aiohttp.ClientTimeout(total=60)
    )


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    async with client_session() as http:
        gen = LoadGen(http, args.url, args.tool, args.era)
        try:
            if args.warmup:
                await gen.run(args.concurrency, calls=args.warmup)
            result = await gen.run(args.concurrency, calls=args.calls, duration_s=args.duration)
        finally:
            await gen.close()
    return result.summary()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__.split("\n")[0])
    parser.add_argument("url", help="the Streamable HTTP endpoint, e.g. http://127.0.0.1:8080/mcp")
    parser.add_argument("--tool", default="echo")
    parser.add_argument("--era", choices=("modern", "legacy"), default="modern")
    parser.add_argument("-c", "--concurrency", type=int, default=1)
    parser.add_argument("--calls", type=int, help="stop after this many calls")
    parser.add_argument(
        "--duration", type=float, help="stop after this many seconds (default 10 without --calls)"
    )
    parser.add_argument("--warmup", type=int, default=200, help="calls made first and not measured")
    args = parser.parse_args(argv)
    if args.duration is None and args.calls is None:
        args.duration = 10.0
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        summary = asyncio.run(_main(args))
    else:
        summary = uvloop.run(_main(args))
    print(json.dumps(summary, indent=2))
    return 0 if summary["errors"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
