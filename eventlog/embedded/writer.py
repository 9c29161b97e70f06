"""Group commit: every append queued while a flush is under way shares the next write and fsync.

One flusher task takes everything queued (up to `max_flush_bytes`), assigns offsets, frames the
records, and hands the writes plus one fdatasync per touched partition file to a dedicated thread,
so the event loop keeps taking appends meanwhile; those form the next flush. Waiters are resolved
only after the fsync returned, and readers see a record only then.

Failure is fail-closed: every waiter of a failed flush gets `LogUnavailable`. A failed *write*
(e.g. disk full) is rolled back by truncating the files to their pre-flush size, after which the
log keeps working. A failed *fsync* leaves the kernel's page cache in an unknown state (Linux marks
the dirty pages clean after reporting the error), so the log stops taking appends until it is
closed and reopened, which revalidates the files; retrying the fsync would report success for data
that may never reach the disk. The failed flush's records are truncated away on a best-effort basis:
if that fails too, they may be found after the reopen. The error is thus one-sided, as audit needs:
a record reported failed may exist (the caller's retry makes a duplicate), a record reported durable
always exists.

Each partition a flush touches costs one fsync, done one after another: on one machine a single
partition (the default) is the fast choice, and per-key order needs no more.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from eventlog.base import LogError, LogUnavailable
from eventlog.embedded.config import LogLimits
from eventlog.embedded.partition import PartitionLog
from eventlog.embedded.segment import OVERHEAD, encode

log = logging.getLogger("mcpgw.eventlog.embedded")

# Module-level so tests can substitute a failing or counting sync. fdatasync suffices for appends:
# it flushes the metadata needed to read the data back (the file size), skipping mtime.
_sync: Callable[[int], None] = getattr(os, "fdatasync", os.fsync)
_write: Callable[[int, memoryview], int] = os.write

Entry = tuple[PartitionLog, bytes | None, bytes]


@dataclass(slots=True)
class LogStats:
    """Counters for tests, benchmarks and metrics; `fsyncs / records` is the group-commit ratio."""

    flushes: int = 0
    fsyncs: int = 0
    records: int = 0
    bytes: int = 0
    failed_flushes: int = 0


@dataclass(slots=True, eq=False)
class _Append:
    entries: Sequence[Entry]
    timestamp_ms: int
    nbytes: int
    done: asyncio.Future[None]


class _FlushFailed(Exception):
    def __init__(self, phase: str, cause: OSError, recovered: bool) -> None:
        super().__init__(f"{phase} failed: {cause}")
        self.phase = phase
        self.recovered = recovered


class GroupCommitWriter:
    def __init__(self, limits: LogLimits, on_durable: Callable[[], None]) -> None:
        self.stats = LogStats()
        self._limits = limits
        self._on_durable = on_durable
        self._queue: deque[_Append] = deque()
        self._pending_records = 0
        self._pending_bytes = 0
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="eventlog-flush")
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.failed: str | None = None  # set once an fsync failed: appends refused until reopened

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="eventlog-flusher")

    async def close(self) -> None:
        """Flush what is queued, then stop; appends arriving after this call are refused."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
        self._executor.shutdown(wait=True)

    async def append(self, entries: Sequence[Entry]) -> None:
        if self._closing:
            raise LogUnavailable("event log is closed")
        if self.failed is not None:
            raise LogUnavailable(f"event log stopped after a failed fsync ({self.failed}); reopen it")
        limits = self._limits
        nbytes = 0
        for _, key, value in entries:
            size = OVERHEAD + len(value) + (len(key) if key else 0)
            if size > limits.max_record_bytes:
                raise LogError(f"record of {size} bytes exceeds max_record_bytes={limits.max_record_bytes}")
            nbytes += size
        if self._pending_records and (
            self._pending_records + len(entries) > limits.max_pending_records
            or self._pending_bytes + nbytes > limits.max_pending_bytes
        ):
            raise LogUnavailable(
                f"log full: {self._pending_records} records / {self._pending_bytes} bytes await the disk"
            )
        done = asyncio.get_running_loop().create_future()
        self._queue.append(_Append(entries, time.time_ns() // 1_000_000, nbytes, done))
        self._pending_records += len(entries)
        self._pending_bytes += nbytes
        self._wakeup.set()
        # A cancelled caller does not withdraw its record: it may already be on its way to the disk.
        await done

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                batch = self._take()
                try:
                    await self._flush(batch)
                except Exception as exc:  # a bug here must not leave appends waiting forever
                    log.exception("event log: flush crashed")
                    self.failed = f"flush crashed: {exc!r}"
                    self._fail(batch, LogUnavailable(f"event log {self.failed}"))
                finally:
                    for app in batch:
                        self._pending_records -= len(app.entries)
                        self._pending_bytes -= app.nbytes
            if self._closing:
                return

    def _take(self) -> list[_Append]:
        batch = [self._queue.popleft()]
        size = batch[0].nbytes
        while self._queue and size + self._queue[0].nbytes <= self._limits.max_flush_bytes:
            app = self._queue.popleft()
            size += app.nbytes
            batch.append(app)
        return batch

    async def _flush(self, batch: list[_Append]) -> None:
        if self.failed is not None:
            self._fail(batch, LogUnavailable(f"event log stopped after a failed fsync ({self.failed}); reopen it"))
            return
        loop = asyncio.get_running_loop()
        touched = list(dict.fromkeys(p for app in batch for p, _, _ in app.entries))
        try:
            for p in touched:
                if p.needs_roll():
                    # Roll only between flushes: the old segment is then wholly fsync'd, so recovery
                    # only ever has to validate the last segment's tail.
                    fd = await loop.run_in_executor(self._executor, p.create_segment_file, p.high_watermark)
                    p.rolled(fd, p.high_watermark)
        except OSError as exc:
            self.stats.failed_flushes += 1
            log.error("event log: creating a segment failed: %s; %d appends fail", exc, len(batch))
            self._fail(batch, LogUnavailable(f"event log cannot create a segment: {exc}"))
            return
        chunks: dict[PartitionLog, list[bytes]] = {p: [] for p in touched}
        next_offset = {p: p.high_watermark for p in touched}
        for app in batch:
            for p, key, value in app.entries:
                chunks[p].append(encode(next_offset[p], app.timestamp_ms, p.active.size, key, value))
                next_offset[p] += 1
        jobs = [(p.fd, b"".join(chunks[p]), p.active.size) for p in touched]
        try:
            await loop.run_in_executor(self._executor, _write_and_sync, jobs)
        except _FlushFailed as exc:
            self.stats.failed_flushes += 1
            if not exc.recovered:
                self.failed = str(exc)
            log.error(
                "event log: %s; %d appends fail%s", exc, len(batch),
                "" if exc.recovered else "; no further appends until the log is reopened",
            )
            self._fail(batch, LogUnavailable(f"event log {exc}"))
            return
        for p, (_, blob, start) in zip(touched, jobs, strict=True):
            p.active.index.add(p.high_watermark, start)
            p.active.size = start + len(blob)
            p.high_watermark = next_offset[p]
            self.stats.bytes += len(blob)
        self.stats.flushes += 1
        self.stats.fsyncs += len(jobs)
        for app in batch:
            self.stats.records += len(app.entries)
            if not app.done.done():
                app.done.set_result(None)
        self._on_durable()

    @staticmethod
    def _fail(batch: list[_Append], error: LogUnavailable) -> None:
        for app in batch:
            if not app.done.done():
                app.done.set_exception(error)
                app.done.exception()  # a cancelled caller never retrieves it; keep asyncio quiet


def _write_and_sync(jobs: list[tuple[int | None, bytes, int]]) -> None:
    """Flush thread: append each blob, then fsync each file; on error undo every append."""
    phase = "write"
    try:
        for fd, blob, _ in jobs:
            assert fd is not None, "partition not open for appending"
            view = memoryview(blob)
            while view:
                view = view[_write(fd, view) :]
        phase = "fsync"
        for fd, _, _ in jobs:
            assert fd is not None
            _sync(fd)
    except OSError as exc:
        recovered = phase == "write"
        for fd, _, start in jobs:
            try:
                assert fd is not None
                os.ftruncate(fd, start)
                _sync(fd)
            except OSError:
                recovered = False
        raise _FlushFailed(phase, exc, recovered) from exc
