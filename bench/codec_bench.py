"""Event codec throughput on one core: GatewayEvent ⇄ Avro single-object bytes, ~1 KB events.

    python -m bench.codec_bench                 # 5 rounds of 20,000 events each way
    python -m bench.codec_bench --events 50000 --rounds 3 --check   # exit 3 below the goal

Goal (issue): ≥ 30,000 events/s encode and ≥ 30,000 events/s decode. Also prints, for scale,
`canonical_event_bytes` + SHA-256 (the per-event chain hash) and `prepare_payload` (redaction +
hash) of the same message. Figures are events per second of CPU time (process_time, which other
processes on a shared machine do not inflate), with wall-clock figures beside them; the best
round counts, as in `timeit`, because slower rounds measure interference, not the code.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable

import fastavro

from schemas.codec import EventCodec, event_hash
from schemas.events import Direction, EventType, GatewayEvent, Kind, new_event_id
from schemas.payload import prepare_payload

GOAL = 30_000


def sample_event() -> GatewayEvent:
    """A tools/call request event whose encoding is about 1 KB, with every common field set."""
    body = {
        "jsonrpc": "2.0", "id": 4711, "method": "tools/call",
        "params": {"name": "notes__search", "arguments": {"query": "quarterly revenue by region " * 12, "limit": 20},
                   "_meta": {"progressToken": 4711}},
    }  # fmt: skip
    raw = json.dumps(body, separators=(",", ":")).encode()
    event = GatewayEvent(
        EventType.AGENT_MESSAGE_RECEIVED, Kind.REQUEST, Direction.AGENT_TO_GATEWAY, event_id=new_event_id(),
        ts_us=time.time_ns() // 1000, stream_id="0f5e7d2a9c4b4e21a3d8b6c1e0f9a7b5", seq=123_456,
        prev_hash="7eab3b36c1aacc5b00dfe320a28c380e4f358a6107983b55797b999f86c8d1b9",
        hash="942ee808205095e9af3027321362fbe780811d4bb70812acb96a703c6c0d99a4", gateway_instance="gw-1:5f3a9c2e",
        protocol_era="legacy", protocol_version="2025-11-25", transport="streamable_http",
        session_id="3c8e1f0b6a7d4c29b5e2a1f8d7c6b4a3", tenant="acme", principal="research-agent",
        on_behalf_of="alice@acme.example", client_addr="10.0.4.17", server="notes", jsonrpc_id="4711",
        method="tools/call", tool="notes__search", latency_us=1_234, trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
        span_id="00f067aa0ba902b7",
    )
    prepare_payload(raw).apply_to(event)
    return event


def measure(label: str, fn: Callable[[], object], events: int, rounds: int) -> dict[str, float]:
    fn()  # warm-up: caches, first-call parsing
    cpu, wall = [], []
    for _ in range(rounds):
        c0, w0 = time.process_time(), time.perf_counter()
        for _ in range(events):
            fn()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    result = {
        "cpu_events_per_s": events / min(cpu),
        "wall_events_per_s": events / min(wall),
        "median_cpu_events_per_s": events / statistics.median(cpu),
        "us_per_event": min(cpu) / events * 1e6,
    }
    print(
        f"{label:28s} {result['cpu_events_per_s']:>9,.0f} ev/s CPU  {result['us_per_event']:6.1f} µs/ev"
        f"   (wall {result['wall_events_per_s']:>9,.0f} ev/s; median round {result['median_cpu_events_per_s']:>9,.0f})"
    )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--check", action="store_true", help="exit 3 when encode or decode misses the goal")
    args = parser.parse_args(argv)

    event = sample_event()
    codec = EventCodec()
    data = codec.encode(event)
    assert codec.decode(data) == event
    raw = event.payload
    print(f"python {platform.python_version()}, fastavro {fastavro.__version__}, {platform.machine()}; "
          f"event {len(data)} B encoded (payload {len(raw)} B); {args.rounds} rounds x {args.events:,} events")
    encode = measure("encode GatewayEvent", lambda: codec.encode(event), args.events, args.rounds)
    decode = measure("decode GatewayEvent", lambda: codec.decode(data), args.events, args.rounds)
    measure("chain hash (canonical+sha)", lambda: event_hash(event), args.events, args.rounds)
    measure("prepare_payload (clean)", lambda: prepare_payload(raw), args.events, args.rounds)
    ok = encode["cpu_events_per_s"] >= GOAL and decode["cpu_events_per_s"] >= GOAL
    print(f"goal >= {GOAL:,} events/s each way: {'met' if ok else 'MISSED'}")
    return 0 if ok or not args.check else 3


if __name__ == "__main__":
    sys.exit(main())
