"""Committed consumer-group positions: one small JSON file per group under `<root>/.groups/`.

A commit writes a temporary file, fsyncs it, renames it over the old one and fsyncs the directory,
so a crash leaves either the old or the new offsets, never a mix. Each group also has a lock file
held with flock while a member is active: the embedded log serves one member per group (across
processes too), which then owns every partition of its topics. Groups whose work is split among
several members need Kafka's group coordinator.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

from eventlog.base import LogCorrupt, LogUnavailable, TopicPartition
from eventlog.embedded.partition import fsync_dir

GROUPS_DIR = ".groups"


class GroupOffsets:
    def __init__(self, root: Path, group_id: str) -> None:
        if not group_id:
            raise ValueError("group_id must not be empty")
        name = quote(group_id, safe="")
        if len(name) > 200:
            raise ValueError(f"group_id too long for a file name: {group_id[:40]!r}…")
        self.group_id = group_id
        self._dir = root / GROUPS_DIR
        self._path = self._dir / f"{name}.json"
        self._lock_path = self._dir / f"{name}.lock"
        self._lock_fd: int | None = None
        # One thread, so writes land in commit order and never overlap on the temporary file, even
        # when a cancelled `commit` leaves its write running.
        self._executor: ThreadPoolExecutor | None = None

    def acquire(self) -> None:
        """Become the group's only member, or raise LogUnavailable naming the holder."""
        self._dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise LogUnavailable(
                f"consumer group {self.group_id!r} already has an active member (pid {holder}); the embedded "
                "log serves one member per group (several members sharing partitions need Kafka)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._lock_fd = fd
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="eventlog-offsets")

    def release(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)  # a commit still being written finishes under the lock
            self._executor = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing drops the flock
            self._lock_fd = None

    def load(self) -> dict[TopicPartition, int]:
        try:
            raw = self._path.read_bytes()
        except FileNotFoundError:
            return {}
        try:
            doc = json.loads(raw)
            return {
                TopicPartition(topic, int(partition)): int(offset)
                for topic, parts in doc["offsets"].items()
                for partition, offset in parts.items()
            }
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise LogCorrupt(f"{self._path}: unreadable committed offsets ({exc})") from exc

    async def save(self, offsets: Mapping[TopicPartition, int]) -> None:
        doc: dict[str, dict[str, int]] = {}
        for tp, offset in sorted(offsets.items(), key=lambda kv: (kv[0].topic, kv[0].partition)):
            doc.setdefault(tp.topic, {})[str(tp.partition)] = offset
        data = json.dumps({"version": 1, "group": self.group_id, "offsets": doc}).encode()
        if self._executor is None:
            raise LogUnavailable(f"consumer group {self.group_id!r}: no active member")
        try:
            await asyncio.wrap_future(self._executor.submit(self._write, data))
        except OSError as exc:
            raise LogUnavailable(f"cannot persist offsets of group {self.group_id!r}: {exc}") from exc

    def _write(self, data: bytes) -> None:
        tmp = self._path.with_suffix(".json.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self._path)
        fsync_dir(self._dir)
