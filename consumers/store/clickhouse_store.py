"""`ClickHouseStore`: the audit store on a ClickHouse server, through clickhouse-connect's async client.

Inserts carry their dedup token as a setting (`insert_deduplication_token`), reads carry
`readonly=1`, both as HTTP parameters the server applies before the statement, so the SQL a user
sends is passed on untouched and ClickHouse alone decides what is a write.

The store opens without a default database (the `audit` database may not exist before the first
migration) and switches to `database` afterwards, which only affects unqualified table names in
users' queries: the store itself always writes `audit.<table>`.

Statements marked `-- requires: access_control` run only when the server can store roles and row
policies (a writable entry in system.user_directories); elsewhere they are skipped and counted.

A server user may be granted less than the migrations need (the ingest role may only INSERT and read
audit.schema_migrations, infra/clickhouse/0004): opening such a store works while the schema is
current and fails with ClickHouse's ACCESS_DENIED, named, when a migration is pending.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import clickhouse_connect
from clickhouse_connect.driver.asyncclient import AsyncClient

from consumers.store import connect
from consumers.store.base import DATABASE, QueryResult, StoreQueryError, StoreUnavailable
from consumers.store.migrations import ACCESS_CONTROL, MIGRATIONS_DIR, apply_pending, load_migrations

# Where a server keeps users and roles created by SQL; a server with only users.xml (or an engine
# without access control, like chDB behind an HTTP front) cannot run CREATE ROLE at all.
_WRITABLE_ACCESS_STORAGE = ("SELECT count() FROM system.user_directories "
                            "WHERE type IN ('local_directory', 'replicated', 'memory')")


class ClickHouseStore:
    # Known after open(): {"access_control"} when the server can store roles and row policies.
    capabilities: frozenset[str] = frozenset()

    def __init__(self, url: str, user: str = "default", password: str = "", database: str = DATABASE, *,
                 connect_timeout: float = 10, send_receive_timeout: float = 300, compress: bool | str = True,
                 migrations_dir: Path = MIGRATIONS_DIR) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"audit_store.clickhouse.url must look like http(s)://host:port, not {url!r}")
        self.url = url
        self._interface = parts.scheme
        self._host = parts.hostname
        self._port = parts.port or (8443 if parts.scheme == "https" else 8123)
        self._user = user
        self._password = password
        self.database = database
        self._timeouts = (connect_timeout, send_receive_timeout)
        self._compress = compress
        self._migrations_dir = migrations_dir
        self._client: AsyncClient | None = None
        self._column_types: dict[tuple[str, tuple[str, ...]], list[str]] = {}

    async def open(self) -> None:
        if self._client is not None:
            return
        migrations = load_migrations(self._migrations_dir)
        try:
            self._client = await clickhouse_connect.get_async_client(
                interface=self._interface, host=self._host, port=self._port, username=self._user,
                password=self._password, connect_timeout=self._timeouts[0], send_receive_timeout=self._timeouts[1],
                compress=self._compress, tz_mode="aware", autogenerate_session_id=False)
        except Exception as exc:
            # Unreachable → StoreUnavailable (retryable); refused credentials stay a non-retryable error.
            raise connect.store_error(exc, f"connecting to {self.url}") from exc
        try:
            writable = (await self._client.query(_WRITABLE_ACCESS_STORAGE)).result_rows[0][0]
            self.capabilities = frozenset({ACCESS_CONTROL}) if writable else frozenset()
            await apply_pending(self, self.capabilities, migrations)
            self._client.database = self.database
        except BaseException:
            await self.close()
            raise

    def _require(self) -> AsyncClient:
        if self._client is None:
            raise StoreUnavailable(f"the audit store at {self.url} is not open")
        return self._client

    async def insert(self, table: str, rows: Sequence[Mapping[str, Any]], dedup_token: str) -> None:
        if not rows:
            return
        client = self._require()
        settings = connect.insert_settings(dedup_token)
        names, data = connect.to_columns(table, rows)
        try:
            types = await self._types_of(client, table, names)
            await client.insert(table, data, column_names=names, column_type_names=types, settings=settings)
        except Exception as exc:
            raise connect.store_error(exc, f"insert into {table}") from exc

    async def insert_avro(self, table: str, columns: Sequence[str], container: bytes, dedup_token: str) -> None:
        client = self._require()
        settings = connect.insert_settings(dedup_token)
        try:
            await client.raw_insert(table, list(columns), container, settings=settings, fmt="Avro")
        except Exception as exc:
            raise connect.store_error(exc, f"insert into {table}") from exc

    async def _types_of(self, client: AsyncClient, table: str, names: list[str]) -> list[str]:
        # One DESCRIBE per table for the life of the store, not a round trip per batch: migrations
        # only run at open.
        key = (table, tuple(names))
        if key not in self._column_types:
            described = (await client.query(f"DESCRIBE TABLE {table}")).result_rows
            by_name = {row[0]: row[1] for row in described}
            missing = [name for name in names if name not in by_name]
            if missing:
                raise StoreQueryError(f"insert into {table}: no such columns {missing}")
            self._column_types[key] = [by_name[name] for name in names]
        return self._column_types[key]

    async def query(self, sql: str, parameters: Mapping[str, Any] | None = None) -> QueryResult:
        client = self._require()
        try:
            result = await client.query(connect.user_sql(sql), parameters=dict(parameters or {}),
                                        settings=connect.READ_SETTINGS, column_formats=connect.COLUMN_FORMATS)
        except Exception as exc:
            raise connect.store_error(exc, "query") from exc
        return connect.to_result(result)

    async def execute_admin(self, sql: str) -> None:
        client = self._require()
        try:
            await client.command(sql)
        except Exception as exc:
            raise connect.store_error(exc, "admin statement") from exc

    async def close(self) -> None:
        client, self._client = self._client, None
        self._column_types.clear()
        if client is not None:
            await client.close()
