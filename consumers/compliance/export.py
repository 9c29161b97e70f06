"""Audit exports for auditors: Parquet, CSV and JSON lines, written page by page, and read back.

Every value is kept exactly, so an exported row's hash can be recomputed offline (`read_export`
→ `rows_to_events` → `verify`): `ts` to the µs (ISO 8601 in text formats, timestamp[us, UTC] in
Parquet), the payload as base64 in the text formats (it is exact bytes, not always UTF-8) and as
binary in Parquet. Other columns keep the store's names and, in Parquet, their ClickHouse types.

pyarrow is imported only when Parquet is written or read: the text commands stay quick to start.
"""

from __future__ import annotations

import base64
import csv
import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any, Protocol

from consumers.compliance.errors import ExportFormatError
from consumers.compliance.render import json_value, text_value
from consumers.compliance.rows_to_events import TS_COLUMN, ts_to_us

FORMATS = ("parquet", "csv", "jsonl")
BINARY_COLUMNS = frozenset({"payload"})
_SUFFIXES = {".parquet": "parquet", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
_INT_TYPES = {f"{s}Int{b}" for s in ("", "U") for b in (8, 16, 32, 64)}
_TZ = re.compile(r"DateTime(?:64)?\((?:\d+\s*,\s*)?'([^']+)'\)")


def format_of(path: Path, fmt: str | None = None) -> str:
    chosen = fmt or _SUFFIXES.get(path.suffix.lower())
    if chosen not in FORMATS:
        raise ExportFormatError(f"unknown export format {chosen or path.suffix!r}: use one of {', '.join(FORMATS)}")
    return chosen


def _blob(value: Any) -> bytes:
    if value is None:
        return b""
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    return bytes(value)


def export_value(column: str, value: Any) -> Any:
    """One cell as the text formats carry it."""
    if column in BINARY_COLUMNS:
        return base64.b64encode(_blob(value)).decode("ascii")
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "replace")
    return json_value(value)


class ExportWriter(Protocol):
    def write(self, columns: Sequence[str], types: Sequence[str], rows: Sequence[Sequence[Any]]) -> None: ...

    def close(self) -> None: ...


class JsonLinesWriter:
    def __init__(self, path: Path) -> None:
        self._out: IO[str] = path.open("w", encoding="utf-8", newline="\n")

    def write(self, columns: Sequence[str], types: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        for row in rows:
            obj = {c: export_value(c, v) for c, v in zip(columns, row, strict=True)}
            self._out.write(json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n")

    def close(self) -> None:
        self._out.close()


class CsvWriter:
    def __init__(self, path: Path) -> None:
        self._out: IO[str] = path.open("w", encoding="utf-8", newline="")
        self._csv = csv.writer(self._out, lineterminator="\n")
        self._header = False

    def write(self, columns: Sequence[str], types: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        if not self._header:
            self._csv.writerow(columns)
            self._header = True
        for row in rows:
            self._csv.writerow([text_value(export_value(c, v)) for c, v in zip(columns, row, strict=True)])

    def close(self) -> None:
        self._out.close()


class ParquetWriter:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._writer: Any = None
        self._schema: Any = None

    def write(self, columns: Sequence[str], types: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        import pyarrow as pa  # type: ignore[import-untyped]
        import pyarrow.parquet as pq  # type: ignore[import-untyped]

        if self._schema is None:
            kinds = list(types) if len(types) == len(columns) else [""] * len(columns)
            self._schema = pa.schema([pa.field(c, _arrow_type(pa, c, t)) for c, t in zip(columns, kinds, strict=True)])
            self._writer = pq.ParquetWriter(str(self._path), self._schema, compression="zstd")
        arrays = [
            pa.array([_arrow_value(f.type, pa, c, row[i]) for row in rows], type=f.type)
            for i, (c, f) in enumerate(zip(columns, self._schema, strict=True))
        ]
        self._writer.write_table(pa.Table.from_arrays(arrays, schema=self._schema))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        else:
            self._path.write_bytes(b"")  # never given even the columns: nothing a Parquet schema could say


def _arrow_type(pa: Any, column: str, clickhouse_type: str) -> Any:
    t = clickhouse_type
    while t.startswith(("Nullable(", "LowCardinality(")):
        t = t[t.index("(") + 1: -1]
    if column in BINARY_COLUMNS:
        return pa.binary()
    if t.startswith("DateTime") or (not t and column == TS_COLUMN):
        tz = _TZ.match(t)
        return pa.timestamp("us", tz=tz[1] if tz else "UTC")
    if t in _INT_TYPES:
        return getattr(pa, t.lower())()
    if t in ("Float32", "Float64"):
        return getattr(pa, t.lower())()
    if t == "Bool":
        return pa.bool_()
    if t == "Date" or t == "Date32":
        return pa.date32()
    if t.startswith("Array("):
        return pa.list_(_arrow_type(pa, "", t[len("Array("): -1]))
    return pa.string()  # String, Enum, UUID, Decimal and the rest: text keeps them exact


def _arrow_value(arrow_type: Any, pa: Any, column: str, value: Any) -> Any:
    if value is None and column not in BINARY_COLUMNS:
        return None
    if pa.types.is_binary(arrow_type):
        return _blob(value)
    if pa.types.is_timestamp(arrow_type):
        return ts_to_us(value)  # as µs: pyarrow would read a naive datetime in local time on some paths
    if pa.types.is_string(arrow_type):
        v = export_value(column, value)
        return v if isinstance(v, str) else text_value(v)
    if pa.types.is_boolean(arrow_type):
        return bool(value)
    return value


def open_writer(path: Path, fmt: str | None = None) -> ExportWriter:
    chosen = format_of(path, fmt)
    if chosen == "parquet":
        return ParquetWriter(path)
    if chosen == "csv":
        return CsvWriter(path)
    return JsonLinesWriter(path)


def read_export(path: Path, fmt: str | None = None) -> Iterator[dict[str, Any]]:
    """The rows of an export, as dicts a `row_to_event` call accepts (payload back to bytes)."""
    chosen = format_of(path, fmt)
    if chosen == "parquet":
        yield from _read_parquet(path)
        return
    with path.open(encoding="utf-8", newline="") as f:
        records: Iterator[dict[str, Any]]
        records = csv.DictReader(f) if chosen == "csv" else (json.loads(line) for line in f if line.strip())
        for record in records:
            for column in BINARY_COLUMNS & record.keys():
                record[column] = base64.b64decode(record[column] or "", validate=True)
            yield record


def _read_parquet(path: Path) -> Iterator[dict[str, Any]]:
    if path.stat().st_size == 0:
        return
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(str(path)).iter_batches():
        yield from batch.to_pylist()
