"""Query results and verify reports as text for the CLI: an aligned table, JSON, CSV. Pure.

Machine formats (JSON, CSV) keep values exact: bytes as base64 (payloads are exact evidence and
may not be UTF-8), timestamps as ISO 8601 with µs, decimals as strings. The table is for people:
bytes shown as text, long cells cut with "…", control characters escaped so a payload cannot
forge lines of the table.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import math
from collections.abc import Sequence
from datetime import date, datetime
from decimal import Decimal
from enum import Enum
from typing import Any
from uuid import UUID

from consumers.compliance.report import Report
from consumers.store.base import QueryResult

MAX_CELL = 60
_ESCAPES = str.maketrans({"\n": "\\n", "\r": "\\r", "\t": "\\t"})


def json_value(value: Any) -> Any:
    """A JSON-native form of one cell, exact where the JSON types allow."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Enum):
        return json_value(value.value)
    if isinstance(value, Decimal | UUID):
        return str(value)
    if isinstance(value, dict):
        return {str(k): json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [json_value(v) for v in value]
    return str(value)


def iso(value: datetime) -> str:
    """ISO 8601 with µs; naive datetimes are UTC (how the store keeps time) and get the Z suffix."""
    if _is_utc(value):
        return value.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"
    return value.isoformat(timespec="microseconds")


def text_value(value: Any) -> str:
    """One cell for CSV: JSON text for composite values, "" for NULL."""
    v = json_value(value)
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, dict | list):
        return json.dumps(v, ensure_ascii=False, separators=(",", ":"))
    return str(v)


def _cell(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bytes | bytearray | memoryview):
        text = bytes(value).decode("utf-8", "replace")
    elif isinstance(value, datetime):
        text = value.replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds") if _is_utc(value) \
            else value.isoformat(sep=" ", timespec="microseconds")
    elif isinstance(value, str | int | float | Decimal | UUID | Enum):
        text = str(value.value if isinstance(value, Enum) else value)
    else:
        text = text_value(value)
    text = "".join(_printable(ch) for ch in text)
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"


def _printable(ch: str) -> str:
    if ch.isprintable():
        return ch
    return ch.translate(_ESCAPES) if ch in "\n\r\t" else f"\\x{ord(ch):02x}"


def _is_utc(value: datetime) -> bool:
    offset = value.utcoffset()
    return offset is None or not offset


def render_table(result: QueryResult) -> str:
    """Aligned columns, numbers right-aligned, with a row count: for a terminal."""
    cells = [[_cell(v) for v in row] for row in result.rows]
    widths = [len(c) for c in result.columns]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    numeric = [_is_numeric_type(t) for t in _types(result)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w)
                         for v, w, num in zip(values, widths, numeric, strict=True)).rstrip()

    out = [line(result.columns), "  ".join("-" * w for w in widths)]
    out.extend(line(row) for row in cells)
    out.append(f"({len(cells)} row{'' if len(cells) == 1 else 's'})")
    return "\n".join(out) + "\n"


def _types(result: QueryResult) -> list[str]:
    return result.types if len(result.types) == len(result.columns) else [""] * len(result.columns)


def _is_numeric_type(clickhouse_type: str) -> bool:
    inner = clickhouse_type.removeprefix("Nullable(").removeprefix("LowCardinality(")
    return inner.startswith(("Int", "UInt", "Float", "Decimal"))


def render_json(result: QueryResult) -> str:
    """An array of objects, one per row, keys in column order."""
    objects = [{c: json_value(v) for c, v in zip(result.columns, row, strict=True)} for row in result.rows]
    return json.dumps(objects, ensure_ascii=False, indent=2) + "\n"


def render_csv(result: QueryResult) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(result.columns)
    writer.writerows([text_value(v) for v in row] for row in result.rows)
    return buf.getvalue()


RENDERERS = {"table": render_table, "json": render_json, "csv": render_csv}


def render(result: QueryResult, fmt: str = "table") -> str:
    try:
        return RENDERERS[fmt](result)
    except KeyError:
        raise ValueError(f"unknown output format {fmt!r}: use one of {', '.join(RENDERERS)}") from None


def render_report(report: Report) -> str:
    """A verify report for people: the verdict first, then each stream's counts and findings."""
    c = report.counts
    verdict = "OK: no gap, altered row or bad checkpoint found" if report.ok else \
        f"FAILED: {len(report.problems)} problem(s) found"
    out = [verdict, f"{c['streams']} stream(s), {c['rows']} row(s), {c['checkpoints']} checkpoint(s) "
           f"({c['checkpoints_verified']} signature(s) verified), {c['payloads_checked']} payload hash(es) checked, "
           f"{c['payloads_truncated']} truncated payload(s) not re-hashed"]
    for s in report.streams:
        span = f"seq {s.first_seq}..{s.last_seq}" if s.first_seq is not None else "no rows"
        signed = f"last signed head seq {s.last_verified_head}" if s.last_verified_head is not None else \
            ("no verified checkpoint" if s.signatures_checked else "signatures not checked (no key)")
        out.append(f"\nstream {s.stream_id}: {'ok' if s.ok else 'FAILED'} — {s.rows} row(s), {span}, {signed}")
        for f in s.findings:
            where = f"seq {f.seq}" + (f" event_id {f.event_id}" if f.event_id else "")
            out.append(f"  {'PROBLEM' if f.problem else 'notice '} {f.kind}: {where}: {f.detail}")
        if s.findings_omitted:
            out.append(f"  … {s.findings_omitted} more finding(s) not listed; counts: {s.counts}")
    return "\n".join(out) + "\n"


def render_report_json(report: Report) -> str:
    return json.dumps(report.to_dict(), ensure_ascii=False, indent=2) + "\n"
