"""What both stores share: they speak to ClickHouse through clickhouse-connect.

`ChdbStore` uses its in-process chDB interface, `ClickHouseStore` its async HTTP client; both
serialize inserts as Native blocks and decode results with the same codec, so a query returns the
same Python values on either backend (aware UTC datetimes, `dict` for Map, `list` for Array, `None`
for NULL) and the contract suite can compare them. Here: batch → columns, settings every insert
carries, result conversion, and the one place ClickHouse errors become `StoreError`s.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from clickhouse_connect.driver import exceptions as ch_errors

from consumers.store.base import QueryResult, StoreError, StoreQueryError, StoreReadOnly, StoreUnavailable

READONLY = 164  # ClickHouse error code READONLY
ACCESS_DENIED = 497
# Codes that say "not now" rather than "not this": the caller may retry the same batch later.
RETRYABLE_CODES = frozenset({
    159,  # TIMEOUT_EXCEEDED
    202,  # TOO_MANY_SIMULTANEOUS_QUERIES
    209,  # SOCKET_TIMEOUT
    210,  # NETWORK_ERROR
    241,  # MEMORY_LIMIT_EXCEEDED
    242,  # TABLE_IS_READ_ONLY (a replica lost its keeper session)
    252,  # TOO_MANY_PARTS (back-pressure from merges)
    999,  # KEEPER_EXCEPTION
})

# Every batch insert spells out the guarantees it relies on, so a server profile cannot quietly
# turn deduplication off or divert the batch into an async-insert buffer with other semantics.
INSERT_SETTINGS: dict[str, Any] = {"insert_deduplicate": 1, "async_insert": 0}
# The read path: ClickHouse itself refuses writes, DDL, SET readonly=0 and file()/url() reads.
READ_SETTINGS: dict[str, Any] = {"readonly": 1}
# Payloads are exact bytes (DESIGN.md §2); every other String column is text.
COLUMN_FORMATS: dict[str, str | dict[str, str]] = {"payload": "bytes"}


def insert_settings(dedup_token: str) -> dict[str, Any]:
    if not dedup_token:
        # Without a token the window still drops an identical block by its hash, which would
        # silently merge two genuinely equal batches; a missing token is a caller bug.
        raise StoreQueryError("insert needs a non-empty dedup_token (topic:partition:first-last)")
    return {**INSERT_SETTINGS, "insert_deduplication_token": dedup_token}


def to_columns(table: str, rows: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """Column names (from the first row) and row-major values; every row must have the same keys."""
    names = list(rows[0].keys())
    expected = set(names)
    data: list[list[Any]] = []
    for index, row in enumerate(rows):
        if row.keys() != expected:
            raise StoreQueryError(f"insert into {table}: row {index} has columns {sorted(row.keys())}, "
                                  f"row 0 has {sorted(names)}")
        data.append([row[name] for name in names])
    return names, data


def to_result(result: Any) -> QueryResult:
    return QueryResult(columns=list(result.column_names), types=[t.name for t in result.column_types],
                       rows=[tuple(row) for row in result.result_rows])


def user_sql(sql: str) -> str:
    """A user's statement as the client will send it: the client appends its own FORMAT clause."""
    return sql.strip().rstrip(";").rstrip()


def store_error(exc: BaseException, action: str) -> StoreError:
    """The StoreError for a failure of `action` (e.g. "query", "insert into audit.events")."""
    if isinstance(exc, StoreError):
        return exc
    code = getattr(exc, "code", None)
    message = _clickhouse_message(exc)
    if code == READONLY:
        return StoreReadOnly(f"{action} refused: the audit store is read-only here (audit data is written only "
                             f"by the audit consumer, append-only). ClickHouse said: {message}")
    if code in RETRYABLE_CODES:
        return StoreUnavailable(f"{action} failed, retry later: {message}")
    if isinstance(exc, ch_errors.OperationalError | OSError | asyncio.TimeoutError) and code is None:
        return StoreUnavailable(f"{action} failed: cannot reach ClickHouse: {message}")
    return StoreQueryError(f"{action} failed: {message}")


def _clickhouse_message(exc: BaseException) -> str:
    text = str(exc)
    # clickhouse-connect wraps the server's text ("Received ClickHouse exception, …, server response: Code: …");
    # keep ClickHouse's own words, which name the error.
    start = text.find("Code: ")
    return (text[start:] if start >= 0 else text or type(exc).__name__).strip()
