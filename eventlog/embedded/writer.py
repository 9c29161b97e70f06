"""Group commit: every append queued while a flush is under way shares the next write and fsync.

The writer takes everything queued (up to `max_flush_bytes`), assigns offsets, frames the records,
and writes them plus one fdatasync per touched partition file. Appenders are settled only after
the fsync returned, and readers see a record only then.

Where the write+fsync runs (`LogLimits.inline_flush_max_s`): on the loop thread itself while the
disk is fast, else on the writer's own flush thread. Inline, the appends arriving during the fsync
wait in the sockets and join the next flush, started two loop passes after this one ends; the flush
costs no thread hand-off, which on a busy loop means waiting for the GIL, and was measured at about
as much CPU as the fsync itself. On the thread, the loop keeps taking appends meanwhile; a flush
whose write+fsync took longer than the bound sends the next ones there, and a fast one brings them
back, so a stalling disk blocks the loop for one flush, not for each.

The loop side is plain callbacks, not a task: an append schedules the flush (two loop passes
later, so appends made in the same pass and the next share it: see `_gather`); the flush runs
there or goes to the thread, which hands the outcome back with `call_soon_threadsafe`; then the
appenders are settled and the next flush scheduled. One exception: an append that finds the
writer idle when the last two flushes each carried a single append (one caller at a time, as at
concurrency 1: there is nobody to group with) is flushed inline at once, inside `submit`, and
settled before `submit` returns, so its caller finds its future done and does not sleep: that
saves the loop passes before the flush and the one resuming the caller. A lone append after a
shared flush is scheduled as above: under load a quiet moment is short, and flushing alone the
first append after it cost a flush for one append (15% of the flushes at concurrency 16; gathered
instead: 5.4 -> 5.9 appends per flush, 4-6% less gateway CPU per call). Two lone flushes in a row
rather than one, and no test of how long the writer has been idle: at concurrency 1 a call's
second append comes an upstream round trip after its first flush, often sooner than a flush
takes, and "idle for longer than the last flush took" sent 8-47% of those appends (by the host's
load) through the gathering passes for nobody to gather; one lone flush alone let 2-3 times as many
appends at concurrency 16 be flushed alone.

Failure is fail-closed: every appender of a failed flush gets `LogUnavailable`. A failed *write*
(e.g. disk full) is rolled back by truncating the files to their pre-flush size, after which the
log keeps working. A failed *fsync* leaves the kernel's page cache in an unknown state (Linux marks
the dirty pages clean after reporting the error), so the log stops taking appends until it is
closed and reopened, which revalidates the files; retrying the fsync would report success for data
that may never reach the disk. The failed flush's records are truncated away on a best-effort basis:
if that fails too, they may be found after the reopen. The error is thus one-sided, as audit needs:
a record reported failed may exist (the caller's retry makes a duplicate), a record reported durable
always exists.

Appends go into preallocated zeros (see partition.py): when a flush would write past them, the same
flush first writes the next `PREALLOCATE_BYTES` of zeros after its records, so one in so many flushes
pays for the file-size change in its fdatasync and the others flush data only. The file I/O itself
(write, fsync, rollback, the flush thread) is in flush_io.py; this module decides what to flush,
when and where, and applies the outcome.

Each partition a flush touches costs one fsync, done one after another: on one machine a single
partition (the default) is the fast choice, and per-key order needs no more.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from eventlog.base import LogError, LogUnavailable, settle_future
from eventlog.embedded.config import LogLimits
from eventlog.embedded.flush_io import FlushFailed, FlushThread, Job, create_segments, job, write_and_sync
from eventlog.embedded.partition import PartitionLog
from eventlog.embedded.segment import OVERHEAD, encode

log = logging.getLogger("mcpgw.eventlog.embedded")

Entry = tuple[PartitionLog, bytes | None, bytes]
# Called once per append, on the loop thread: None when its records are durable, else why not.
Settle = Callable[[LogError | None], None]


@dataclass(slots=True)
class LogStats:
    """Counters for tests, benchmarks and metrics; `fsyncs / records` is the group-commit ratio."""

    flushes: int = 0
    fsyncs: int = 0
    records: int = 0
    bytes: int = 0
    failed_flushes: int = 0
    thread_flushes: int = 0  # write+fsyncs run on the flush thread (the disk was slow), not on the loop


@dataclass(slots=True, eq=False)
class _Append:
    entries: Sequence[Entry]
    partition: PartitionLog | None  # the one partition of all the entries, else None
    timestamp_ms: int
    nbytes: int
    settle: Settle


class GroupCommitWriter:
    def __init__(self, limits: LogLimits, on_durable: Callable[[set[str]], None]) -> None:
        self.stats = LogStats()
        self._limits = limits
        self._on_durable = on_durable
        self._queue: deque[_Append] = deque()
        self._pending_records = 0
        self._pending_bytes = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: FlushThread | None = None
        self._busy = False  # a flush is scheduled or under way
        self._lone_flushes = 2  # consecutive flushes that carried a single append (2: as many as it takes)
        self._inline = limits.inline_flush_max_s is not None  # where the next flush's write+fsync runs
        self._closing = False
        self._drained: asyncio.Future[None] | None = None
        self.failed: str | None = None  # set once an fsync failed: appends refused until reopened

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = FlushThread(self._loop)

    async def close(self) -> None:
        """Flush what is queued, then stop; appends arriving after this call are refused."""
        self._closing = True
        if self._busy and self._loop is not None:
            self._drained = self._loop.create_future()
            await asyncio.shield(self._drained)
        if self._thread is not None:
            self._thread.stop()
            self._thread = None

    def submit(self, entries: Sequence[Entry], settle: Settle) -> None:
        """Take `entries` for the next flush, or raise why not (`LogUnavailable`, `LogError`).

        `settle` is called exactly once, on the loop thread, after the flush that carries them:
        with None once they are durable, with `LogUnavailable` if they never will be. Taken records
        are not withdrawn: whatever happens to the caller, they go to the disk and `settle` runs.
        """
        if self._closing:
            raise LogUnavailable("event log is closed")
        if self.failed is not None:
            raise LogUnavailable(f"event log stopped after a failed fsync ({self.failed}); reopen it")
        if self._loop is None:
            raise LogUnavailable("event log is not open")
        limits = self._limits
        nbytes = 0
        only: PartitionLog | None = entries[0][0] if entries else None
        for p, key, value in entries:
            size = OVERHEAD + len(value) + (len(key) if key else 0)
            if size > limits.max_record_bytes:
                raise LogError(f"record of {size} bytes exceeds max_record_bytes={limits.max_record_bytes}")
            nbytes += size
            if p is not only:
                only = None
        if self._pending_records and (
            self._pending_records + len(entries) > limits.max_pending_records
            or self._pending_bytes + nbytes > limits.max_pending_bytes
        ):
            raise LogUnavailable(
                f"log full: {self._pending_records} records / {self._pending_bytes} bytes await the disk"
            )
        self._queue.append(_Append(entries, only, time.time_ns() // 1_000_000, nbytes, settle))
        self._pending_records += len(entries)
        self._pending_bytes += nbytes
        if not self._busy:
            self._busy = True
            if self._inline and self._lone_flushes >= 2:
                # One caller at a time: nobody to wait for (see the module doc).
                self._next()
            else:
                self._loop.call_soon(self._gather)

    async def append(self, entries: Sequence[Entry]) -> None:
        done: asyncio.Future[None] = (self._loop or asyncio.get_running_loop()).create_future()
        self.submit(entries, functools.partial(settle_future, done))
        # A cancelled caller does not withdraw its record: it may already be on its way to the disk.
        await done

    # -- the flush cycle (loop thread) ---------------------------------------------------------------

    def _gather(self) -> None:
        """Flush two loop passes after the first append, not one, or go idle at once if nothing is queued.

        A request or response read from a socket in one pass makes its append in the next (the
        protocol callback wakes the handler task); the second pass lets those of the pass the flush
        would have run in join it. Measured at concurrency 16: 6.8 appends per flush instead of 4.7,
        and 2% less gateway CPU per call.
        """
        if self._queue:
            assert self._loop is not None
            self._loop.call_soon(self._next)
        else:
            self._next()

    def _next(self) -> None:
        """Start a flush of what is queued, or go idle."""
        if not self._queue:
            self._busy = False
            if self._drained is not None and not self._drained.done():
                self._drained.set_result(None)
            return
        batch = self._take()
        self._lone_flushes = self._lone_flushes + 1 if len(batch) == 1 else 0
        try:
            self._start(batch)
        except Exception as exc:  # a bug here must not leave appends waiting forever
            self._crashed(batch, exc)

    def _take(self) -> list[_Append]:
        batch = [self._queue.popleft()]
        size = batch[0].nbytes
        while self._queue and size + self._queue[0].nbytes <= self._limits.max_flush_bytes:
            app = self._queue.popleft()
            size += app.nbytes
            batch.append(app)
        return batch

    def _start(self, batch: list[_Append]) -> None:
        if self.failed is not None:
            self._end(batch, LogUnavailable(f"event log stopped after a failed fsync ({self.failed}); reopen it"))
            return
        first = batch[0].partition
        if first is not None and all(app.partition is first for app in batch):
            touched = [first]  # the common case: one partition
        else:
            touched = list(dict.fromkeys(p for app in batch for p, _, _ in app.entries))
        rolling = [p for p in touched if p.needs_roll()]
        assert self._thread is not None
        if rolling:
            # Roll only between flushes: the old segment is then wholly fsync'd, so recovery only ever
            # has to validate the last segment's tail.
            self._thread.submit(create_segments, rolling, functools.partial(self._rolled, batch, touched, rolling))
            return
        self._write(batch, touched)

    def _rolled(self, batch: list[_Append], touched: list[PartitionLog], rolling: list[PartitionLog],
                fds: list[int] | None, error: BaseException | None) -> None:
        try:
            if error is not None:
                self.stats.failed_flushes += 1
                log.error("event log: creating a segment failed: %s; %d appends fail", error, len(batch))
                self._end(batch, LogUnavailable(f"event log cannot create a segment: {error}"))
                return
            assert fds is not None
            for p, fd in zip(rolling, fds, strict=True):
                p.rolled(fd, p.high_watermark)
            self._write(batch, touched)
        except Exception as exc:
            self._crashed(batch, exc)

    def _write(self, batch: list[_Append], touched: list[PartitionLog]) -> None:
        ends: list[int]  # per touched partition: its high watermark once the flush is durable
        if len(touched) == 1:
            p = touched[0]
            offset, durable_end = p.high_watermark, p.active.size
            frames = []
            for app in batch:
                ts = app.timestamp_ms
                for _, key, value in app.entries:
                    frames.append(encode(offset, ts, durable_end, key, value))
                    offset += 1
            jobs = [job(p, b"".join(frames))]
            ends = [offset]
        else:
            chunks: dict[PartitionLog, list[bytes]] = {p: [] for p in touched}
            next_offset = {p: p.high_watermark for p in touched}
            for app in batch:
                ts = app.timestamp_ms
                for p, key, value in app.entries:
                    chunks[p].append(encode(next_offset[p], ts, p.active.size, key, value))
                    next_offset[p] += 1
            jobs = [job(p, b"".join(chunks[p])) for p in touched]
            ends = [next_offset[p] for p in touched]
        if self._inline:
            try:
                elapsed, error = write_and_sync(jobs), None
            except BaseException as exc:  # as on the thread: the outcome decides, `_flushed` fails closed
                elapsed, error = None, exc
            self._flushed(batch, touched, jobs, ends, elapsed, error)
            return
        assert self._thread is not None
        self.stats.thread_flushes += 1
        self._thread.submit(write_and_sync, jobs, functools.partial(self._flushed, batch, touched, jobs, ends))

    def _flushed(self, batch: list[_Append], touched: list[PartitionLog], jobs: list[Job],
                 ends: list[int], elapsed: float | None, error: BaseException | None) -> None:
        bound = self._limits.inline_flush_max_s
        if bound is not None:
            inline = elapsed is not None and elapsed < bound
            if inline != self._inline:
                log.debug("event log: flushes now run on the %s (the last write+fsync took %s)",
                         "event loop" if inline else "flush thread",
                         "?" if elapsed is None else f"{elapsed * 1000:.1f} ms")
            self._inline = inline
        if error is not None:
            self.stats.failed_flushes += 1
            for p, (_, _, start, _, _) in zip(touched, jobs, strict=True):
                p.allocated = min(p.allocated, start)  # the rollback cut the file there
            if not isinstance(error, FlushFailed):
                self._crashed(batch, error)
                return
            if not error.recovered:
                self.failed = str(error)
            log.error(
                "event log: %s; %d appends fail%s", error, len(batch),
                "" if error.recovered else "; no further appends until the log is reopened",
            )
            self._end(batch, LogUnavailable(f"event log {error}"))
            return
        try:
            stats = self.stats
            topics = set()
            for p, (_, blob, start, _, fill_to), end in zip(touched, jobs, ends, strict=True):
                segment = p.active
                segment.index.add(p.high_watermark, start)
                segment.size = start + len(blob)
                if fill_to > p.allocated:
                    p.allocated = fill_to
                p.high_watermark = end
                stats.bytes += len(blob)
                topics.add(p.topic)
            stats.flushes += 1
            stats.fsyncs += len(jobs)
        except Exception as exc:
            self._crashed(batch, exc)
            return
        self._end(batch, None)
        self._on_durable(topics)

    def _crashed(self, batch: list[_Append], exc: BaseException) -> None:
        log.error("event log: flush crashed: %r; %d appends fail", exc, len(batch), exc_info=exc)
        self.failed = f"flush crashed: {exc!r}"
        self._end(batch, LogUnavailable(f"event log {self.failed}"))

    def _end(self, batch: list[_Append], error: LogUnavailable | None) -> None:
        """The batch's outcome is known: settle its appends, then flush whatever queued meanwhile."""
        self._settle(batch, error)
        assert self._loop is not None
        # Later, like the first flush: appends due in the callbacks just settled join it.
        self._loop.call_soon(self._gather)

    def _settle(self, batch: list[_Append], error: LogUnavailable | None) -> None:
        records = nbytes = 0
        for app in batch:
            records += len(app.entries)
            nbytes += app.nbytes
        self._pending_records -= records
        self._pending_bytes -= nbytes
        if error is None:
            self.stats.records += records
        for app in batch:
            try:
                app.settle(error)
            except Exception:  # one appender's bug must not keep the others waiting
                log.exception("event log: an append's settle callback failed")
