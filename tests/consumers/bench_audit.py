"""Throughput of one audit consumer process: embedded log → decode → batch → insert → commit.

    python -m tests.consumers.bench_audit [EVENTS] [MAX_ROWS]

Runs the same pre-filled log twice: into the in-memory fake (the chain's own cost: poll, Avro
decode, rows, batching, commits) and into chDB through the store's backend, when it is there.
Events carry a ~600-byte payload, about what a tools/call request with arguments is.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

from consumers.audit import AuditConsumer, AuditRows, AuditSettings
from consumers.store.base import AuditStore
from eventlog.base import TOPIC_EVENTS
from eventlog.embedded import EmbeddedLog
from tests.consumers.conftest import chdb_store_factory
from tests.consumers.support import MemoryStore, append_events, make_events, simple_rows


async def one_run(log_dir: Path, store: AuditStore, rows: AuditRows | None, group: str, max_rows: int, n: int) -> float:
    async with EmbeddedLog(log_dir) as log:
        consumer = log.consumer(group, [TOPIC_EVENTS])
        audit = AuditConsumer(
            consumer, store, log.producer(), AuditSettings(max_rows=max_rows, max_wait_s=0.2), rows=rows
        )
        stop = asyncio.Event()
        started = time.perf_counter()
        task = asyncio.create_task(audit.run(stop))
        while sum(audit.metrics.committed.values()) < n:
            if task.done():
                await task
            await asyncio.sleep(0.001)
        elapsed = time.perf_counter() - started
        stop.set()
        await task
        await consumer.close()
    return elapsed


async def main(n: int, max_rows: int) -> None:
    with tempfile.TemporaryDirectory(prefix="mcpgw-bench-") as tmp:
        log_dir = Path(tmp) / "log"
        events = make_events(n, sessions=64, checkpoint_every=1000)
        for e in events:
            e.payload = e.payload + b" " * 560
        async with EmbeddedLog(log_dir, partitions=1) as log:
            for i in range(0, n, 5000):
                await append_events(log.producer(), events[i : i + 5000])
        elapsed = await one_run(log_dir, MemoryStore(), simple_rows(), "bench-memory", max_rows, n)
        print(f"in-memory fake: {n} events in {elapsed:.2f}s = {n / elapsed:,.0f} events/s (max_rows={max_rows})")
        factory, reason = chdb_store_factory()
        if factory is None:
            print(f"chDB: skipped ({reason})")
            return
        store = factory(Path(tmp) / "store")
        await store.open()
        try:
            elapsed = await one_run(log_dir, store, None, "bench-chdb", max_rows, n)
        finally:
            await store.close()
        print(f"chDB:           {n} events in {elapsed:.2f}s = {n / elapsed:,.0f} events/s (max_rows={max_rows})")


if __name__ == "__main__":
    asyncio.run(
        main(int(sys.argv[1]) if len(sys.argv) > 1 else 50_000, int(sys.argv[2]) if len(sys.argv) > 2 else 1000)
    )
