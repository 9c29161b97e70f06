"""One partition on disk: its segments, the recovery of its tail, rolling, and retention.

The state here changes only on the event loop thread (the writer applies a flush's outcome there,
whether its file I/O ran on the loop or on the flush thread), so readers on the loop always see a consistent view:
`Segment.size` is the number of bytes a reader may read, which for a writable log is what has been
fsync'd, never what is merely written.

While the writer has it open, the active segment is preallocated: the file extends past the last
record with zeros the writer has written and fsync'd (`PartitionLog.allocated`), so a flush that
writes into them changes no file size and its fdatasync has no metadata to commit, only the data.
Closed segments are exact: a roll, a clean close and the recovery after a crash cut the file back
to its last record. A reader in another process therefore sees zeros only at the end of the last
segment, where they mean "not written yet".
"""

from __future__ import annotations

import logging
import os
import time
from bisect import bisect_right
from dataclasses import dataclass, field
from pathlib import Path

from eventlog.base import LogCorrupt
from eventlog.embedded.config import ResolvedTopic
from eventlog.embedded.segment import SparseIndex, list_segments, scan_tail, segment_path

log = logging.getLogger("mcpgw.eventlog.embedded")

# Not O_APPEND: the writer writes at explicit positions, into the preallocated zeros.
_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)


def fsync_dir(directory: Path) -> None:
    """Make a created, renamed or deleted directory entry durable (a file fsync does not)."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(slots=True, eq=False)
class Segment:
    base_offset: int
    path: Path
    size: int  # readable bytes: durable ones (writable log) or those seen on disk (read-only)
    mtime: float
    index: SparseIndex = field(default_factory=SparseIndex)


class PartitionLog:
    def __init__(self, topic: str, partition: int, directory: Path, config: ResolvedTopic, writable: bool) -> None:
        self.topic = topic
        self.partition = partition
        self.directory = directory
        self.config = config
        self.writable = writable
        self.segments: list[Segment] = []
        # Writable logs only: the active segment's append descriptor, and the offset after the last
        # durable record (what readers may read up to; also the next offset to assign between flushes),
        # and the active segment's file size (its last record, then the preallocated zeros).
        self.fd: int | None = None
        self.high_watermark = 0
        self.allocated = 0
        self._stat_last: Segment | None = None  # read-only: the segment that was last at the previous refresh

    @property
    def start_offset(self) -> int:
        return self.segments[0].base_offset if self.segments else 0

    @property
    def active(self) -> Segment:
        return self.segments[-1]

    def segment_index(self, offset: int) -> int:
        """Index of the segment holding `offset` (the first one if it is before all of them)."""
        return max(bisect_right([s.base_offset for s in self.segments], offset) - 1, 0)

    def is_complete(self, segment: Segment) -> bool:
        """Whether every byte up to `segment.size` is known to be whole frames (else: still being written)."""
        return self.writable or segment is not self.segments[-1]

    # -- writable ------------------------------------------------------------------------------

    def recover(self, max_body: int) -> None:
        """Open for appending: validate the last segment's tail and truncate what is torn."""
        self.directory.mkdir(parents=True, exist_ok=True)
        found = list_segments(self.directory)
        if not found:
            segment_path(self.directory, 0).touch()
            fsync_dir(self.directory)
            found = list_segments(self.directory)
        for base, path in found[:-1]:
            st = path.stat()
            self.segments.append(Segment(base, path, st.st_size, st.st_mtime))
        base, path = found[-1]
        scan = scan_tail(path, base, max_body)
        if scan.bad_bytes and scan.zero_tail:
            # Preallocated space the writer had not used yet when it stopped without closing.
            log.info("%s/%d: dropping %d preallocated bytes after the last record of %s",
                     self.topic, self.partition, scan.bad_bytes, path.name)
        elif scan.bad_bytes:
            log.warning(
                "%s/%d: truncating %d bytes after the last complete record at byte %d of %s (%s); "
                "they were never acknowledged as durable",
                self.topic, self.partition, scan.bad_bytes, scan.valid_size, path.name, scan.reason,
            )
        if scan.bad_bytes:
            with path.open("r+b") as f:
                f.truncate(scan.valid_size)
                os.fsync(f.fileno())
        if len(self.segments) and self.segments[-1].base_offset >= base:
            raise LogCorrupt(f"{self.directory}: segment bases out of order near {path.name}")
        self.segments.append(Segment(base, path, scan.valid_size, path.stat().st_mtime, scan.index))
        self.high_watermark = scan.next_offset
        self.fd = os.open(path, _WRITE_FLAGS, 0o644)
        self.allocated = scan.valid_size

    def needs_roll(self) -> bool:
        return self.active.size >= self.config.segment_bytes and self.high_watermark > self.active.base_offset

    def create_segment_file(self, base_offset: int) -> int:
        """Flush thread: cut the active segment to its records, create the next one durably; returns its descriptor.

        The cut is durable before the new file exists, so a segment that is not the last never ends
        in zeros, even after a crash.
        """
        # `allocated` stays as is (state changes on the loop only): if the creation below fails,
        # the retry cuts again, which is harmless, and no flush writes here before a roll succeeds.
        self._cut_to_records()
        fd = os.open(segment_path(self.directory, base_offset), _WRITE_FLAGS, 0o644)
        try:
            fsync_dir(self.directory)
        except OSError:
            os.close(fd)
            raise
        return fd

    def rolled(self, fd: int, base_offset: int) -> None:
        """Loop thread, after `create_segment_file` succeeded: make the new segment the active one."""
        if self.fd is not None:
            os.close(self.fd)  # the old segment was fully fsync'd by the flush that last wrote it
        self.active.mtime = time.time()
        self.fd = fd
        self.allocated = 0
        self.segments.append(Segment(base_offset, segment_path(self.directory, base_offset), 0, time.time()))

    def close(self) -> None:
        """Cut the preallocated zeros off (best effort: recovery drops them too), release the file."""
        if self.fd is None:
            return
        try:
            self._cut_to_records()
        except OSError as exc:
            log.warning("%s/%d: could not cut the preallocated tail of %s: %s",
                        self.topic, self.partition, self.active.path.name, exc)
        finally:
            os.close(self.fd)
            self.fd = None

    def _cut_to_records(self) -> None:
        """Cut the active segment's preallocated zeros off, durably."""
        if self.fd is not None and self.allocated > self.active.size:
            os.ftruncate(self.fd, self.active.size)
            os.fsync(self.fd)

    def apply_retention(self, now: float) -> int:
        """Delete closed segments beyond the size or age bound, oldest first; returns records dropped."""
        retention = self.config.retention
        if self.config.compacted or (retention.max_bytes is None and retention.max_age_s is None):
            return 0
        total = sum(s.size for s in self.segments)
        doomed = 0
        for seg in self.segments[:-1]:
            too_big = retention.max_bytes is not None and total > retention.max_bytes
            too_old = retention.max_age_s is not None and seg.mtime < now - retention.max_age_s
            if not (too_big or too_old):
                break
            total -= seg.size
            doomed += 1
        if not doomed:
            return 0
        old_start = self.start_offset
        for seg in self.segments[:doomed]:
            seg.path.unlink(missing_ok=True)
        del self.segments[:doomed]
        fsync_dir(self.directory)
        log.info(
            "%s/%d: retention deleted %d segment(s), offsets %d..%d; earliest retained offset is now %d",
            self.topic, self.partition, doomed, old_start, self.start_offset - 1, self.start_offset,
        )
        return self.start_offset - old_start

    # -- read-only -----------------------------------------------------------------------------

    def refresh(self) -> None:
        """Read-only: pick up segments created, grown or deleted by the writing process."""
        known = {s.base_offset: s for s in self.segments}
        fresh: list[Segment] = []
        found = list_segments(self.directory)
        for n, (base, path) in enumerate(found):
            seg = known.get(base)
            is_last = n == len(found) - 1
            if seg is None or is_last or seg is self._stat_last:
                try:
                    st = path.stat()
                except FileNotFoundError:
                    continue  # deleted by retention since the listing
                if seg is None:
                    seg = Segment(base, path, st.st_size, st.st_mtime)
                seg.size, seg.mtime = st.st_size, st.st_mtime
            fresh.append(seg)
        self.segments = fresh
        self._stat_last = fresh[-1] if fresh else None
