"""Fixtures for the audit-store tests: `store_backend`, parametrized over every backend.

    chdb                 ChdbStore in this process, on a fresh directory
    clickhouse-connect   ClickHouseStore over HTTP to tests/store/chdb_http.py (chDB behind a
                         ClickHouse-HTTP shim, in a subprocess with its own fresh directory)
    clickhouse-server    ClickHouseStore against a real server, only when MCPGW_TEST_CLICKHOUSE_URL is
                         set (with MCPGW_TEST_CLICKHOUSE_USER / _PASSWORD for an admin user). The
                         `audit` database there is DROPPED before and after every test: point it at a
                         throwaway server.

The yielded `StoreBackend` holds the open store and can `reopen()` it (close, then open a new store
on the same data) and make a second store as another server user (`store_as`, server only).
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from consumers.store.base import AuditStore
from consumers.store.chdb_store import ChdbStore
from consumers.store.clickhouse_store import ClickHouseStore

ROOT = Path(__file__).resolve().parents[2]
SERVER_URL = os.environ.get("MCPGW_TEST_CLICKHOUSE_URL", "")
SERVER_USER = os.environ.get("MCPGW_TEST_CLICKHOUSE_USER", "default")
SERVER_PASSWORD = os.environ.get("MCPGW_TEST_CLICKHOUSE_PASSWORD", "")
SHIM_START_TIMEOUT_S = 30.0


class Shim:
    """tests/store/chdb_http.py in a subprocess on `path`."""

    def __init__(self, path: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.store.chdb_http", "--path", str(path)], cwd=ROOT,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()  # blocks until the server listens (or dies)
        if not line.startswith("LISTENING "):
            self.stop()
            raise RuntimeError(f"the chDB HTTP shim did not start (exit {self.proc.returncode}): {line!r}")
        self.url = line.split(" ", 1)[1]

    def stop(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()  # the shim exits when its stdin closes
        try:
            self.proc.wait(timeout=SHIM_START_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@dataclass
class StoreBackend:
    kind: str
    make: Any  # () -> AuditStore, a new unopened store on this backend's data
    store: Any = None
    extra: list[Any] = field(default_factory=list)

    @property
    def server(self) -> bool:
        return self.kind == "clickhouse-server"

    async def open(self) -> AuditStore:
        self.store = self.make()
        await self.store.open()
        return self.store  # type: ignore[no-any-return]

    async def reopen(self) -> AuditStore:
        await self.store.close()
        return await self.open()

    async def store_as(self, user: str, password: str) -> ClickHouseStore:
        assert self.server, "users exist only on a ClickHouse server"
        other = ClickHouseStore(SERVER_URL, user, password)
        await other.open()
        self.extra.append(other)
        return other

    async def close(self) -> None:
        for store in [*self.extra, self.store]:
            if store is not None:
                await store.close()


BACKENDS: list[Any] = [
    pytest.param("chdb", marks=pytest.mark.integration),
    pytest.param("clickhouse-connect", marks=pytest.mark.integration),
]
if SERVER_URL:
    BACKENDS.append(pytest.param("clickhouse-server", marks=pytest.mark.integration))


@pytest.fixture(scope="session")
def shared_shim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shim]:
    """One shim for the contract suite; each test starts from an empty engine (see `reset`)."""
    running = Shim(tmp_path_factory.mktemp("shim") / "chdb")
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def shim(tmp_path: Path) -> Iterator[Shim]:
    """A shim of the test's own, for tests that stop it."""
    running = Shim(tmp_path / "shim-chdb")
    try:
        yield running
    finally:
        running.stop()


def reset(url: str) -> None:
    # Everything a test leaves behind lives in the `audit` database, deduplication state included
    # (it is kept per table), so dropping it gives the next test a fresh store.
    with urllib.request.urlopen(url, data=b"DROP DATABASE IF EXISTS audit SYNC", timeout=30) as answer:
        answer.read()


async def _drop_server_database() -> None:
    admin = ClickHouseStore(SERVER_URL, SERVER_USER, SERVER_PASSWORD)
    await admin.open()
    try:
        await admin.execute_admin("DROP DATABASE IF EXISTS audit SYNC")
    finally:
        await admin.close()


@pytest.fixture(params=BACKENDS)
async def store_backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreBackend]:
    if request.param == "chdb":
        backend = StoreBackend("chdb", lambda: ChdbStore(tmp_path / "chdb"))
    elif request.param == "clickhouse-connect":
        running: Shim = request.getfixturevalue("shared_shim")
        reset(running.url)
        backend = StoreBackend("clickhouse-connect", lambda: ClickHouseStore(running.url))
    else:
        await _drop_server_database()
        backend = StoreBackend("clickhouse-server", lambda: ClickHouseStore(SERVER_URL, SERVER_USER, SERVER_PASSWORD))
    await backend.open()
    try:
        yield backend
    finally:
        await backend.close()
        if backend.server:
            await _drop_server_database()
