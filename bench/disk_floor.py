"""The disk's floor under a durable append, measured beside the gateway's own log.

A strict-mode call on the embedded log waits, at concurrency 1, for two write+fdatasync in series
(the request's events before forwarding, the response's before answering). What one of them costs
is the device's and the host's, not the gateway's, and it moves with the host's load: on the same
machine it has read 0.2 ms and 0.6 ms an hour apart. So `bench.run` measures it in every round,
the way the log does it (a call's hop of ~1.6 KB written at an explicit position into preallocated,
already fsync'd space, then `fdatasync`), on the same filesystem, paced so the device idles between
appends as it does between calls at c=1, and reports the c=1 latency beside it.

It also counts what the block device completed meanwhile (write and flush requests, from sysfs), so
the report shows what one fdatasync costs in device I/Os: on ext4 without a journal, the data, in
some of them also the file's inode block, then a cache flush. An equally long idle window right after
counts what other processes wrote to the same device, so that noise is seen rather than assumed, and
a few fdatasync with nothing dirty count what a sync costs the device by itself: on this host's
kernel (6.18) the cache flush's empty write bio counts as a write too (1.0 write and 1.0 flush each).
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

HOP_BYTES = 1600  # a tools/call hop: two events of ~800 bytes, framed
SPACE = 4 << 20
# Documentation/block/stat.rst: 1-based field 5 is write I/Os, field 16 flush I/Os (kernels ≥ 5.5).
_WRITE_IOS = 4
_FLUSH_IOS = 15


@dataclass(frozen=True)
class DeviceCounts:
    """Completed requests of one block device, cumulative since boot."""

    writes: int
    flushes: int | None  # None: the kernel's stat file predates the flush fields


@dataclass(frozen=True)
class FloorSample:
    """One measurement: the median write+fdatasync, and the device's requests during it (None: unknown)."""

    median_ms: float
    syncs: int
    writes: int | None = None
    flushes: int | None = None
    idle_writes: int | None = None  # other processes' writes in an equally long window with no syncs
    bare_syncs: int = 0  # fdatasync with nothing dirty, after the measured ones
    bare_writes: int | None = None  # the device's writes during those


def parse_block_stat(text: str) -> DeviceCounts | None:
    """The write and flush counts of a /sys/.../stat line (11 fields before Linux 4.18, 15 or 17 since)."""
    fields = text.split()
    if len(fields) <= _WRITE_IOS or not all(f.isdigit() for f in fields):
        return None
    flushes = int(fields[_FLUSH_IOS]) if len(fields) > _FLUSH_IOS else None
    return DeviceCounts(int(fields[_WRITE_IOS]), flushes)


def device_stat_path(path: Path) -> Path:
    """The sysfs stat file of the block device (or partition: it has its own) holding `path`."""
    dev = os.stat(path).st_dev
    return Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}/stat")


def read_counts(stat_path: Path | None) -> DeviceCounts | None:
    if stat_path is None:
        return None
    try:
        return parse_block_stat(stat_path.read_text())
    except (OSError, UnicodeDecodeError):
        return None


def _delta(before: DeviceCounts | None, after: DeviceCounts | None) -> tuple[int | None, int | None]:
    if before is None or after is None:
        return None, None
    flushes = after.flushes - before.flushes if after.flushes is not None and before.flushes is not None else None
    return after.writes - before.writes, flushes


def measure(directory: Path, samples: int = 100, gap_s: float = 0.001, bare: int = 20) -> FloorSample:
    """`samples` write+fdatasync of one hop into preallocated space under `directory`, and the device's I/Os."""
    path = directory / f".disk-floor-{os.getpid()}"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.pwrite(fd, bytes(SPACE), 0)
        os.fsync(fd)
        try:
            stat_path: Path | None = device_stat_path(directory)
        except OSError:
            stat_path = None
        hop = b"\x5a" * HOP_BYTES
        took: list[float] = []
        position = 0
        before = read_counts(stat_path)
        began = time.perf_counter()
        for _ in range(samples):
            if position + HOP_BYTES > SPACE:
                position = 0
            start = time.perf_counter()
            os.pwrite(fd, hop, position)
            os.fdatasync(fd)
            took.append((time.perf_counter() - start) * 1000)
            position += HOP_BYTES
            time.sleep(gap_s)
        window = time.perf_counter() - began
        after = read_counts(stat_path)
        time.sleep(window)
        idle_start = read_counts(stat_path)
        idle_writes, _ = _delta(after, idle_start)
        for _ in range(bare):
            os.fdatasync(fd)
            time.sleep(gap_s)
        bare_writes, _ = _delta(idle_start, read_counts(stat_path))
        writes, flushes = _delta(before, after)
        return FloorSample(statistics.median(took), samples, writes, flushes, idle_writes, bare, bare_writes)
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
