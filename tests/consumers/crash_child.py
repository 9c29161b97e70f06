"""A consumer process for test_crash.py: the audit consumer from an embedded log into chDB.

    python -m tests.consumers.crash_child LOG_DIR STORE_DIR MAX_ROWS EXPECTED [DIE_AFTER_INSERT]

Prints "inserted committed" whenever they change, and stops (flush + commit) once EXPECTED records
are committed. With DIE_AFTER_INSERT=k it SIGKILLs itself right after the k-th audit.events insert
returned, before that batch's commit: the worst moment to die.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from consumers.audit import AuditConsumer, AuditSettings
from consumers.store.base import EVENTS_TABLE, AuditStore, QueryResult
from eventlog.base import TOPIC_EVENTS
from eventlog.embedded import EmbeddedLog
from tests.consumers.conftest import chdb_store_factory


class DyingStore:
    def __init__(self, store: AuditStore, die_after: int) -> None:
        self._store = store
        self._left = die_after

    async def open(self) -> None:
        await self._store.open()

    async def close(self) -> None:
        await self._store.close()

    async def execute_admin(self, sql: str) -> None:
        await self._store.execute_admin(sql)

    async def query(self, sql: str, parameters: Mapping[str, Any] | None = None) -> QueryResult:
        return await self._store.query(sql, parameters)

    async def insert(self, table: str, rows: Sequence[Mapping[str, Any]], dedup_token: str) -> None:
        await self._store.insert(table, rows, dedup_token)
        if table == EVENTS_TABLE:
            self._left -= 1
            if self._left == 0:
                print(f"dying after {dedup_token}", flush=True)
                os.kill(os.getpid(), signal.SIGKILL)


async def main(log_dir: Path, store_dir: Path, max_rows: int, expected: int, die_after: int) -> None:
    factory, reason = chdb_store_factory()
    if factory is None:
        raise SystemExit(reason)
    store: AuditStore = factory(store_dir)
    if die_after:
        store = DyingStore(store, die_after)
    await store.open()
    async with EmbeddedLog(log_dir) as log:
        consumer = log.consumer("audit", [TOPIC_EVENTS])
        audit = AuditConsumer(consumer, store, log.producer(), AuditSettings(max_rows=max_rows, max_wait_s=0.05))
        stop = asyncio.Event()
        task = asyncio.create_task(audit.run(stop))
        shown = (-1, -1)
        while not task.done():
            now = (audit.metrics.inserted, sum(audit.metrics.committed.values()))
            if now != shown:
                print(*now, flush=True)
                shown = now
            if now[1] >= expected:
                stop.set()
            await asyncio.sleep(0.002)
        await task
        await consumer.close()
    await store.close()
    print("done", flush=True)


if __name__ == "__main__":
    args = sys.argv[1:]
    asyncio.run(main(Path(args[0]), Path(args[1]), int(args[2]), int(args[3]), int(args[4]) if len(args) > 4 else 0))
