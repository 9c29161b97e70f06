"""The floors under a gateway call, from the same run: a bare relay's hop and the log's durable write.

`bench.run` measures them beside the gateway: the bare relay (`bench/relay.py`) as one more
interleaved path, and after every c=1 round the disk's write+fdatasync (`bench/disk_floor.py`, on the
embedded log) or the broker's acknowledged produce (`bench/produce_floor.py`, on Kafka). A strict
call at c=1 cannot beat one proxy hop plus two durable writes in series, so each gateway path's
Δp50 beyond that floor is what the gateway's own work adds. Pure: numbers in, numbers and report
lines out.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from bench.disk_floor import FloorSample

RELAY = "relay"
DIRECT = "direct"


def _sum(values: Sequence[int | None]) -> int | None:
    return None if not values or any(v is None for v in values) else sum(v for v in values if v is not None)


def _per(count: int | None, syncs: int) -> float | None:
    return count / syncs if count is not None and syncs else None


def call_floor(durable_ms: Sequence[float], round_p50s: Mapping[str, Sequence[float]]) -> dict[str, Any]:
    """The floor of a strict c=1 call per round (the relay's Δp50 + two durable appends of
    `durable_ms`), and each gateway path's Δp50 beyond it (median over rounds). `round_p50s`: each
    path's c=1 p50 per round."""
    direct = round_p50s[DIRECT]
    relay = round_p50s.get(RELAY, direct)  # without a relay path, the hop's floor is taken as zero
    floor = [(r - d) + 2 * f for r, d, f in zip(relay, direct, durable_ms, strict=False)]
    beyond: dict[str, float] = {}
    for key, p50s in round_p50s.items():
        if key not in (DIRECT, RELAY):
            beyond[key] = statistics.median([g - d - c for g, d, c in zip(p50s, direct, floor, strict=False)])
    return {
        "per_round_ms": list(durable_ms),
        "median_ms": statistics.median(durable_ms),
        "call_floor_ms": statistics.median(floor) if floor else None,
        "relay_in_floor": RELAY in round_p50s,
        "beyond_floor_ms": beyond,
    }


def disk_floor(floors: Sequence[FloorSample], round_p50s: Mapping[str, Sequence[float]]) -> dict[str, Any]:
    """`call_floor` on the disk's write+fdatasync, with the device's I/Os per sync."""
    syncs = sum(f.syncs for f in floors)
    writes, flushes = _sum([f.writes for f in floors]), _sum([f.flushes for f in floors])
    return {
        **call_floor([f.median_ms for f in floors], round_p50s),
        "syncs": syncs,
        "device_writes": writes,
        "device_flushes": flushes,
        "writes_per_sync": _per(writes, syncs),
        "flushes_per_sync": _per(flushes, syncs),
        "idle_writes": _sum([f.idle_writes for f in floors]),
        "writes_per_bare_sync": _per(_sum([f.bare_writes for f in floors]), sum(f.bare_syncs for f in floors)),
    }


def _f(value: float | None, digits: int = 2, sign: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def relay_line(cells: Sequence[Mapping[str, Any]]) -> list[str]:
    """The bare relay's Δp50 and CPU per call, at each concurrency."""
    relay = sorted((c for c in cells if c["target"] == RELAY), key=lambda c: int(c["concurrency"]))
    if not relay:
        return []
    at = [
        f"{_f(c.get('p50_delta_paired_median_ms'), 3, True)} ms at c={c['concurrency']}"
        + (f" (CPU {c['gateway_cpu_ms_per_call']:.3f} ms per call)" if c.get("gateway_cpu_ms_per_call") else "")
        for c in relay
    ]
    return [
        f"- A bare relay (`bench/relay.py`: a TCP byte pipe on uvloop, no parsing) adds **{at[0]}** "
        f"(the floor of any proxy hop on this host){', ' + ', '.join(at[1:]) if at[1:] else ''}."
    ]


def _floor_tail(floor: Mapping[str, Any], labels: Mapping[str, str], what: str) -> str:
    beyond = ", ".join(f"{labels[k].split(' (')[0]} {_f(v, 2, True)} ms" for k, v in floor["beyond_floor_ms"].items())
    relay = "the bare relay's Δp50 + " if floor["relay_in_floor"] else ""
    return (
        f"Floor of a strict c=1 call = {relay}twice {what} (per round, median): "
        f"**{_f(floor['call_floor_ms'], 2, True)} ms**; each path's Δp50 beyond it: {beyond}."
    )


def disk_floor_line(floor: Mapping[str, Any], labels: Mapping[str, str]) -> list[str]:
    rounds = ", ".join(f"{f:.2f}" for f in floor["per_round_ms"])
    device = (
        f"device writes per write+fdatasync: **{_f(floor['writes_per_sync'])}**, flushes "
        f"**{_f(floor['flushes_per_sync'])}** ({floor['syncs']} syncs"
    )
    bare = floor.get("writes_per_bare_sync")
    if bare is not None and floor["writes_per_sync"] is not None:
        device += (
            f"; a bare fdatasync with nothing dirty counts {bare:.2f} writes, the cache flush's own, so "
            f"{floor['writes_per_sync'] - bare:.2f} are the data and the file's metadata"
        )
    idle = floor.get("idle_writes")
    device += f"; {idle} writes by other processes in equally long idle windows)" if idle else ")"
    return [
        f"- The disk's floor, measured after every c=1 round on the same filesystem (`bench/disk_floor.py`: "
        f"one hop's 1.6 KB written into preallocated space + fdatasync, 100 times, 1 ms apart): median "
        f"**{floor['median_ms']:.3f} ms** (rounds: {rounds}); {device}. "
        + _floor_tail(floor, labels, "the disk's floor")
    ]


def produce_floor_line(floor: Mapping[str, Any], labels: Mapping[str, str]) -> list[str]:
    rounds = ", ".join(f"{f:.2f}" for f in floor["per_round_ms"])
    return [
        f"- The broker's floor, measured after every c=1 round on the same broker (`bench/produce_floor.py`: "
        f"the project's producer with the gateway's settings appending one hop's two 800-byte records, acks=all, "
        f"100 times, 1 ms apart; includes the client's own encoding): median **{floor['median_ms']:.3f} ms** "
        f"(rounds: {rounds}). " + _floor_tail(floor, labels, "that round trip")
    ]
