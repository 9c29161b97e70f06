"""Audit consumer → store: events/s end to end, where the time goes, and how soon an event is queryable.

    python -m bench.audit_consumer                      # all three parts, ~2 minutes
    python -m bench.audit_consumer --parts throughput --events 200000 --repeat 3
    python -m bench.audit_consumer --parts stages,steady --rates 2000,5000 --duration 20
    python -m bench.audit_consumer --http               # the same through ClickHouseStore (chDB over HTTP)

Events are what a `tools/call` through the gateway records (ingress/recorder.py): agent request
received, request sent upstream, answer received from upstream, answer sent to the agent, with
payloads of 250-300 bytes, full chain fields and a checkpoint event every 1,000 events. They are
encoded with the real codec and appended to an embedded log, then:

- throughput: `AuditConsumer` (default settings) drains a pre-filled log into a fresh chDB store;
  events/s from `run` to the last commit (store start-up excluded), one figure per repeat, with the
  CPU per event of each of the process's threads (main = the event loop; chDB's own threads by name);
- stages: each step alone on the same events, for the Avro path and the row path: decode (or
  scan), row or container building, the write (µs per event), the replay-guard queries and the
  offset commit (ms per batch);
- steady: a producer appends at a fixed rate (ticks of 10 ms, each tick's events in one durable
  append) while the consumer runs; sampled events are looked up by a `SELECT` on audit.events every
  25 ms, and the time from their append to the first `SELECT` that sees them is "queryable".
  Resolution: the lookup interval.

Runs with `mcpgw up`'s event loop and collector settings (uvloop, gc.freeze, higher thresholds);
`--plain` for asyncio's loop and the default collector. The throughput part also runs on a checkout
from before the Avro path (copy this file into its bench/), which is how RESULTS.md compares.

Load: the load average and this process's CPU share are printed with every part; other processes
on the machine slow every figure, so compare runs made close together, and repeat.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import random
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

from consumers.audit import AuditConsumer, AuditSettings, AuditWriter, default_rows, router
from consumers.store.base import AuditStore
from consumers.store.chdb_store import ChdbStore
from eventlog.base import TOPIC_EVENTS, TopicPartition
from eventlog.embedded import EmbeddedLog
from schemas.codec import EventCodec
from schemas.events import Direction, EventType, GatewayEvent, Kind, Outcome, new_event_id

STREAM_ID = "0f5e7d2a9c4b4e21a3d8b6c1e0f9a7b5"
CHECKPOINT_EVERY = 1000
T0_US = 1_795_262_400_000_000


class CallEvents:
    """The events of successive `tools/call`s, chained like one ingress process's stream."""

    def __init__(self, seed: int = 1) -> None:
        self._rnd = random.Random(seed)
        self._seq = 0
        self._prev = ""
        self._calls = 0

    def calls(self, n: int, now_us: Callable[[], int] | None = None) -> list[GatewayEvent]:
        out: list[GatewayEvent] = []
        for _ in range(n):
            out.extend(self._call(now_us))
        return out

    def _call(self, now_us: Callable[[], int] | None) -> list[GatewayEvent]:
        rnd, c = self._rnd, self._calls
        self._calls += 1
        server, tool = f"server-{c % 5}", f"tool-{c % 7}"
        request = json.dumps({
            "jsonrpc": "2.0", "id": c, "method": "tools/call",
            "params": {"name": f"{server}__{tool}",
                       "arguments": {"query": rnd.randbytes(24).hex(), "limit": c % 50,
                                     "api_key": "[REDACTED:secret_field]"},
                       "_meta": {"progressToken": c}},
        }, separators=(",", ":")).encode()  # fmt: skip
        answer = json.dumps({
            "jsonrpc": "2.0", "id": c,
            "result": {"content": [{"type": "text", "text": rnd.randbytes(72).hex()}], "isError": False},
        }, separators=(",", ":")).encode()  # fmt: skip
        common: dict[str, Any] = {
            "gateway_instance": "gw-1:5f3a9c2e", "protocol_era": "legacy", "protocol_version": "2025-11-25",
            "transport": "streamable_http", "session_id": f"{c % 200:032x}", "tenant": f"tenant-{c % 3}",
            "principal": f"agent-{c % 20}", "on_behalf_of": "alice@acme.example", "client_addr": "10.0.4.17",
            "server": server, "jsonrpc_id": str(c), "method": "tools/call", "tool": tool,
            "trace_id": rnd.randbytes(16).hex(),
        }  # fmt: skip
        steps = (
            (EventType.AGENT_MESSAGE_RECEIVED, Kind.REQUEST, Direction.AGENT_TO_GATEWAY, request, None, 1),
            (EventType.UPSTREAM_MESSAGE_SENT, Kind.REQUEST, Direction.GATEWAY_TO_UPSTREAM, request, None, 1),
            (EventType.UPSTREAM_MESSAGE_RECEIVED, Kind.RESPONSE, Direction.UPSTREAM_TO_GATEWAY, answer, None, 0),
            (EventType.AGENT_MESSAGE_SENT, Kind.RESPONSE, Direction.GATEWAY_TO_AGENT, answer,
             30_000 + rnd.randrange(40_000), 0),
        )  # fmt: skip
        out = []
        for event_type, kind, direction, payload, latency, redactions in steps:
            out.append(self._chained(GatewayEvent(
                event_type, kind, direction, Outcome.OK, event_id=new_event_id(),
                ts_us=now_us() if now_us else T0_US + self._seq * 50, latency_us=latency, payload=payload,
                payload_sha256=hashlib.sha256(payload).hexdigest(), payload_size=len(payload),
                redactions=redactions, span_id=rnd.randbytes(8).hex(), **common,
            )))  # fmt: skip
            if self._seq % CHECKPOINT_EVERY == 0:
                out.append(self._chained(GatewayEvent(
                    EventType.CHECKPOINT_RECORDED, Kind.LIFECYCLE, Direction.INTERNAL, event_id=new_event_id(),
                    ts_us=out[-1].ts_us, gateway_instance="gw-1:5f3a9c2e", transport="internal", tenant="acme",
                    principal="gateway", detail=f"head seq={self._seq} hash={self._prev} sig={rnd.randbytes(32).hex()}",
                )))  # fmt: skip
        return out

    def _chained(self, event: GatewayEvent) -> GatewayEvent:
        self._seq += 1
        event.stream_id, event.seq, event.prev_hash = STREAM_ID, self._seq, self._prev
        # Not the real chain hash (the consumer never checks it); the same size and entropy.
        event.hash = self._prev = hashlib.sha256(b"%d" % self._seq).hexdigest()
        return event


def encoded(events: Sequence[GatewayEvent], codec: EventCodec) -> list[tuple[bytes | None, bytes]]:
    return [(e.session_id.encode(), codec.encode(e)) for e in events]


class Load:
    """The machine's load average and this process's CPU over a part of the run."""

    def __init__(self) -> None:
        self.wall0 = time.perf_counter()
        self.cpu0 = _cpu()
        self.load0 = os.getloadavg()[0]

    def report(self) -> dict[str, float]:
        wall = time.perf_counter() - self.wall0
        return {
            "loadavg_1m_before": round(self.load0, 2),
            "loadavg_1m_after": round(os.getloadavg()[0], 2),
            "process_cpu_cores": round((_cpu() - self.cpu0) / wall, 2) if wall else 0.0,
        }


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def thread_cpu() -> dict[str, float]:
    """CPU seconds of this process's threads, summed by name (Linux /proc): main, chdb-write, chDB's own."""
    ticks = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    main = str(os.getpid())
    for tid in os.listdir("/proc/self/task"):
        try:
            name = Path(f"/proc/self/task/{tid}/comm").read_text().strip()
            fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the thread ended meanwhile
        name = "main" if tid == main else name.rstrip("0123456789_-") or name
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / ticks
    return out


@contextlib.asynccontextmanager
async def opened_store(where: Path, http: bool) -> AsyncIterator[AuditStore]:
    if not http:
        chdb_store = ChdbStore(where)
        await chdb_store.open()
        try:
            yield chdb_store
        finally:
            await chdb_store.close()
        return
    from consumers.store.clickhouse_store import ClickHouseStore

    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.store.chdb_http", "--path", str(where),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert server.stdout is not None and server.stdin is not None
    line = (await asyncio.wait_for(server.stdout.readline(), 60)).decode().split()
    if not line or line[0] != "LISTENING":
        raise RuntimeError(f"chdb_http did not start: {line}")
    store = ClickHouseStore(line[1])
    await store.open()
    try:
        yield store
    finally:
        await store.close()
        server.stdin.close()
        await server.wait()


async def fill(log: EmbeddedLog, records: list[tuple[bytes | None, bytes]]) -> None:
    producer = log.producer()
    for i in range(0, len(records), 5000):
        await producer.append_batch(TOPIC_EVENTS, records[i : i + 5000])


async def throughput(tmp: Path, n: int, repeat: int, settings: AuditSettings, http: bool) -> dict[str, Any]:
    events = CallEvents().calls(n // 4)
    records = encoded(events, EventCodec())
    log_dir = tmp / "throughput-log"
    async with EmbeddedLog(log_dir) as log:
        await fill(log, records)
    runs: list[dict[str, Any]] = []
    for i in range(repeat):
        async with opened_store(tmp / f"throughput-store-{i}", http) as store, EmbeddedLog(log_dir) as log:
            consumer = log.consumer(f"bench-{i}", [TOPIC_EVENTS])
            audit = AuditConsumer(consumer, store, log.producer(), settings)
            load = Load()
            threads0 = thread_cpu()
            stop = asyncio.Event()
            started = time.perf_counter()
            task = asyncio.create_task(audit.run(stop))
            while sum(audit.metrics.committed.values()) < len(records):
                if task.done():
                    await task
                    raise RuntimeError("the consumer stopped early")
                await asyncio.sleep(0.002)
            elapsed = time.perf_counter() - started
            threads = {name: cpu - threads0.get(name, 0.0) for name, cpu in thread_cpu().items()}
            stop.set()
            await task
            await consumer.close()
            stored = (await store.query("SELECT count() FROM audit.events")).rows[0][0]
            if stored != len(records):
                raise RuntimeError(f"{stored} rows stored for {len(records)} events")
            runs.append({"events": len(records), "seconds": round(elapsed, 3),
                         "events_per_s": round(len(records) / elapsed), "batches": audit.metrics.batches,
                         "cpu_us_per_event": {name: round(cpu / len(records) * 1e6, 1)
                                              for name, cpu in sorted(threads.items()) if cpu > 0},
                         **load.report()})  # fmt: skip
            print(f"  throughput run {i + 1}: {len(records):,} events in {elapsed:.2f}s = "
                  f"{len(records) / elapsed:,.0f} events/s  {runs[-1]}", flush=True)  # fmt: skip
    return {"runs": runs, "best_events_per_s": max(r["events_per_s"] for r in runs),
            "median_events_per_s": round(statistics.median(r["events_per_s"] for r in runs))}  # fmt: skip


async def stages(tmp: Path, n: int, settings: AuditSettings, http: bool) -> dict[str, Any]:
    """Each step of the chain alone, on the same events, in the order the chain runs them, for both paths.

    avro (the default): scan → Routed with the body; write = container build + insert_avro.
    rows (custom projections, the path before): Avro decode → rows (dicts); write = Native insert.
    Per event in µs, except the replay-guard queries and the commit: ms per batch of `max_rows`.
    """
    # Here, not at the top: the throughput part also runs on a checkout from before the Avro path.
    from consumers.audit import EventBodies
    from consumers.store.avro_container import AvroContainer
    from schemas import catalog

    codec = EventCodec()
    events = CallEvents(seed=2).calls(n // 4)
    values = [value for _, value in encoded(events, codec)]
    size = settings.max_rows
    out: dict[str, Any] = {"events": len(values), "batch_rows": size}
    load = Load()

    def per_event(started: float) -> float:
        return round((time.perf_counter() - started) / len(values) * 1e6, 2)

    async with opened_store(tmp / "stages-store", http) as store, EmbeddedLog(tmp / "stages-log") as log:
        writer = AuditWriter(store)
        for path in ("avro", "rows"):
            t = time.perf_counter()
            if path == "avro":
                bodies = EventBodies(codec, default_rows())
                routed = [bodies(v) for v in values]
                out["avro_scan_us"] = per_event(t)
                container = AvroContainer(catalog.schema(catalog.GATEWAY_EVENT))
                t = time.perf_counter()
                for i in range(0, len(routed), size):
                    container.build([r.body for r in routed[i : i + size] if r.body is not None])
                out["avro_build_us"] = per_event(t)
            else:
                decoded = [codec.decode(v) for v in values]
                out["rows_decode_us"] = per_event(t)
                route = router(default_rows())
                t = time.perf_counter()
                routed = [route(e) for e in decoded]
                out["rows_build_us"] = per_event(t)
            batches = [routed[i : i + size] for i in range(0, len(routed), size)]
            t, cpu = time.perf_counter(), _cpu()
            for i, batch in enumerate(batches):
                await writer.write(batch, f"{path}:0:{i * size}-{i * size + len(batch) - 1}")
            out[f"{path}_write_us"] = per_event(t)
            out[f"{path}_write_cpu_us"] = round((_cpu() - cpu) / len(values) * 1e6, 2)
        # ReplayGuard, first batch after an assignment: the first value alone (a fresh batch stops
        # there), then, when that one was written, the whole batch.
        t = time.perf_counter()
        for batch in batches:
            await writer.unwritten(batch[:1])
        out["guard_first_value_ms"] = round((time.perf_counter() - t) / len(batches) * 1e3, 2)
        t = time.perf_counter()
        for batch in batches:
            await writer.unwritten(batch)
        out["guard_whole_batch_ms"] = round((time.perf_counter() - t) / len(batches) * 1e3, 2)
        consumer = log.consumer("bench-stages", [TOPIC_EVENTS])
        await consumer.start()
        tp = TopicPartition(TOPIC_EVENTS, 0)
        t = time.perf_counter()
        for i in range(len(batches)):
            await consumer.commit({tp: i})
        out["commit_ms_per_batch"] = round((time.perf_counter() - t) / len(batches) * 1e3, 2)
        await consumer.close()
    out.update(load.report())
    return out


async def steady(tmp: Path, rate: int, duration_s: float, settings: AuditSettings, http: bool) -> dict[str, Any]:
    """Appends at `rate` events/s while the consumer runs; how long until sampled events are queryable.

    The events are generated and encoded beforehand (their `ts` is their planned append time), so the
    producer only appends: one durable append of a tick's events every 10 ms, as the ingress's group
    commit would. About 20 events a second are sampled, of every kind in turn.
    """
    tick_s = 0.01
    codec = EventCodec()
    planned = CallEvents(seed=3).calls(int(rate * duration_s) // 4 + 1)
    t0_us = time.time_ns() // 1000 + 2_000_000
    for i, event in enumerate(planned):
        event.ts_us = t0_us + int(i * 1e6 / rate)
    records = encoded(planned, codec)
    per_tick = rate * tick_s
    sample_every = max(1, rate // 20)
    appended_at: dict[str, float] = {}  # sampled event id → when its append started
    latencies: list[float] = []
    unseen_at_end = 0
    async with opened_store(tmp / f"steady-{rate}-store", http) as store, \
            EmbeddedLog(tmp / f"steady-{rate}-log") as log:  # fmt: skip
        consumer = log.consumer("bench-steady", [TOPIC_EVENTS])
        audit = AuditConsumer(consumer, store, log.producer(), settings)
        stop = asyncio.Event()
        task = asyncio.create_task(audit.run(stop))
        producer = log.producer()
        done_producing = asyncio.Event()
        loop = asyncio.get_running_loop()

        async def produce() -> None:
            start = loop.time()
            sent = 0
            tick = 0
            while sent < len(records):
                tick += 1
                upto = min(len(records), round(tick * per_tick))
                if upto > sent:
                    t = time.perf_counter()
                    for i in range(sent + (-sent % sample_every), upto, sample_every):
                        appended_at[planned[i].event_id] = t
                    await producer.append_batch(TOPIC_EVENTS, records[sent:upto])
                    sent = upto
                await asyncio.sleep(max(0.0, start + tick * tick_s - loop.time()))
            done_producing.set()

        async def probe() -> None:
            nonlocal unseen_at_end
            deadline: float | None = None
            while True:
                pending = list(appended_at)
                if pending:
                    result = await store.query(
                        "SELECT event_id FROM audit.events WHERE event_id IN {ids:Array(String)}", {"ids": pending})
                    seen = time.perf_counter()
                    for (event_id,) in result.rows:
                        latencies.append(seen - appended_at.pop(event_id))
                if done_producing.is_set():
                    deadline = deadline or time.perf_counter() + 5.0
                    if not appended_at or time.perf_counter() > deadline:
                        unseen_at_end = len(appended_at)
                        return
                await asyncio.sleep(0.025)

        load = Load()
        started = time.perf_counter()
        await asyncio.gather(produce(), probe())
        report = load.report()
        achieved = len(records) / (time.perf_counter() - started)
        stop.set()
        await task
        await consumer.close()
    latencies.sort()

    def pct(p: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(p * len(latencies)))], 3) if latencies else float("nan")

    return {"rate": rate, "duration_s": duration_s, "appended_per_s": round(achieved), "samples": len(latencies),
            "unseen": unseen_at_end, "p50_s": pct(0.50), "p95_s": pct(0.95), "p99_s": pct(0.99),
            "max_s": round(latencies[-1], 3) if latencies else None, **report}  # fmt: skip


async def main(args: argparse.Namespace) -> dict[str, Any]:
    settings = AuditSettings(**({"max_rows": args.max_rows} if args.max_rows else {}))
    results: dict[str, Any] = {"settings": {"max_rows": settings.max_rows, "max_wait_s": settings.max_wait_s},
                               "http": args.http, "plain": args.plain, "cpus": os.cpu_count()}  # fmt: skip
    parts = args.parts.split(",")
    # clickhouse-connect imports pandas at a process's first row insert (checking for DataFrames):
    # about a second, once per process, which would land in whichever run came first.
    from clickhouse_connect.driver import options

    _ = options.pd
    with tempfile.TemporaryDirectory(prefix="mcpgw-bench-audit-") as tmp_name:
        tmp = Path(tmp_name)
        if "throughput" in parts:
            print(f"throughput ({args.events:,} events, {args.repeat} runs, max_rows={settings.max_rows})", flush=True)
            results["throughput"] = await throughput(tmp, args.events, args.repeat, settings, args.http)
        if "stages" in parts:
            print("stages", flush=True)
            results["stages"] = await stages(tmp, min(args.events, 60_000), settings, args.http)
            print(f"  {results['stages']}", flush=True)
        if "steady" in parts:
            results["steady"] = []
            for rate in (int(r) for r in args.rates.split(",")):
                print(f"steady at {rate:,} events/s for {args.duration:g}s", flush=True)
                results["steady"].append(await steady(tmp, rate, args.duration, settings, args.http))
                print(f"  {results['steady'][-1]}", flush=True)
    return results


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="throughput,stages,steady", help="comma-separated: throughput,stages,steady")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rates", default="2000,5000")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds of steady load per rate")
    parser.add_argument("--max-rows", type=int, default=0, help="batch size (default: AuditSettings')")
    parser.add_argument("--http", action="store_true", help="ClickHouseStore against chDB behind tests/store/chdb_http")
    parser.add_argument("--plain", action="store_true",
                        help="asyncio's loop and default GC instead of mcpgw up's uvloop and GC settings")
    parser.add_argument("--json", type=Path, help="also write the results here")
    return parser.parse_args(argv)


def run_like_mcpgw_up(args: argparse.Namespace) -> dict[str, Any]:
    """The event loop and collector settings `mcpgw up` runs its consumers with (mcpgw/runner.py)."""
    if args.plain:
        return asyncio.run(main(args))
    import gc

    import uvloop

    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 50, 1000)
    return uvloop.run(main(args))


if __name__ == "__main__":
    arguments = parse_args()
    figures = run_like_mcpgw_up(arguments)
    if arguments.json:
        arguments.json.write_text(json.dumps(figures, indent=2) + "\n")
