"""Summarize a py-spy `--format raw` profile (collapsed stacks): where the samples go.

    py-spy record --pid PID -r 500 -d 20 -f raw -o /tmp/gw.txt
    python -m bench.profile_summary /tmp/gw.txt --top 30 [--calls N]

Prints the hottest functions by self samples (the frame on top of the stack) and by inclusive
samples (anywhere on the stack, counted once per stack), and self samples grouped by area
(the gateway's own packages, aiohttp server/client, asyncio, stdlib). With `--calls` (the number
of calls made while sampling) and `--cpu-ms` (the process CPU over the same window) it also
turns shares into CPU microseconds per call.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]*)(?::(?P<line>\d+))?\)$")

AREAS: tuple[tuple[str, str], ...] = (
    ("ingress/recorder.py", "gateway: recorder (audit events)"),
    ("schemas/", "gateway: event model"),
    ("ingress/sink.py", "gateway: memory sink"),
    ("ingress/log_sink.py", "gateway: durable sink (chain, hand-over)"),
    ("ingress/chain.py", "gateway: durable sink (chain, hand-over)"),
    ("eventlog/", "event log (writer, flush thread, Kafka producer)"),
    ("aiokafka/", "event log (writer, flush thread, Kafka producer)"),
    ("(<string>", "generated code (dataclass __init__, Avro writer)"),
    ("ingress/http/", "gateway: agent-side HTTP endpoint"),
    ("ingress/upstreams/", "gateway: upstream connector"),
    ("ingress/", "gateway: dispatch, eras, jsonrpc, catalog"),
    ("aiohttp/web", "aiohttp server"),
    ("aiohttp/_http", "aiohttp parser/writer"),
    ("aiohttp/http", "aiohttp parser/writer"),
    ("aiohttp/client", "aiohttp client"),
    ("aiohttp/connector", "aiohttp client"),
    ("aiohttp/", "aiohttp other"),
    ("multidict", "multidict/yarl"),
    ("yarl", "multidict/yarl"),
    ("asyncio/", "asyncio (timeouts, tasks, locks)"),
    ("uvloop", "uvloop"),
    ("hashlib", "hashlib"),
    ("uuid", "uuid"),
)


def parse(path: Path) -> list[tuple[list[str], int]]:
    stacks: list[tuple[list[str], int]] = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        stacks.append((stack.split(";"), int(count)))
    return stacks


def short(frame: str) -> str:
    m = _FRAME.match(frame)
    if not m:
        return frame
    file = m.group("file")
    for marker in ("site-packages/", "lib/python3.11/", "/work/main/"):
        if marker in file:
            file = file.split(marker, 1)[1]
    return f"{m.group('func')} ({file})"


def area_of(frame: str) -> str:
    for prefix, name in AREAS:
        if prefix in frame:
            return name
    return "other (event loop, stdlib)"


def summarize(stacks: list[tuple[list[str], int]], top: int, calls: int | None, cpu_ms: float | None) -> str:
    total = sum(n for _, n in stacks)
    self_counts: Counter[str] = Counter()
    incl_counts: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    for frames, n in stacks:
        names = [short(f) for f in frames]
        self_counts[names[-1]] += n
        areas[area_of(frames[-1])] += n
        for name in set(names):
            incl_counts[name] += n
    us_per_sample = cpu_ms * 1000 / calls / total if calls and cpu_ms and total else None

    def row(name: str, n: int) -> str:
        cost = f" | {n * us_per_sample:6.1f}" if us_per_sample is not None else ""
        return f"| {100 * n / total:5.1f}% | {n:6d}{cost} | `{name}` |"

    head = "| share | samples | µs/call | function |" if us_per_sample else "| share | samples | function |"
    rule = "|---:|---:|---:|---|" if us_per_sample else "|---:|---:|---|"
    out = [f"samples: {total}" + (f", calls: {calls}, CPU: {cpu_ms:.0f} ms" if calls and cpu_ms else ""), ""]
    out += ["### Self time by area", "", head, rule]
    out += [row(name, n) for name, n in areas.most_common()]
    out += ["", f"### Self time, top {top}", "", head, rule]
    out += [row(name, n) for name, n in self_counts.most_common(top)]
    out += ["", f"### Inclusive time, top {top}", "", head, rule]
    out += [row(name, n) for name, n in incl_counts.most_common(top)]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.profile_summary", description=__doc__.split("\n")[0]
    )
    parser.add_argument("profile", type=Path, help="py-spy --format raw output")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--calls", type=int, help="calls made while sampling")
    parser.add_argument("--cpu-ms", type=float, help="the process's CPU milliseconds while sampling")
    args = parser.parse_args(argv)
    print(summarize(parse(args.profile), args.top, args.calls, args.cpu_ms))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
