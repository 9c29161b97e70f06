"""`ChdbStore`: the audit store on an embedded ClickHouse engine (chDB) bound to one directory.

The engine runs in-process through clickhouse-connect's chDB interface, so inserts travel as Native
blocks and results decode exactly as `ClickHouseStore`'s do. chDB is synchronous: every call runs
on a dedicated single thread, never on the event loop. There are two such threads, each with its own
engine handle: the writer (inserts, migrations) and the reader, whose handle is `SET readonly = 1`
once, so that ClickHouse itself refuses anything but a read and a user's query can neither turn
that off nor make audit ingestion wait behind it.

chDB takes an exclusive lock on its directory (`<path>/status`): while the gateway runs, no other
process can open the store (`StoreUnavailable`, naming the holder's pid). One process hosts one
chDB directory; stores in the same process on the same path share the engine.

A cancelled await does not cancel the engine call under it: an insert may still land, which is
harmless because a retry carries the same dedup token.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import clickhouse_connect

from consumers.store import connect
from consumers.store.base import QueryResult, StoreQueryError, StoreUnavailable
from consumers.store.migrations import MIGRATIONS_DIR, apply_pending, load_migrations

T = TypeVar("T")

_GATEWAY_RUNNING = ("the gateway is running; query through its admin API (`mcpgw audit query -c <the gateway's "
                    "config>`), or stop it to open the store directly")


def lock_holder(path: Path) -> int | None:
    """The pid holding chDB's directory lock, 0 if the holder is unknown, None if the lock is free.

    Probed with the same flock the engine takes, released at once.
    """
    status = path / "status"
    try:
        fd = os.open(status, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pass
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        text = os.pread(fd, 256, 0).decode(errors="replace")
    finally:
        os.close(fd)
    for line in text.splitlines():
        if line.startswith("PID:"):
            with contextlib.suppress(ValueError):
                return int(line.split(":", 1)[1])
    return 0


def _locked(path: Path, holder: int) -> StoreUnavailable:
    who = f"process {holder}" if holder else "another process"
    return StoreUnavailable(f"the audit store {path} is locked by {who}: {_GATEWAY_RUNNING}")


def _open_failure(path: Path, exc: BaseException) -> StoreUnavailable:
    # chDB's own message for a held lock is "Error initializing EmbeddedServer" (the reason goes
    # to stderr), so the lock is probed again to say what happened.
    holder = lock_holder(path)
    if holder is not None and holder != os.getpid():
        return _locked(path, holder)
    text = str(exc)
    if "already initialized with path" in text:
        return StoreUnavailable(f"cannot open the audit store {path}: this process already runs an embedded store "
                                f"on another directory, and chDB hosts one per process ({text})")
    return StoreUnavailable(f"cannot open the audit store {path}: {text}")


class ChdbStore:
    # chDB has no users, roles or row policies: migrations skip statements that need them.
    capabilities: frozenset[str] = frozenset()

    def __init__(self, path: str | os.PathLike[str], *, migrations_dir: Path = MIGRATIONS_DIR) -> None:
        self.path = Path(path).resolve()
        self._migrations_dir = migrations_dir
        self._writer: Any = None
        self._reader: Any = None
        self._write_thread: ThreadPoolExecutor | None = None
        self._read_thread: ThreadPoolExecutor | None = None
        self._column_types: dict[tuple[str, tuple[str, ...]], list[str]] = {}

    async def open(self) -> None:
        if self._writer is not None:
            return
        migrations = load_migrations(self._migrations_dir)
        holder = lock_holder(self.path)
        if holder is not None and holder != os.getpid():
            raise _locked(self.path, holder)  # before touching chDB, which would print the failure to stderr
        self._write_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chdb-write")
        self._read_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chdb-read")
        try:
            self._writer = await self._call(self._write_thread, lambda: self._connect({}))
            self._reader = await self._call(self._read_thread, lambda: self._connect(connect.READ_SETTINGS))
            await apply_pending(self, self.capabilities, migrations)
        except BaseException:
            await self.close()
            raise

    def _connect(self, settings: Mapping[str, Any]) -> Any:
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            return clickhouse_connect.get_client(interface="chdb", path=str(self.path), settings=dict(settings),
                                                 tz_mode="aware")
        except Exception as exc:
            raise _open_failure(self.path, exc) from exc

    async def _call(self, thread: ThreadPoolExecutor | None, fn: Callable[[], T]) -> T:
        if thread is None:
            raise StoreUnavailable(f"the audit store {self.path} is not open")
        return await asyncio.get_running_loop().run_in_executor(thread, fn)

    async def insert(self, table: str, rows: Sequence[Mapping[str, Any]], dedup_token: str) -> None:
        if not rows:
            return
        settings = connect.insert_settings(dedup_token)
        names, data = connect.to_columns(table, rows)
        writer = self._writer

        def run() -> None:
            types = self._types_of(table, names)
            writer.insert(table, data, column_names=names, column_type_names=types, settings=settings)

        try:
            await self._call(self._write_thread, run)
        except Exception as exc:
            raise connect.store_error(exc, f"insert into {table}") from exc

    async def insert_avro(self, table: str, columns: Sequence[str], container: bytes, dedup_token: str) -> None:
        settings = connect.insert_settings(dedup_token)
        writer = self._writer

        def run() -> None:
            writer.raw_insert(table, list(columns), container, settings=settings, fmt="Avro")

        try:
            await self._call(self._write_thread, run)
        except Exception as exc:
            raise connect.store_error(exc, f"insert into {table}") from exc

    def _types_of(self, table: str, names: list[str]) -> list[str]:
        # Runs on the writer thread. Migrations only run at open, so a table's types are stable
        # for the life of the store: one DESCRIBE per table, not one per batch.
        key = (table, tuple(names))
        if key not in self._column_types:
            described = self._writer.query(f"DESCRIBE TABLE {table}").result_rows
            by_name = {row[0]: row[1] for row in described}
            missing = [name for name in names if name not in by_name]
            if missing:
                raise StoreQueryError(f"insert into {table}: no such columns {missing}")
            self._column_types[key] = [by_name[name] for name in names]
        return self._column_types[key]

    async def query(self, sql: str, parameters: Mapping[str, Any] | None = None) -> QueryResult:
        reader = self._reader
        statement = connect.user_sql(sql)

        def run() -> QueryResult:
            result = reader.query(statement, parameters=dict(parameters or {}), column_formats=connect.COLUMN_FORMATS)
            return connect.to_result(result)

        try:
            return await self._call(self._read_thread, run)
        except Exception as exc:
            raise connect.store_error(exc, "query") from exc

    async def execute_admin(self, sql: str) -> None:
        writer = self._writer
        try:
            await self._call(self._write_thread, lambda: writer.command(sql))
        except Exception as exc:
            raise connect.store_error(exc, "admin statement") from exc

    async def close(self) -> None:
        for client, thread in ((self._reader, self._read_thread), (self._writer, self._write_thread)):
            if thread is None:
                continue
            if client is not None:
                with contextlib.suppress(Exception):
                    await asyncio.get_running_loop().run_in_executor(thread, client.close)
            thread.shutdown(wait=True)
        self._reader = self._writer = None
        self._read_thread = self._write_thread = None
        self._column_types.clear()
