"""A flush's file I/O: write the framed records (and zeros after them), fdatasync, undo on error.

Everything here runs on whichever thread the writer picked for the flush (the event loop's while the
disk is fast, else `FlushThread`) and touches only file descriptors and the arguments it is given,
never the partitions' state, which the writer updates on the loop once the outcome is known.
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from eventlog.embedded.partition import PartitionLog

# Module-level so tests can substitute a failing or counting sync. fdatasync suffices for appends:
# it flushes the metadata needed to read the data back (the file size), skipping mtime.
_sync: Callable[[int], None] = getattr(os, "fdatasync", os.fsync)
_pwrite: Callable[[int, bytes | memoryview, int], int] = os.pwrite

# How far ahead of the records the active segment is zero-filled (never past `segment_bytes`). Larger
# means fewer flushes that commit a size change, and a longer write for the one that does.
PREALLOCATE_BYTES = 1024 * 1024
_ZEROS = memoryview(bytes(PREALLOCATE_BYTES))

# One partition's part of a flush: the descriptor, the framed records, where they start, and the
# range to fill with zeros after them (empty unless the flush writes past the preallocated end).
Job = tuple[int | None, bytes, int, int, int]


class FlushFailed(Exception):
    """A flush's write or fsync failed; `recovered`: the files were cut back to their pre-flush size."""

    def __init__(self, phase: str, cause: OSError, recovered: bool) -> None:
        super().__init__(f"{phase} failed: {cause}")
        self.phase = phase
        self.recovered = recovered


class FlushThread:
    """One thread doing the file I/O; each job's outcome comes back as a callback on the loop.

    Leaner than an executor: no concurrent future, no wrapped asyncio future, one queue put to hand
    a job over and one `call_soon_threadsafe` to hand the outcome back.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._jobs: queue.SimpleQueue[tuple[Callable[[Any], Any], Any, Callable[[Any, BaseException | None], None]]
                                      | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="eventlog-flush", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[Any], Any], arg: Any, done: Callable[[Any, BaseException | None], None]) -> None:
        self._jobs.put((fn, arg, done))

    def stop(self) -> None:
        """Finish the job under way, then end the thread (jobs are only submitted one at a time)."""
        self._jobs.put(None)
        self._thread.join()

    def _run(self) -> None:
        jobs, loop = self._jobs, self._loop
        while (job := jobs.get()) is not None:
            fn, arg, done = job
            try:
                result, error = fn(arg), None
            except BaseException as exc:  # handed to the loop, which fails the flush closed
                result, error = None, exc
            try:
                loop.call_soon_threadsafe(done, result, error)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                return


def job(p: PartitionLog, blob: bytes) -> Job:
    """`p`'s part of a flush writing `blob` after its last durable record."""
    start = p.active.size
    end = start + len(blob)
    fill_from = max(end, p.allocated)
    fill_to = fill_from
    if end > p.allocated:
        fill_to = end + min(PREALLOCATE_BYTES, max(0, p.config.segment_bytes - end))
    return (p.fd, blob, start, fill_from, fill_to)


def create_segments(partitions: list[PartitionLog]) -> list[int]:
    """Flush thread: create the next segment file of each partition; on error close those created."""
    fds: list[int] = []
    try:
        for p in partitions:
            fds.append(p.create_segment_file(p.high_watermark))
    except OSError:
        for fd in fds:
            os.close(fd)
        raise
    return fds


def _write_all(fd: int, blob: bytes | memoryview, position: int) -> None:
    n = _pwrite(fd, blob, position)  # one call writes it all, but for a short write
    view = memoryview(blob)[n:]
    position += n
    while view:
        n = _pwrite(fd, view, position)
        view, position = view[n:], position + n


def write_and_sync(jobs: list[Job]) -> float:
    """Write each blob (and zeros after it, if due), then fsync each file; on error undo every write.

    Returns the seconds it took, which decide where the next flush runs.
    """
    began = time.perf_counter()
    phase = "write"
    try:
        for fd, blob, start, fill_from, fill_to in jobs:
            assert fd is not None, "partition not open for appending"
            _write_all(fd, blob, start)
            if fill_to > fill_from:
                _write_all(fd, _ZEROS[: fill_to - fill_from], fill_from)
        phase = "fsync"
        for fd, _, _, _, _ in jobs:
            assert fd is not None
            _sync(fd)
        return time.perf_counter() - began
    except OSError as exc:
        recovered = phase == "write"
        for fd, _, start, _, _ in jobs:
            try:
                assert fd is not None
                os.ftruncate(fd, start)
                _sync(fd)
            except OSError:
                recovered = False
        raise FlushFailed(phase, exc, recovered) from exc
