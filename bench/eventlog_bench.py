"""Micro benchmark of the embedded event log's group commit (not a test).

    python -m bench.eventlog_bench [--seconds 3] [--concurrency 1 16 64] [--size 1024] [--dir PATH]

For each concurrency, that many tasks append `size`-byte records in a loop to a fresh log for
`seconds`; reports appends/s, fsyncs/s, records per fsync and append latency percentiles. A first
row measures the disk itself: a 1 KB write + fdatasync in a loop, with no log around it.
Put `--dir` on the disk the gateway's data_dir uses; /tmp may be tmpfs elsewhere.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from eventlog.embedded import EmbeddedLog


@dataclass
class Row:
    name: str
    appends: int
    seconds: float
    fsyncs: int
    latencies_ns: list[int]

    def cells(self) -> list[str]:
        lat = sorted(self.latencies_ns)

        def pct(p: float) -> str:
            return f"{lat[min(len(lat) - 1, int(p * len(lat)))] / 1e6:.3f}" if lat else "-"

        return [
            self.name,
            f"{self.appends / self.seconds:,.0f}",
            f"{self.fsyncs / self.seconds:,.0f}",
            f"{self.appends / max(self.fsyncs, 1):.1f}",
            pct(0.50),
            pct(0.99),
            f"{lat[-1] / 1e6:.3f}" if lat else "-",
            f"{statistics.fmean(lat) / 1e6:.3f}" if lat else "-",
        ]


def raw_fsync(directory: Path, seconds: float, size: int) -> Row:
    path = directory / "raw.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    payload = os.urandom(size)
    sync = getattr(os, "fdatasync", os.fsync)
    latencies: list[int] = []
    start = time.perf_counter()
    try:
        while time.perf_counter() - start < seconds:
            t0 = time.perf_counter_ns()
            os.write(fd, payload)
            sync(fd)
            latencies.append(time.perf_counter_ns() - t0)
    finally:
        os.close(fd)
        path.unlink()
    return Row("disk: write+fdatasync", len(latencies), time.perf_counter() - start, len(latencies), latencies)


async def run_log(directory: Path, concurrency: int, seconds: float, size: int) -> Row:
    payload = os.urandom(size)
    async with EmbeddedLog(directory / f"c{concurrency}") as log:
        producer = log.producer()
        await producer.append("bench", b"warmup", payload)  # topic creation outside the measurement
        latencies: list[int] = []
        base_fsyncs = log.stats.fsyncs
        stop = time.perf_counter() + seconds

        async def appender(n: int) -> None:
            key = f"session-{n}".encode()
            while time.perf_counter() < stop:
                t0 = time.perf_counter_ns()
                await producer.append("bench", key, payload)
                latencies.append(time.perf_counter_ns() - t0)

        start = time.perf_counter()
        await asyncio.gather(*(appender(n) for n in range(concurrency)))
        elapsed = time.perf_counter() - start
        return Row(f"log: {concurrency} appenders", len(latencies), elapsed, log.stats.fsyncs - base_fsyncs, latencies)


async def read_back(directory: Path, concurrency: int) -> str:
    """Sequential consumption of what one run appended, from the page cache: poll(500) in a loop."""
    async with EmbeddedLog(directory / f"c{concurrency}") as log:
        consumer = log.consumer("bench", ["bench"])
        await consumer.start()
        n = 0
        start = time.perf_counter()
        while batch := await consumer.poll(500, 0.0):
            n += len(batch)
        elapsed = time.perf_counter() - start
        await consumer.close()
    return f"consumer: {n:,} records read at {n / elapsed:,.0f} records/s"


def table(rows: list[Row]) -> str:
    head = ["run", "appends/s", "fsyncs/s", "records/fsync", "p50 ms", "p99 ms", "max ms", "mean ms"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r.cells()) + " |" for r in rows]
    return "\n".join(lines)


async def main_async(args: argparse.Namespace, directory: Path) -> list[Row]:
    rows = [raw_fsync(directory, min(args.seconds, 2.0), args.size)]
    for c in args.concurrency:
        rows.append(await run_log(directory, c, args.seconds, args.size))
    print(await read_back(directory, args.concurrency[-1]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--size", type=int, default=1024, help="value bytes per record")
    parser.add_argument("--dir", type=Path, default=None, help="where the temporary logs go")
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    args = parser.parse_args()
    if args.loop == "uvloop":
        import uvloop

        uvloop.install()
    with tempfile.TemporaryDirectory(prefix="eventlog-bench-", dir=args.dir) as tmp:
        rows = asyncio.run(main_async(args, Path(tmp)))
    print(f"embedded event log, {args.size} B values, {args.seconds:g} s per run, {args.loop} loop, dir={tmp}")
    print(table(rows))


if __name__ == "__main__":
    main()
