"""The audit-store interface the consumers and the compliance tools use.

Writes are inserts only (the store is append-only), each batch with an insert deduplication
token so a replayed batch writes nothing twice. Reads are SQL, and the read path refuses anything
but a read (`StoreReadOnly`).

Errors (one small tree):
    StoreError              base
    ├── StoreUnavailable    cannot reach or open the store now; retryable
    ├── StoreReadOnly       a query tried to write; not retryable
    └── StoreQueryError     ClickHouse rejected the SQL (its message is kept); not retryable
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

DATABASE = "audit"
EVENTS_TABLE = "audit.events"
DECISIONS_TABLE = "audit.decisions"
RISK_TABLE = "audit.risk_scores"
CHECKPOINTS_TABLE = "audit.checkpoints"


class StoreError(Exception):
    retryable = False


class StoreUnavailable(StoreError):
    retryable = True


class StoreReadOnly(StoreError):
    pass


class StoreQueryError(StoreError):
    pass


@dataclass(frozen=True, slots=True)
class QueryResult:
    columns: list[str]
    types: list[str]
    rows: list[tuple[Any, ...]] = field(default_factory=list)


class AuditStore(Protocol):
    async def open(self) -> None:
        """Connect (or start the embedded engine) and apply pending migrations."""

    async def insert(self, table: str, rows: Sequence[Mapping[str, Any]], dedup_token: str) -> None:
        """Insert rows; the same `dedup_token` inserted again writes nothing (replay safety)."""

    async def query(self, sql: str, parameters: Mapping[str, Any] | None = None) -> QueryResult:
        """Run a read-only query; writes raise StoreReadOnly."""

    async def execute_admin(self, sql: str) -> None:
        """Run DDL or other statements (migrations, tests that tamper on purpose); never for users."""

    async def close(self) -> None: ...


@runtime_checkable
class AvroInserts(Protocol):
    """A store whose engine reads Avro itself (ClickHouse's `Avro` input format).

    Both backends are: the audit consumer hands them the events' Avro bodies as they are on the log,
    in one container file per batch (`avro_container.AvroContainer`), and ClickHouse decodes them, much
    faster than decoding in Python and building rows. Fields map to `columns` by name; fields that
    are not among `columns` are skipped.
    """

    async def insert_avro(self, table: str, columns: Sequence[str], container: bytes, dedup_token: str) -> None:
        """Insert the records of an Avro container file; the same `dedup_token` again writes nothing."""
