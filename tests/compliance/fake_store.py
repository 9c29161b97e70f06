"""An in-memory `AuditStore` that answers exactly the SQL shapes consumers/compliance/tools.py sends
(filters, a key-tuple cursor, ORDER BY, LIMIT), to test paging without a ClickHouse engine. Rows look
like clickhouse-connect's: `ts` a UTC datetime, `payload` bytes, plus a column the events do not have.
Anything else it is sent is answered from `canned`, or fails the test."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from consumers.compliance.rows_to_events import EVENT_COLUMNS, column_of, ts_to_us, us_to_datetime
from consumers.store.base import EVENTS_TABLE, QueryResult
from schemas.events import GatewayEvent

EXTRA_COLUMN = "_inserted_by"
_EQ = re.compile(r"(?<![(,] )\b(stream_id|tenant|principal) = \{(\w+):String\}")
_BOUND = re.compile(r"ts (>=|<) fromUnixTimestamp64Micro\(\{(\w+):Int64\}, 'UTC'\)")
_CURSOR = re.compile(r"\(([a-z_, ]+)\) (>=|>|=) \(")
_ORDER = re.compile(r"ORDER BY ([a-z_, ]+?)(?: LIMIT (\d+))?$")


def event_row(event: GatewayEvent) -> dict[str, Any]:
    row: dict[str, Any] = {column_of(k): v for k, v in event.to_dict().items()}
    row["ts"] = us_to_datetime(event.ts_us)
    for name in ("event_type", "kind", "direction", "outcome", "audit_mode"):
        row[name] = str(row[name])
    row[EXTRA_COLUMN] = "consumer-1"
    return row


class FakeStore:
    def __init__(self, events: Sequence[GatewayEvent] = (), columns: Sequence[str] | None = None) -> None:
        self.columns = list(columns) if columns is not None else [*EVENT_COLUMNS, EXTRA_COLUMN]
        self.rows: list[dict[str, Any]] = [event_row(e) for e in events]
        self.calls: list[str] = []
        self.canned: dict[str, QueryResult] = {}

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def insert(self, table: str, rows: Sequence[Mapping[str, Any]], dedup_token: str) -> None:
        raise AssertionError("the compliance tools never insert")

    async def execute_admin(self, sql: str) -> None:
        raise AssertionError("the compliance tools never run admin statements")

    async def query(self, sql: str, parameters: Mapping[str, Any] | None = None) -> QueryResult:
        self.calls.append(sql)
        params = dict(parameters or {})
        if sql in self.canned:
            return self.canned[sql]
        if sql == f"SELECT stream_id FROM {EVENTS_TABLE} GROUP BY stream_id ORDER BY stream_id":
            streams = sorted({r["stream_id"] for r in self.rows})
            return QueryResult(["stream_id"], ["LowCardinality(String)"], [(s,) for s in streams])
        assert sql.startswith(f"SELECT * FROM {EVENTS_TABLE} WHERE "), sql
        rows = list(self.rows)
        for column, name in _EQ.findall(sql):
            rows = [r for r in rows if r[column] == params[name]]
        for op, name in _BOUND.findall(sql):
            rows = [r for r in rows if (ts_to_us(r["ts"]) >= params[name]) == (op == ">=")]
        order = _ORDER.search(sql)
        assert order, sql
        key_columns = [c.strip() for c in order[1].split(",")]
        cursor = _CURSOR.search(sql)
        if cursor:
            columns = [c.strip() for c in cursor[1].split(",")]
            assert columns == key_columns, sql
            bound = tuple(params[f"k{i}"] for i in range(len(columns)))
            compare = {">=": tuple.__ge__, ">": tuple.__gt__, "=": tuple.__eq__}[cursor[2]]
            rows = [r for r in rows if compare(self._key(r, columns), bound)]
        rows.sort(key=lambda r: self._key(r, key_columns))
        if order[2]:
            rows = rows[: int(order[2])]
        return QueryResult(self.columns, self._types(), [tuple(r.get(c) for c in self.columns) for r in rows])

    @staticmethod
    def _key(row: Mapping[str, Any], columns: Sequence[str]) -> tuple[Any, ...]:
        return tuple(ts_to_us(row[c]) if c == "ts" else row[c] for c in columns)

    def _types(self) -> list[str]:
        types = {"ts": "DateTime64(6, 'UTC')", "seq": "UInt64", "payload_size": "UInt64", "redactions": "UInt32",
                 "schema_version": "UInt32", "error_code": "Nullable(Int64)", "latency_us": "Nullable(Int64)",
                 "payload_truncated": "Bool", "stream_id": "LowCardinality(String)"}
        return [types.get(c, "String") for c in self.columns]
