"""Reading a partition: a cursor that walks its segments and validates every frame it returns.

A writable log's readers stop at the last fsync'd byte, so any bad frame they meet is damage:
`LogCorrupt`. A read-only log (another process writes) cannot know what has been fsync'd; it reads
whole valid frames and treats a bad or incomplete frame in the *last* segment as a record still
being written (it is read once complete), while a bad frame in an earlier segment is damage.
"""

from __future__ import annotations

import logging
import os

from eventlog.base import LogCorrupt, Record
from eventlog.embedded.partition import PartitionLog, Segment
from eventlog.embedded.segment import READ_CHUNK, locate, read_frames

log = logging.getLogger("mcpgw.eventlog.embedded")

_READ_FLAGS = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)
# Reads of another process's active segment: mostly its preallocated zeros past the last record,
# read again at every poll, so smaller than a full chunk.
_TAIL_CHUNK = 64 * 1024


class PartitionCursor:
    def __init__(self, plog: PartitionLog, max_body: int, offset: int) -> None:
        self.plog = plog
        self.next_offset = offset
        self._max_body = max_body
        self._seg: Segment | None = None
        self._fd: int | None = None
        self._pos = 0

    def seek(self, offset: int) -> None:
        self.next_offset = offset
        self._drop_segment()  # located lazily, at the next read

    def close(self) -> None:
        self._drop_segment()

    def read(self, max_records: int) -> list[Record]:
        plog = self.plog
        if not plog.segments:
            return []
        if self.next_offset < plog.start_offset:
            log.warning(
                "%s/%d: offset %d was deleted by retention; resuming at the earliest retained offset %d",
                plog.topic, plog.partition, self.next_offset, plog.start_offset,
            )
            self.seek(plog.start_offset)
        if (self._seg is None or self._seg not in plog.segments) and not self._position():
            return []
        out: list[Record] = []
        while len(out) < max_records:
            seg = self._seg
            assert seg is not None and self._fd is not None
            if self._pos >= seg.size:
                if not self._next_segment(seg):
                    break
                continue
            frames, self._pos, problem = read_frames(
                self._fd, self._pos, seg.size, self.next_offset, max_records - len(out), self._max_body,
                READ_CHUNK if plog.is_complete(seg) else _TAIL_CHUNK,
            )
            topic, partition = plog.topic, plog.partition
            out.extend(Record(topic, partition, f.offset, f.key, f.value, f.timestamp_ms) for f in frames)
            self.next_offset += len(frames)
            if problem is not None:
                if not plog.is_complete(seg):
                    break  # another process is still writing this frame
                if out:
                    break  # hand over the good records first; the next read starts at the bad frame
                raise LogCorrupt(f"{seg.path}: {problem}")
            if not frames:
                break
        return out

    def _position(self) -> bool:
        """Open the segment holding `next_offset` and find its byte; False if it vanished meanwhile."""
        plog = self.plog
        seg = plog.segments[plog.segment_index(self.next_offset)]
        try:
            self._fd = os.open(seg.path, _READ_FLAGS)
        except FileNotFoundError:
            return False  # deleted by retention between listing and opening: the next read resumes
        self._seg = seg
        target = self.next_offset
        if plog.writable and target > plog.high_watermark:
            log.warning(
                "%s/%d: position %d is past the end of the log (%d), e.g. a torn tail was truncated; "
                "resuming at the end", plog.topic, plog.partition, target, plog.high_watermark,
            )
            target = plog.high_watermark
        self._pos, found = locate(self._fd, seg.index, seg.base_offset, target, seg.size)
        if found != target:
            if seg is not plog.segments[-1]:
                raise LogCorrupt(f"{seg.path}: ends at offset {found}, before {target} where the next segment starts")
            log.warning(
                "%s/%d: position %d is past the end of the log (%d); resuming at the end",
                plog.topic, plog.partition, target, found,
            )
        self.next_offset = found
        return True

    def _next_segment(self, seg: Segment) -> bool:
        segments = self.plog.segments
        i = segments.index(seg)
        if i + 1 >= len(segments):
            return False
        nxt = segments[i + 1]
        if nxt.base_offset != self.next_offset:
            if not self.plog.is_complete(seg):
                return False
            raise LogCorrupt(
                f"{seg.path}: ends at offset {self.next_offset} but the next segment starts at {nxt.base_offset}"
            )
        self._drop_segment()
        try:
            self._fd = os.open(nxt.path, _READ_FLAGS)
        except FileNotFoundError:
            return False
        self._seg, self._pos = nxt, 0
        return True

    def _drop_segment(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._fd, self._seg, self._pos = None, None, 0


def read_all(plog: PartitionLog, max_body: int) -> list[Record]:
    """Every record of a partition, from its earliest retained offset."""
    cursor = PartitionCursor(plog, max_body, plog.start_offset)
    try:
        out: list[Record] = []
        while batch := cursor.read(10_000):
            out.extend(batch)
        return out
    finally:
        cursor.close()
