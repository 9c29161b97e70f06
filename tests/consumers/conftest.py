"""Fixtures for the consumer tests: a real embedded log, and the store backends the audit tests run on.

`store` is parametrized: "memory" (tests/consumers/support.py's fake) always, "chdb" (the store's
embedded ClickHouse backend) when `consumers/store/chdb_store.py` and the chdb package are there.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from consumers.audit import AuditRows
from consumers.store.base import AuditStore
from eventlog.embedded import EmbeddedLog
from tests.consumers.support import MemoryStore, simple_rows
from tests.eventlog import kafka_fixture


def pytest_configure(config: pytest.Config) -> None:
    # The broker fixtures (`kafka_bootstrap`, ...) live with the event-log tests; shared, not copied.
    if not config.pluginmanager.has_plugin(kafka_fixture.__name__):
        config.pluginmanager.register(kafka_fixture, kafka_fixture.__name__)


@pytest.fixture
async def log(tmp_path: Path) -> AsyncIterator[EmbeddedLog]:
    async with EmbeddedLog(tmp_path / "log", partitions=2) as opened:
        yield opened


def chdb_store_factory() -> tuple[Any, str]:
    """The chDB store class, or None with the reason it is unavailable."""
    try:
        module = importlib.import_module("consumers.store.chdb_store")
    except ImportError as exc:
        return None, f"chDB store unavailable: {exc}"
    return module.ChdbStore, ""


def audit_rows_for_store() -> AuditRows | None:
    """None: the consumer's default rows (the store's row module), which the real tables need."""
    return None


@dataclass
class StoreUnderTest:
    kind: str
    store: AuditStore
    rows: AuditRows | None

    async def event_ids(self) -> list[str]:
        if isinstance(self.store, MemoryStore):
            return self.store.event_ids()
        result = await self.store.query("SELECT event_id FROM audit.events")
        return [str(r[0]) for r in result.rows]

    async def count(self, table: str) -> int:
        if isinstance(self.store, MemoryStore):
            return len(self.store.rows.get(table, []))
        result = await self.store.query(f"SELECT count() FROM {table}")
        return int(result.rows[0][0])


@pytest.fixture(params=["memory", "chdb"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreUnderTest]:
    if request.param == "memory":
        yield StoreUnderTest("memory", MemoryStore(), simple_rows())
        return
    factory, reason = chdb_store_factory()
    if factory is None:
        pytest.skip(reason)
    real: AuditStore = factory(tmp_path / "store")
    await real.open()
    try:
        yield StoreUnderTest("chdb", real, audit_rows_for_store())
    finally:
        await real.close()
