"""Segment files: how one record is framed on disk, and how frames are read back and validated.

A partition is a directory of segment files named by the offset of their first record
(`<base_offset:020d>.log`). A segment is a plain concatenation of frames:

    magic        2 bytes  C7 10            finds frame starts when scanning past damage
    body_len     u32                       length of everything after the crc
    crc          u32      zlib CRC-32 of the body
    offset       u64                       dense per partition: each frame is the previous + 1
    timestamp_ms i64
    durable_end  u64      bytes of this file known fsync'd when the frame was written
    key_len      i32      -1: no key
    key, value

`durable_end` is what lets recovery tell a torn tail from damage to acknowledged data: a valid
frame found *after* a bad one, whose `durable_end` lies beyond the bad one, proves the bad bytes
had been fsync'd before, so they were acknowledged and must not be truncated away. (A torn flush
may leave holes, but every frame of that flush or an unacknowledged later one carries a
`durable_end` at or before the hole.) Integers are big-endian.

The active segment of a running writer ends in preallocated zeros (see partition.py). A frame never
starts with a zero byte, so zeros where a frame should start mean "nothing written here yet": recovery
drops them like a torn tail, without the warning, and a reader of another process's segment waits
there as it does at a frame still being written. CRC-32 comes from zlib because it
needs no compiled extension and runs at memory speed.
"""

from __future__ import annotations

import mmap
import os
import struct
import zlib
from bisect import bisect_right
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from eventlog.base import LogCorrupt

MAGIC = b"\xc7\x10"
_PREFIX = struct.Struct(">2sII")
_FIXED = struct.Struct(">QqQi")
PREFIX_SIZE = _PREFIX.size
FIXED_SIZE = _FIXED.size
OVERHEAD = PREFIX_SIZE + FIXED_SIZE
SUFFIX = ".log"
INDEX_INTERVAL = 64 * 1024  # bytes between sparse-index entries: bounds a seek to one short scan
READ_CHUNK = 1024 * 1024

INCOMPLETE = "incomplete frame"


class Frame(NamedTuple):
    offset: int
    timestamp_ms: int
    durable_end: int
    key: bytes | None
    value: bytes
    position: int  # of the frame's first byte in the buffer it was decoded from
    size: int


def encode(offset: int, timestamp_ms: int, durable_end: int, key: bytes | None, value: bytes) -> bytes:
    fixed = _FIXED.pack(offset, timestamp_ms, durable_end, -1 if key is None else len(key))
    body = b"".join((fixed, key or b"", value))
    return _PREFIX.pack(MAGIC, len(body), zlib.crc32(body)) + body


def decode(buf: bytes | mmap.mmap, i: int, max_body: int) -> Frame | str:
    """The frame starting at `buf[i]`, or why there is none (`INCOMPLETE` if `buf` ends inside it)."""
    end = len(buf)
    if end - i < PREFIX_SIZE:
        return INCOMPLETE
    magic, body_len, crc = _PREFIX.unpack_from(buf, i)
    if magic != MAGIC:
        return "bad magic"
    if body_len < FIXED_SIZE or body_len > max_body:
        return f"implausible length {body_len}"
    start = i + PREFIX_SIZE
    stop = start + body_len
    if stop > end:
        return INCOMPLETE
    with memoryview(buf) as view:
        if zlib.crc32(view[start:stop]) != crc:
            return "checksum mismatch"
    offset, ts, durable_end, key_len = _FIXED.unpack_from(buf, start)
    if key_len > body_len - FIXED_SIZE or key_len < -1:
        return f"implausible key length {key_len}"
    k = start + FIXED_SIZE
    key = None if key_len < 0 else bytes(buf[k : k + key_len])
    value = bytes(buf[k + max(key_len, 0) : stop])
    return Frame(offset, ts, durable_end, key, value, i, stop - i)


def segment_path(directory: Path, base_offset: int) -> Path:
    return directory / f"{base_offset:020d}{SUFFIX}"


def list_segments(directory: Path) -> list[tuple[int, Path]]:
    found: list[tuple[int, Path]] = []
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return []
    for entry in entries:
        stem = entry.name.removesuffix(SUFFIX)
        if entry.name.endswith(SUFFIX) and len(stem) == 20 and stem.isdigit():
            found.append((int(stem), Path(entry.path)))
    found.sort()
    return found


@dataclass(slots=True)
class SparseIndex:
    """(offset, position) pairs every ~INDEX_INTERVAL bytes, so a seek scans one short stretch."""

    offsets: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)

    def add(self, offset: int, position: int) -> None:
        if not self.positions or position - self.positions[-1] >= INDEX_INTERVAL:
            self.offsets.append(offset)
            self.positions.append(position)

    def floor(self, offset: int) -> tuple[int, int] | None:
        i = bisect_right(self.offsets, offset) - 1
        return None if i < 0 else (self.offsets[i], self.positions[i])

    def truncate(self, position: int) -> None:
        while self.positions and self.positions[-1] >= position:
            self.positions.pop()
            self.offsets.pop()


@dataclass(slots=True)
class ScanResult:
    valid_size: int
    next_offset: int
    index: SparseIndex
    bad_bytes: int = 0  # bytes after the last valid frame
    reason: str | None = None
    zero_tail: bool = False  # the bad bytes are all zeros: unused preallocated space


def scan_tail(path: Path, base_offset: int, max_body: int) -> ScanResult:
    """Validate a whole segment frame by frame; where validation stops, decide torn tail or damage.

    Raises LogCorrupt when the invalid bytes are followed by a frame proving they had been made
    durable (see the module docstring); otherwise reports how many bytes to truncate.
    """
    index = SparseIndex()
    with path.open("rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            return ScanResult(0, base_offset, index)
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            pos, expected = 0, base_offset
            reason: str | None = None
            while pos < size:
                frame = decode(buf, pos, max_body)
                if isinstance(frame, str):
                    reason = frame
                    break
                if frame.offset != expected:
                    reason = f"offset {frame.offset} where {expected} was expected"
                    break
                index.add(frame.offset, pos)
                pos += frame.size
                expected += 1
            if reason is None:
                return ScanResult(pos, expected, index)
            proof = _durable_frame_after(buf, pos, max_body)
            if proof is not None:
                raise LogCorrupt(
                    f"{path}: {reason} at byte {pos}, but the frame at byte {proof.position} (offset {proof.offset}) "
                    f"was written after byte {proof.durable_end} had been fsync'd: acknowledged records are "
                    "damaged; refusing to truncate them (restore the file or move it aside)"
                )
            return ScanResult(pos, expected, index, size - pos, reason, _all_zero(buf, pos, size))


def _all_zero(buf: mmap.mmap, start: int, stop: int) -> bool:
    with memoryview(buf) as view:
        for i in range(start, stop, READ_CHUNK):
            chunk = view[i : min(i + READ_CHUNK, stop)]
            if chunk.tobytes().count(0) != len(chunk):
                return False
    return True


def _durable_frame_after(buf: mmap.mmap, bad_at: int, max_body: int) -> Frame | None:
    i = buf.find(MAGIC, bad_at + 1)
    while i != -1:
        frame = decode(buf, i, max_body)
        if not isinstance(frame, str) and frame.durable_end > bad_at:
            return frame
        i = buf.find(MAGIC, i + 1)
    return None


def read_frames(
    fd: int, pos: int, limit: int, expected: int, max_records: int, max_body: int, chunk: int = READ_CHUNK
) -> tuple[list[Frame], int, str | None]:
    """Frames from byte `pos` up to byte `limit`, checked for integrity and dense offsets.

    Returns the frames, the byte after the last of them, and why reading stopped before `limit`
    (`None` if it did not). Callers decide whether a stop is corruption (inside data known complete)
    or a tail still being written (another process's active segment). `chunk` bounds each read.
    """
    frames: list[Frame] = []
    while pos < limit and len(frames) < max_records:
        buf = os.pread(fd, min(chunk, limit - pos), pos)
        if not buf:
            return frames, pos, INCOMPLETE
        i = 0
        while i < len(buf) and len(frames) < max_records:
            frame = decode(buf, i, max_body)
            if isinstance(frame, str):
                if frame != INCOMPLETE:
                    return frames, pos + i, f"{frame} at byte {pos + i}"
                break
            if frame.offset != expected:
                return frames, pos + i, f"offset {frame.offset} at byte {pos + i} where {expected} was expected"
            frames.append(frame)
            expected += 1
            i += frame.size
        if i == 0:
            # The next frame is larger than a chunk (or cut short by `limit`): read exactly it.
            head = os.pread(fd, PREFIX_SIZE, pos)
            if len(head) < PREFIX_SIZE:
                return frames, pos, INCOMPLETE
            need = PREFIX_SIZE + _PREFIX.unpack(head)[1]
            if head[:2] != MAGIC or need - PREFIX_SIZE > max_body:
                return frames, pos, f"bad frame header at byte {pos}"
            if pos + need > limit:
                return frames, pos, INCOMPLETE
            frame = decode(os.pread(fd, need, pos), 0, max_body)
            if isinstance(frame, str):
                return frames, pos, f"{frame} at byte {pos}"
            if frame.offset != expected:
                return frames, pos, f"offset {frame.offset} at byte {pos} where {expected} was expected"
            frames.append(frame)
            expected += 1
            i = frame.size
        pos += i
    return frames, pos, None


def locate(fd: int, index: SparseIndex, base_offset: int, target: int, limit: int) -> tuple[int, int]:
    """Byte position of offset `target` (or of the segment's end, if `target` lies beyond it).

    Returns (position, offset found there). Only frame headers are read: records skipped on the way
    are not returned, so their checksums do not matter here; the frames returned later are checked.
    """
    start = index.floor(target)
    offset, pos = start if start is not None else (base_offset, 0)
    while pos < limit and offset < target:
        buf = os.pread(fd, min(READ_CHUNK, limit - pos), pos)
        if len(buf) < OVERHEAD:
            break  # a frame still being written
        i = 0
        while offset < target and len(buf) - i >= OVERHEAD:
            magic, body_len, _ = _PREFIX.unpack_from(buf, i)
            found = _FIXED.unpack_from(buf, i + PREFIX_SIZE)[0]
            if magic == b"\0\0" and body_len == 0:
                # Preallocated space of another process's active segment: the end, for now. (Damage
                # elsewhere is still caught: the caller compares the offset reached with the target.)
                return pos + i, offset
            if magic != MAGIC or found != offset:
                raise LogCorrupt(f"unreadable frame header at byte {pos + i} seeking offset {target}")
            if pos + i + PREFIX_SIZE + body_len > limit:
                return pos + i, offset  # the frame is not complete yet
            index.add(offset, pos + i)
            i += PREFIX_SIZE + body_len
            offset += 1
        pos += i
    return min(pos, limit), offset
