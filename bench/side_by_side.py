"""Gateway variants side by side: interleaved rounds, CPU per call from schedstat, p50 against direct.

How the before/after ratios in bench/RESULTS.md are measured: one upstream, one gateway per variant
(a source tree and an event log), and the direct path, in rounds whose order rotates, so drift in
the machine's load hits every variant alike; the per-round CPU ratio of each variant to the first
is the robust figure.

    git worktree add /tmp/base HEAD~1
    python -m bench.side_by_side --variant base=/tmp/base:embedded --variant new=.:embedded \
        --variant mem=.:memory --rounds 6 --pin

A variant is NAME=TREE:EVENT_LOG[:PYTHON], EVENT_LOG `memory`, `embedded` or `kafka`, PYTHON a
statement run in the gateway process before it starts (e.g. `import sys; sys.setswitchinterval(0.001)`).
With any `kafka` variant one Tansu broker is started for the run (as `bench.run --event-log kafka`
does, memory storage, on loopback), and every Kafka variant's gateway produces to it with its own
client id, strict mode, acks=all, idempotence off (Tansu refuses it). `--pin` puts the broker with
the upstream and the load generator on CPU 0. With a broker, each path's line also gives the
broker's CPU per call (the direct path's is its idle cost).
`--endpoint` picks what the gateways are called on: `servers` (`/servers/fast/mcp`, tool `echo`,
the default), `mcp` (the aggregated `/mcp`, tool `fast__echo`), or both, each measured per variant
in the same rounds.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

from bench.loadgen import LoadGen, client_session, percentile_ms
from bench.run import (
    Processes,
    busy_jiffies,
    cpu_ms,
    event_log_config,
    free_port,
    loadavg,
    pin,
    start_broker,
    wait_port,
    wait_ready,
)

HOST = "127.0.0.1"
# endpoint -> (path on the gateway, tool name there)
ENDPOINTS = {"servers": ("/servers/fast/mcp", "echo"), "mcp": ("/mcp", "fast__echo")}


def absolute_tree(spec: str) -> str:
    """NAME=TREE:... with TREE made absolute: each gateway imports from its tree, run from elsewhere."""
    name, _, rest = spec.partition("=")
    tree, _, log_and_prelude = rest.partition(":")
    return f"{name}={os.path.abspath(tree)}:{log_and_prelude}"


def parse_variant(spec: str) -> tuple[str, str, str, str]:
    """NAME=TREE:EVENT_LOG[:PYTHON] as (name, tree, event log, python)."""
    name, _, rest = spec.partition("=")
    root, _, el_name = rest.partition(":")
    el_name, _, prelude = el_name.partition(":")
    return name, root, el_name, prelude


def label(variant: str, endpoint: str, endpoints: list[str]) -> str:
    """A variant's name, with the endpoint when several are measured."""
    return variant if len(endpoints) == 1 else f"{variant}:{endpoint}"


async def main(args: argparse.Namespace) -> None:
    procs = Processes()
    tmp = Path(tempfile.mkdtemp(prefix="side-by-side-"))
    try:
        up_port = free_port()
        up = procs.start("up", [sys.executable, "-m", "bench.fast_upstream", "--port", str(up_port)], tmp / "up.log")
        await wait_port(up_port, lambda: up.poll() is None)
        gws = {}
        kafka = any(parse_variant(spec)[2] == "kafka" for spec in args.variant)
        bootstrap, broker_pid = await start_broker(procs, tmp, print) if kafka else (None, None)
        for spec in args.variant:
            name, root, el_name, prelude = parse_variant(spec)
            port = free_port()
            data = Path(tempfile.mkdtemp(prefix=f"side-by-side-{name}-", dir=args.data_parent))
            if el_name not in ("memory", "embedded", "kafka"):
                raise SystemExit(f"--variant {spec}: the event log must be memory, embedded or kafka")
            el = event_log_config(el_name, bootstrap, 0)
            if el_name == "kafka":
                el["kafka"]["client_id"] = f"mcpgw-{name}"
            cfg = {"listen": {"host": HOST, "port": port}, "auth": "none", "data_dir": str(data),
                   "event_log": el, "audit": {"mode": "strict"},
                   "servers": {"fast": {"url": f"http://{HOST}:{up_port}/mcp"}}}
            cp = tmp / f"{name}.yaml"
            cp.write_text(json.dumps(cfg))
            code = (f"import sys; sys.path.insert(0, {root!r}); sys.argv=['mcpgw','ingress','-c',{str(cp)!r}]; "
                    f"{prelude or 'pass'}; import ingress as _i; print('CODE', _i.__file__, flush=True); "
                    "from mcpgw.cli import main; main()")
            p = procs.start(name, [sys.executable, "-c", code], tmp / f"{name}.log")
            gws[name] = (p, port)
        async with client_session() as http:
            for name, (p, port) in gws.items():
                await wait_ready(http, f"http://{HOST}:{port}", lambda p=p: p.poll() is None, 60)
                print(name, [ln for ln in (tmp / f"{name}.log").read_text().splitlines() if ln.startswith("CODE")])
            paths = {"direct": (f"http://{HOST}:{up_port}/mcp", None, "echo")}
            for ep in args.endpoint:
                path, tool = ENDPOINTS[ep]
                for name, (p, port) in gws.items():
                    paths[label(name, ep, args.endpoint)] = (f"http://{HOST}:{port}{path}", p.pid, tool)
            gens = {k: LoadGen(http, u, tool) for k, (u, _, tool) in paths.items()}
            if args.pin:
                for p, _port in gws.values():
                    pin(p.pid, {1})
                for pid in (up.pid, os.getpid(), broker_pid):
                    if pid is not None:
                        pin(pid, {0})
            for k in gens:
                for c in args.conc:
                    await gens[k].run(c, calls=300)
            if args.idle:
                # Background work (fetch loops, timers) is paid by every call: at 300 calls/s, 5% of
                # a CPU while idle is 0.17 ms per call.
                idle0 = {name: cpu_ms(p.pid) for name, (p, _port) in gws.items()}
                await asyncio.sleep(args.idle)
                for name, (p, _port) in gws.items():
                    rate = (cpu_ms(p.pid) - idle0[name]) / args.idle
                    print(f"  {name:10s} idle cpu {rate:.2f} ms/s ({rate / 10:.2f}% of a CPU)")
            res: dict[tuple[str, int], dict[str, list[float]]] = {}
            b0, t0 = busy_jiffies()
            keys = list(paths)
            for r in range(args.rounds):
                order = keys[r % len(keys):] + keys[: r % len(keys)]
                for c in args.conc:
                    for k in order:
                        pid = paths[k][1]
                        g0 = cpu_ms(pid) if pid else 0.0
                        k0 = cpu_ms(broker_pid) if broker_pid else 0.0
                        out = await gens[k].run(c, duration_s=args.seconds)
                        g1 = cpu_ms(pid) if pid else 0.0
                        k1 = cpu_ms(broker_pid) if broker_pid else 0.0
                        d = res.setdefault((k, c), {"p50": [], "cpu": [], "tp": [], "err": [], "broker": []})
                        d["p50"].append(percentile_ms(sorted(out.latencies_ns), 0.5))
                        d["cpu"].append((g1 - g0) / max(1, out.calls))
                        d["broker"].append((k1 - k0) / max(1, out.calls))
                        d["tp"].append(out.throughput)
                        d["err"].append(out.errors)
            b1, t1 = busy_jiffies()
            busy = (b1 - b0) / (t1 - t0) * 100
        names = [k for k in keys if k != "direct"]
        for c in args.conc:
            dp = res[("direct", c)]["p50"]
            direct_tp = statistics.median(res[("direct", c)]["tp"])
            print(f"c={c}: direct p50 {statistics.median(dp):.3f} ms, tp {direct_tp:.0f}/s")
            for name in names:
                d = res[(name, c)]
                deltas = [g - x for g, x in zip(d["p50"], dp, strict=True)]
                ratios = [g / x for g, x in zip(d["p50"], dp, strict=True)]
                print(f"  {name:10s} Δp50 {statistics.median(deltas):+.3f} ms ({statistics.median(ratios):.2f}x direct)"
                      f"  cpu {statistics.median(d['cpu']):.3f} ms/call [{min(d['cpu']):.3f}-{max(d['cpu']):.3f}]"
                      f"  tp {statistics.median(d['tp']):.0f}/s err {sum(d['err'])}"
                      + (f"  broker cpu {statistics.median(d['broker']):.3f} ms/call" if broker_pid else ""))
            variants = list(gws)
            for ep in args.endpoint:
                base = label(variants[0], ep, args.endpoint)
                for name in variants[1:]:
                    other = label(name, ep, args.endpoint)
                    rel = [b / a for a, b in zip(res[(base, c)]["cpu"], res[(other, c)]["cpu"], strict=True)]
                    print(f"  CPU {other}/{base} per round median {statistics.median(rel):.3f} "
                          f"{[round(x, 2) for x in rel]}")
        print(f"machine busy {busy:.0f}% (all processes); loadavg {loadavg()}")
    finally:
        procs.stop_all()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", action="append", required=True)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=1.5)
    ap.add_argument("--conc", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--data-parent", default=None)
    ap.add_argument("--pin", action="store_true")
    ap.add_argument("--idle", type=float, default=0.0,
                    help="first measure each gateway's CPU while idle for this many seconds (after warm-up)")
    ap.add_argument("--endpoint", nargs="+", choices=sorted(ENDPOINTS), default=["servers"],
                    help="servers: /servers/fast/mcp (tool echo); mcp: the aggregated /mcp (tool fast__echo)")
    parsed = ap.parse_args()
    parsed.variant = [absolute_tree(spec) for spec in parsed.variant]
    import uvloop
    uvloop.run(main(parsed))
