"""audit.events rows back into `GatewayEvent`s: the inverse of `consumers/store/rows.py`. Pure.

A row is a mapping of column name → value, as a store query or an export reader returns it. The
columns are the event's fields, except `ts` (DateTime64(6)) for `ts_us`. Extra columns are
ignored, so the table can grow; missing ones take the field's default (and then the recomputed
hash will not match: `missing_event_columns` lets a caller refuse that up front instead).

Values are coerced by the field's type, because backends and formats disagree on representation:
a String column may come back as `bytes` or `str`, a DateTime64 as `datetime`, an ISO string or
µs, and CSV has only strings. An enum symbol the Python enum does not know is kept as the raw
string rather than refused: a tampered row must still reach the verifier, which then names it.

Errors: `RowMappingError` (consumers/compliance/errors.py) — a value that cannot be coerced at all.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import Enum
from typing import Any, get_type_hints

from consumers.compliance.errors import RowMappingError
from schemas.events import GatewayEvent

TS_COLUMN = "ts"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_TRUE = frozenset({"1", "true", "t", "yes", "y"})
_FALSE = frozenset({"0", "false", "f", "no", "n", ""})


def column_of(field_name: str) -> str:
    return TS_COLUMN if field_name == "ts_us" else field_name


def ts_to_us(value: Any) -> int:
    """A DateTime64(6) value in any of the shapes backends and exports give it → µs since the epoch, exactly."""
    if isinstance(value, bool):
        raise RowMappingError(f"not a timestamp: {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, datetime):
        # A naive value is UTC: that is how the store writes and how clickhouse-connect returns it.
        aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        return (aware - _EPOCH) // _MICROSECOND  # integer arithmetic: a float would lose µs
    if isinstance(value, Decimal):
        return int(value * 1_000_000)
    if isinstance(value, float):
        return round(value * 1_000_000)
    if isinstance(value, bytes | bytearray):
        value = bytes(value).decode()
    if isinstance(value, str):
        text = value.strip()
        if text.lstrip("-").isdigit():
            return int(text)
        try:
            return ts_to_us(datetime.fromisoformat(text))
        except ValueError:
            raise RowMappingError(f"not a timestamp: {value!r}") from None
    raise RowMappingError(f"not a timestamp: {value!r}")


def us_to_datetime(ts_us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=ts_us)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        # surrogateescape keeps non-UTF-8 bytes distinguishable, so the hash check, not this step, fails.
        return bytes(value).decode("utf-8", "surrogateescape")
    return str(value)


def _blob(value: Any) -> bytes:
    if value is None:
        return b""
    if isinstance(value, bytes):
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    raise RowMappingError(f"not bytes: {type(value).__name__}")


def _integer(value: Any) -> int:
    if isinstance(value, int):
        return int(value)
    try:
        return int(_text(value).strip())
    except ValueError:
        raise RowMappingError(f"not an integer: {value!r}") from None


def _optional_integer(value: Any) -> int | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return _integer(value)


def _flag(value: Any) -> bool:
    if isinstance(value, bool | int):
        return bool(value)
    text = _text(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise RowMappingError(f"not a boolean: {value!r}")


def _enum(members: Mapping[str, Enum]) -> Callable[[Any], Any]:
    def coerce(value: Any) -> Any:
        text = _text(value.value if isinstance(value, Enum) else value)
        return members.get(text, text)

    return coerce


def _coercer(annotation: Any) -> Callable[[Any], Any]:
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return _enum({str(m.value): m for m in annotation})
    simple: dict[Any, Callable[[Any], Any]] = {
        str: _text, bytes: _blob, bool: _flag, int: _integer, int | None: _optional_integer,
    }
    try:
        return simple[annotation]
    except KeyError:
        raise TypeError(f"GatewayEvent has a field type this mapping does not know: {annotation!r}") from None


_HINTS = get_type_hints(GatewayEvent)
_COERCE: dict[str, Callable[[Any], Any]] = {
    f.name: ts_to_us if f.name == "ts_us" else _coercer(_HINTS[f.name]) for f in dataclasses.fields(GatewayEvent)
}
# (field, column, the type a value needs no coercion from, coercer): from a store most values already
# have the field's type, so the common case costs no call (verify maps every row of the store).
_PLAN: tuple[tuple[str, str, type | None, Callable[[Any], Any]], ...] = tuple(
    (name, column_of(name), _HINTS[name] if _HINTS[name] in (str, bytes, bool, int) and name != "ts_us" else None,
     coerce)
    for name, coerce in _COERCE.items()
)
_REQUIRED = tuple(
    f.name for f in dataclasses.fields(GatewayEvent)
    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
)
EVENT_COLUMNS: tuple[str, ...] = tuple(column_of(f.name) for f in dataclasses.fields(GatewayEvent))


def missing_event_columns(columns: Sequence[str]) -> list[str]:
    """Event fields (as column names) a result lacks; each one makes every recomputed hash differ."""
    present = set(columns)
    return [c for c in EVENT_COLUMNS if c not in present and not (c == TS_COLUMN and "ts_us" in present)]


def row_to_event(row: Mapping[str, Any]) -> GatewayEvent:
    values: dict[str, Any] = {}
    for name, column, exact, coerce in _PLAN:
        if column in row:
            raw = row[column]
        elif name in row:
            raw = row[name]
        else:
            continue
        if type(raw) is exact:
            values[name] = raw
            continue
        try:
            values[name] = coerce(raw)
        except RowMappingError as exc:
            raise RowMappingError(f"column {column}: {exc}") from None
    absent = [column_of(n) for n in _REQUIRED if n not in values]
    if absent:
        raise RowMappingError(f"row has no {', '.join(absent)} column")
    return GatewayEvent(**values)


def row_dicts(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> Iterator[dict[str, Any]]:
    for row in rows:
        yield dict(zip(columns, row, strict=True))


def rows_to_events(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> Iterator[GatewayEvent]:
    """Events for a query result's rows (`QueryResult.columns`, `QueryResult.rows`), in row order."""
    for row in row_dicts(columns, rows):
        yield row_to_event(row)
