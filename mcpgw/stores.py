"""Opening the audit store the config names: chDB under data_dir (default) or a ClickHouse server."""

from __future__ import annotations

from pathlib import Path

from consumers.store.base import AuditStore
from consumers.store.chdb_store import ChdbStore
from consumers.store.clickhouse_store import ClickHouseStore
from mcpgw.config import GatewayConfig


def store_for(config: GatewayConfig) -> AuditStore:
    """The configured store, not yet opened (`await store.open()` applies pending migrations)."""
    chosen = config.audit_store
    if chosen is not None and chosen.clickhouse is not None:
        server = chosen.clickhouse
        return ClickHouseStore(server.url, server.user, server.password, server.database)
    path = chosen.chdb.path if chosen is not None and chosen.chdb is not None and chosen.chdb.path else None
    return ChdbStore(path or Path(config.data_dir) / "clickhouse")
