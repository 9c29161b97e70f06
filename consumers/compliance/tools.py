"""The compliance commands over an `AuditStore`: `mcpgw audit query|verify|export` without the CLI.

Reads page through `audit.events` by a key (`seq` within a stream for verify; `ts, stream_id,
seq` for export) rather than OFFSET, so each page is an index range and millions of rows stream
through in bounded memory. A page that ends inside a group of rows sharing its last key is cut
before that group, and the next page starts at it, so duplicate rows are never skipped or split.

Errors: `StoreReadOnly` for a query that is not a read (raised here before the store sees it),
the store's own `StoreError`s, and `consumers/compliance/errors.py`.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from consumers.compliance.errors import ExportFormatError, IncompleteAuditSchema, RowMappingError
from consumers.compliance.export import FORMATS, ExportWriter, format_of, open_writer
from consumers.compliance.render import render, render_csv, render_json, render_report, render_table
from consumers.compliance.report import Report
from consumers.compliance.rows_to_events import missing_event_columns, row_dicts, row_to_event, ts_to_us
from consumers.compliance.sql import check_read_only
from consumers.compliance.verify import DEFAULT_MAX_FINDINGS, StreamVerifier
from consumers.store.base import EVENTS_TABLE, AuditStore, QueryResult

__all__ = [
    "ExportSummary", "audit_export", "audit_query", "audit_verify", "list_streams", "render", "render_csv",
    "render_json", "render_report", "render_table",
]

DEFAULT_PAGE_ROWS = 20_000


@dataclass(frozen=True, slots=True)
class _KeyColumn:
    column: str
    param_type: str
    sql: str  # how the bound parameter `{p}` becomes a value comparable with the column
    to_param: Callable[[Any], Any]


_SEQ = _KeyColumn("seq", "UInt64", "{p}", int)
_STREAM = _KeyColumn("stream_id", "String", "{p}", str)
_TS = _KeyColumn("ts", "Int64", "fromUnixTimestamp64Micro({p}, 'UTC')", ts_to_us)  # µs: exact whatever the backend


async def audit_query(store: AuditStore, sql: str, parameters: Mapping[str, Any] | None = None) -> QueryResult:
    """Read-only SQL over the audit store; anything but a read is refused (`StoreReadOnly`)."""
    check_read_only(sql)
    return await store.query(sql, parameters)


async def list_streams(store: AuditStore) -> list[str]:
    result = await store.query(f"SELECT stream_id FROM {EVENTS_TABLE} GROUP BY stream_id ORDER BY stream_id")
    return [_text(row[0]) for row in result.rows]


async def audit_verify(store: AuditStore, key: bytes | str | None, streams: Sequence[str] | None = None, *,
                       page_rows: int = DEFAULT_PAGE_ROWS, max_findings: int = DEFAULT_MAX_FINDINGS) -> Report:
    """Check every stream (or the named ones): gaps, altered rows, broken links, payloads, checkpoints."""
    names = list(streams) if streams is not None else await list_streams(store)
    report = Report()
    for stream_id in names:
        verifier = StreamVerifier(stream_id, key, max_findings=max_findings)
        async for page in _pages(store, "stream_id = {stream:String}", {"stream": stream_id}, (_SEQ,), page_rows):
            missing = missing_event_columns(page.columns)
            if missing:
                raise IncompleteAuditSchema(f"{EVENTS_TABLE} has no {', '.join(missing)} column(s): the chain hash "
                                            f"covers them, so no row could be verified")
            for row in row_dicts(page.columns, page.rows):
                try:
                    event = row_to_event(row)
                except RowMappingError as exc:
                    raise RowMappingError(f"stream {stream_id} seq {row.get('seq')}: {exc}") from None
                verifier.feed(event)
        report.streams.append(verifier.finish())
    return report


@dataclass(frozen=True, slots=True)
class ExportSummary:
    path: Path
    fmt: str
    rows: int
    sha256: str  # of the written file, for the auditor's record of what was handed over
    start_us: int
    end_us: int
    tenant: str | None
    principal: str | None


async def audit_export(store: AuditStore, start: datetime | int | str, end: datetime | int | str,
                       tenant: str | None = None, principal: str | None = None, fmt: str | None = None, *,
                       out_path: Path | str, page_rows: int = DEFAULT_PAGE_ROWS) -> ExportSummary:
    """Rows with start <= ts < end (naive datetimes are UTC), optionally one tenant's or principal's,
    ordered by (ts, stream_id, seq). `fmt`: parquet, csv or jsonl; by default from the file suffix,
    else parquet. The file appears only when complete (written beside it, then renamed)."""
    path = Path(out_path)
    chosen = fmt or (format_of(path) if path.suffix.lower() in (".csv", ".jsonl", ".ndjson") else "parquet")
    if chosen not in FORMATS:
        raise ExportFormatError(f"unknown export format {chosen!r}: use one of {', '.join(FORMATS)}")
    start_us, end_us = ts_to_us(start), ts_to_us(end)
    if end_us <= start_us:
        raise ValueError(f"the export's end ({end}) must be after its start ({start})")
    where = ["ts >= fromUnixTimestamp64Micro({start:Int64}, 'UTC')",
             "ts < fromUnixTimestamp64Micro({end:Int64}, 'UTC')"]
    params: dict[str, Any] = {"start": start_us, "end": end_us}
    if tenant is not None:
        where.append("tenant = {tenant:String}")
        params["tenant"] = tenant
    if principal is not None:
        where.append("principal = {principal:String}")
        params["principal"] = principal
    partial = path.with_name(path.name + ".partial")
    writer = open_writer(partial, chosen)
    rows = 0
    try:
        async for page in _pages(store, " AND ".join(where), params, (_TS, _STREAM, _SEQ), page_rows):
            await asyncio.to_thread(writer.write, page.columns, page.types, page.rows)
            rows += len(page.rows)
    except BaseException:
        await asyncio.to_thread(_discard, writer, partial)
        raise
    digest = await asyncio.to_thread(_publish, writer, partial, path)
    return ExportSummary(path, chosen, rows, digest, start_us, end_us, tenant, principal)


def _discard(writer: ExportWriter, partial: Path) -> None:
    writer.close()
    partial.unlink(missing_ok=True)


def _publish(writer: ExportWriter, partial: Path, path: Path) -> str:
    writer.close()
    partial.replace(path)
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


async def _pages(store: AuditStore, where: str, params: Mapping[str, Any], key: Sequence[_KeyColumn],
                 page_rows: int) -> AsyncIterator[QueryResult]:
    """Every row matching `where`, ordered by `key`, one page at a time (the first page even when empty)."""
    columns = ", ".join(k.column for k in key)
    bound = ", ".join(k.sql.format(p=f"{{k{i}:{k.param_type}}}") for i, k in enumerate(key))
    base = f"SELECT * FROM {EVENTS_TABLE} WHERE {where}"
    cursor: tuple[Any, ...] | None = None
    op = ">="
    while True:
        after = f" AND ({columns}) {op} ({bound})" if cursor is not None else ""
        result = await store.query(f"{base}{after} ORDER BY {columns} LIMIT {page_rows}",
                                   {**params, **_key_params(cursor)})
        if len(result.rows) < page_rows:
            yield result
            return
        positions = [result.columns.index(k.column) for k in key]
        last = _key_of(result.rows[-1], key, positions)
        cut = len(result.rows)
        while cut and _key_of(result.rows[cut - 1], key, positions) == last:
            cut -= 1
        if cut:
            yield QueryResult(result.columns, result.types, result.rows[:cut])
            cursor, op = last, ">="
            continue
        # One key fills the page: take that whole group in one query, then move past it.
        group = await store.query(f"{base} AND ({columns}) = ({bound}) ORDER BY {columns}",
                                  {**params, **_key_params(last)})
        yield group
        cursor, op = last, ">"


def _key_of(row: Sequence[Any], key: Sequence[_KeyColumn], positions: Sequence[int]) -> tuple[Any, ...]:
    return tuple(k.to_param(row[p]) for k, p in zip(key, positions, strict=True))


def _key_params(cursor: tuple[Any, ...] | None) -> dict[str, Any]:
    return {} if cursor is None else {f"k{i}": v for i, v in enumerate(cursor)}


def _text(value: Any) -> str:
    return bytes(value).decode() if isinstance(value, bytes | bytearray | memoryview) else str(value)
