"""Bytes on the event log ⇄ Python values, with fastavro.

Two wire formats. Single-object encoding (the default; no registry needed): `C3 01`, the
writer schema's 8-byte CRC-64-AVRO fingerprint, the schemaless body. Confluent: `00`, a 4-byte
big-endian schema id from an injected id → schema mapping (no network here), the body.
`decode` accepts either, so consumers keep reading across a switch of format. The writer schema
is looked up by fingerprint or id among the schemas the codec knows, and the body is resolved to
the newest (reader) schema: old data comes back with new fields at their defaults.

Errors (one tree, none retryable: the same bytes never decode differently; send the message to
the dead-letter topic, or upgrade the reader on `UnknownSchemaError`):

    CodecError(ValueError)         also: a value the schema cannot encode
    ├── UnknownSchemaError         fingerprint or schema id not among the known writer schemas
    └── MalformedMessageError      bad header, or a body that does not match its writer schema

Encoding goes through `avro_writer.RecordWriter` (generated code, the same bytes as fastavro,
several times faster) where the schema allows, else through fastavro. `EventCodec.seal` gives an
event its chain hash and its wire bytes from one encoding.

Codec instances reuse one output buffer: use one per thread (one per event loop is enough).
`canonical_event_bytes` shares no state.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import operator
import sys
from collections.abc import Callable, Iterable, Mapping
from enum import Enum, StrEnum
from io import BytesIO
from typing import Any, ClassVar, Generic, TypeVar, cast, get_type_hints

from fastavro import parse_schema, schemaless_reader, schemaless_writer

from schemas import catalog
from schemas.avro_writer import RecordWriter, UnsupportedSchema
from schemas.catalog import Schema
from schemas.decisions import Decision
from schemas.events import GatewayEvent
from schemas.risk import RiskScore

T = TypeVar("T")
Record = dict[str, Any]

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
SINGLE_OBJECT_HEADER_SIZE = 10
CONFLUENT_MAGIC = b"\x00"
CONFLUENT_HEADER_SIZE = 5

# Python attribute → Avro field, where the audit column name differs from an older Python name.
EVENT_RENAMES: Mapping[str, str] = {"ts_us": "ts"}
# What a generated writer raises for a value its schema refuses (fastavro raises the same kinds).
_VALUE_ERRORS = (TypeError, ValueError, KeyError, AttributeError, OverflowError)
# The `hash` field of a sealed event: a string of 64 hex digits, so its length prefix is fixed.
_HASH_PREFIX = b"\x80\x01"
# String fields whose values recur across events (all events of a call share most of them, and a
# gateway has few instances, tenants, principals, servers, tools): the writer caches their encodings.
EVENT_REPEATED = frozenset({
    "stream_id", "gateway_instance", "protocol_era", "protocol_version", "transport", "session_id",
    "correlation_id", "tenant", "principal", "on_behalf_of", "client_addr", "server", "jsonrpc_id",
    "method", "tool", "resource_uri", "prompt_name", "trace_id",
})  # fmt: skip
_EMPTY_STRING = b"\x00"
# Copied per event: cheaper than `hashlib.sha256()`, which looks the algorithm up in OpenSSL each time.
_SHA256 = hashlib.sha256()


class CodecError(ValueError):
    """Bytes that cannot be decoded, or a value that cannot be encoded. Not retryable."""


class UnknownSchemaError(CodecError):
    """The writer schema is not one this reader knows: upgrade the reader. Not retryable."""


class MalformedMessageError(CodecError):
    """Not a well-formed message of a known schema: a poison message. Not retryable."""


class WireFormat(StrEnum):
    SINGLE_OBJECT = "single_object"
    CONFLUENT = "confluent"


def _compile(s: Schema) -> Schema:
    return cast(Schema, parse_schema(_interned(catalog.without_logical_types(s))))


def _interned(s: Any) -> Any:
    """Field names interned: fastavro uses them as the decoded dict's keys, and a constructor
    call matches interned keyword names by identity, but others by string comparison against
    every parameter (quadratic: 25 µs of a 40-field event's decode, measured)."""
    if isinstance(s, list):
        return [_interned(v) for v in s]
    if not isinstance(s, dict):
        return s
    out = {k: _interned(v) for k, v in s.items()}
    if isinstance(out.get("fields"), list):
        out["fields"] = [{**f, "name": sys.intern(f["name"])} for f in out["fields"]]
    return out


class RecordCodec:
    """Avro records as dicts: one reader schema (the newest) and every writer schema we can read.

    `registry` maps schema ids to self-contained schemas (JSON text or parsed), as a schema
    registry would serve them; in the Confluent format the codec writes with the highest id
    whose schema has the reader schema's fingerprint, and refuses to start without one.
    """

    def __init__(
        self,
        reader_schema: Schema,
        *,
        writer_schemas: Iterable[Schema] = (),
        wire: WireFormat = WireFormat.SINGLE_OBJECT,
        registry: Mapping[int, Schema | str] | None = None,
    ) -> None:
        self._reader = _compile(reader_schema)
        own = catalog.fingerprint(reader_schema)
        # None stands for "written with the reader schema": fastavro then skips resolution.
        self._by_fingerprint: dict[bytes, Schema | None] = {own: None}
        for s in writer_schemas:
            fp = catalog.fingerprint(s)
            if fp != own:
                self._by_fingerprint[fp] = _compile(s)
        self._by_id: dict[int, Schema | None] = {}
        for schema_id, text in (registry or {}).items():
            parsed: Schema = json.loads(text) if isinstance(text, str) else text
            self._by_id[schema_id] = None if catalog.fingerprint(parsed) == own else _compile(parsed)
        if wire is WireFormat.CONFLUENT:
            ids = sorted(i for i, w in self._by_id.items() if w is None)
            if not ids:
                raise UnknownSchemaError("the registry mapping has no id for the schema this codec writes")
            self._header = CONFLUENT_MAGIC + ids[-1].to_bytes(4, "big")
        else:
            self._header = SINGLE_OBJECT_MAGIC + own
        self.wire = wire
        self.fingerprint = own
        self._out = BytesIO()

    @property
    def header(self) -> bytes:
        """What precedes every body this codec writes (single-object or Confluent framing)."""
        return self._header

    def encode(self, record: Record) -> bytes:
        out = self._out
        out.seek(0)
        out.truncate()
        out.write(self._header)
        try:
            schemaless_writer(out, self._reader, record)
        except Exception as exc:  # fastavro: TypeError/ValueError/AttributeError/KeyError by case
            raise CodecError(f"value does not fit the schema: {exc!r}") from exc
        return out.getvalue()

    def decode(self, data: bytes) -> Record:
        writer, start = self._writer_of(data)
        resolve_to = None if writer is None else self._reader
        buf = BytesIO(data)
        buf.seek(start)
        try:
            record = cast(Record, schemaless_reader(buf, writer or self._reader, resolve_to))
        except Exception as exc:  # fastavro: EOFError, IndexError, UnicodeDecodeError, … by case
            raise MalformedMessageError(f"body does not match its writer schema: {exc!r}") from exc
        if buf.tell() != len(data):
            raise MalformedMessageError(f"{len(data) - buf.tell()} bytes left after the record")
        return record

    def _writer_of(self, data: bytes) -> tuple[Schema | None, int]:
        if data[:2] == SINGLE_OBJECT_MAGIC:
            if len(data) < SINGLE_OBJECT_HEADER_SIZE:
                raise MalformedMessageError("single-object header cut short")
            fp = data[2:SINGLE_OBJECT_HEADER_SIZE]
            try:
                return self._by_fingerprint[fp], SINGLE_OBJECT_HEADER_SIZE
            except KeyError:
                raise UnknownSchemaError(f"unknown writer schema fingerprint {fp.hex()}") from None
        if data[:1] == CONFLUENT_MAGIC:
            if len(data) < CONFLUENT_HEADER_SIZE:
                raise MalformedMessageError("Confluent header cut short")
            schema_id = int.from_bytes(data[1:CONFLUENT_HEADER_SIZE], "big")
            try:
                return self._by_id[schema_id], CONFLUENT_HEADER_SIZE
            except KeyError:
                raise UnknownSchemaError(f"unknown writer schema id {schema_id}") from None
        raise MalformedMessageError(f"neither single-object nor Confluent framing (starts {data[:2].hex()})")


class RecordFields(Generic[T]):
    """Dataclass ⇄ record dict, cheaply: one attrgetter call out, one constructor call in."""

    def __init__(self, cls: type[T], renames: Mapping[str, str] | None = None) -> None:
        self.cls = cls
        hints = get_type_hints(cls)
        names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        self.renames = dict(renames or {})
        self.names = tuple(names)
        self.avro_names = tuple(self.renames.get(n, n) for n in names)
        self._get: Callable[[T], tuple[Any, ...]] = operator.attrgetter(*names)
        # A dict lookup per enum field is several times cheaper than calling the Enum class.
        self._enums = tuple(
            (self.renames.get(n, n), {m.value: m for m in hints[n]})
            for n in names
            if isinstance(hints[n], type) and issubclass(hints[n], Enum)
        )
        # Per enum field (Avro name), the members a writer is given: see `RecordWriter`'s `enum_keys`.
        self.enum_members: dict[str, tuple[Any, ...]] = {avro: tuple(members.values()) for avro, members in self._enums}
        self._back = tuple((avro, py) for py, avro in self.renames.items())
        self._positional = not any(f.kw_only for f in dataclasses.fields(cls))  # type: ignore[arg-type]

    def to_record(self, obj: T) -> Record:
        return dict(zip(self.avro_names, self._get(obj), strict=False))

    def values(self, obj: T) -> tuple[Any, ...]:
        """The field values in Avro field order (what a `RecordWriter` takes)."""
        got = self._get(obj)
        return got if len(self.avro_names) > 1 else (got,)

    def from_record(self, record: Record) -> T:
        try:
            for name, members in self._enums:
                record[name] = members[record[name]]
        except KeyError as exc:
            raise MalformedMessageError(f"symbol {exc} is unknown to the Python enum") from None
        try:
            if self._positional:  # cheaper than keywords: ~30% of this step for the 40-field event
                return self.cls(*[record[n] for n in self.avro_names])
            for avro, py in self._back:
                record[py] = record.pop(avro)
            return self.cls(**record)
        except (TypeError, ValueError, KeyError) as exc:
            raise MalformedMessageError(f"record does not make a {self.cls.__name__}: {exc!r}") from exc


class DataclassCodec(Generic[T]):
    """One dataclass type ⇄ bytes, through its Avro record in `schemas/avsc/`."""

    value_type: ClassVar[type[Any]]
    fullname: ClassVar[str]
    renames: ClassVar[Mapping[str, str]] = {}
    split_at: ClassVar[str | None] = None  # a field the writer can leave out (see `EventCodec.seal`)
    repeated: ClassVar[frozenset[str]] = frozenset()  # string fields of recurring values

    def __init__(
        self,
        *,
        wire: WireFormat = WireFormat.SINGLE_OBJECT,
        registry: Mapping[int, Schema | str] | None = None,
        writer_schemas: Iterable[Schema] = (),
    ) -> None:
        """`registry`: schema id → schema, for the Confluent format. `writer_schemas`: extra old
        schemas to read, beyond the catalog's history."""
        self.fields: RecordFields[T] = RecordFields(self.value_type, self.renames)
        known = [*catalog.versions(self.fullname).values(), *writer_schemas]
        current = catalog.schema(self.fullname)
        self.records = RecordCodec(current, writer_schemas=known, wire=wire, registry=registry)
        self.version = catalog.version_of(current)
        self._writer = _writer_for(current, self.fields, self.split_at, self.repeated)
        self._split = None if self._writer is None else self._writer.split_object
        self._header = self.records.header  # a property call per event (~0.1 µs) shows in sealing

    def encode(self, value: T) -> bytes:
        writer = self._writer
        if writer is None:
            return self.records.encode(self.fields.to_record(value))
        try:
            return self._header + writer.write(self.fields.values(value))
        except _VALUE_ERRORS as exc:
            raise CodecError(f"value does not fit the schema: {exc!r}") from exc

    def decode(self, data: bytes) -> T:
        return self.fields.from_record(self.records.decode(data))


class EventCodec(DataclassCodec[GatewayEvent]):
    value_type = GatewayEvent
    fullname = catalog.GATEWAY_EVENT
    renames = EVENT_RENAMES
    split_at = "hash"
    repeated = EVENT_REPEATED

    def seal(self, event: GatewayEvent) -> bytes:
        """Set `event.hash` to `event_hash(event)` and return `encode(event)`, from one encoding.

        The chain hash covers the body with `hash` = "" and the wire carries it with the hash, so
        both are the bytes before `hash`, that field, and the bytes after it.
        """
        split = self._split
        if split is None or event.schema_version != self.version:
            event.hash = ""
            event.hash = event_hash(event)
            return self.encode(event)
        try:
            before, after = split(event)
        except _VALUE_ERRORS as exc:
            raise CodecError(f"value does not fit the schema: {exc!r}") from exc
        digest = _SHA256.copy()
        digest.update(before)
        digest.update(_EMPTY_STRING)
        digest.update(after)
        event.hash = sealed = digest.hexdigest()
        return b"".join((self._header, before, _HASH_PREFIX, sealed.encode(), after))


class RiskScoreCodec(DataclassCodec[RiskScore]):
    value_type = RiskScore
    fullname = catalog.RISK_SCORE


class DecisionCodec(DataclassCodec[Decision]):
    value_type = Decision
    fullname = catalog.DECISION


def _writer_for(schema: Schema, fields: RecordFields[Any], split_at: str | None,
                repeated: frozenset[str] = frozenset()) -> RecordWriter | None:
    """A generated writer taking the dataclass's values as they come, if the schema allows one."""
    try:
        writer = RecordWriter(catalog.without_logical_types(schema), split_at=split_at, repeated=repeated,
                              attributes=fields.names if len(fields.names) == len(schema["fields"]) else None,
                              enum_keys=fields.enum_members)
    except UnsupportedSchema:
        return None
    return writer if writer.fields == fields.avro_names else None


_EVENT_FIELDS = RecordFields(GatewayEvent, EVENT_RENAMES)


@functools.cache
def _event_schema(version: int) -> Schema:
    try:
        return _compile(catalog.versions(catalog.GATEWAY_EVENT)[version])
    except KeyError:
        raise UnknownSchemaError(f"no GatewayEvent schema with schema_version {version}") from None


@functools.cache
def _event_writer(version: int) -> RecordWriter | None:
    """The generated writer of one revision, if that revision's fields are the dataclass's (the current one's)."""
    schema = catalog.versions(catalog.GATEWAY_EVENT)[version]
    return _writer_for(schema, _EVENT_FIELDS, "hash", EVENT_REPEATED)


def _canonical_parts(event: GatewayEvent) -> tuple[bytes, bytes] | None:
    writer = _event_writer(event.schema_version)
    if writer is None or writer.split_object is None:
        return None
    try:
        return writer.split_object(event)
    except _VALUE_ERRORS as exc:
        raise CodecError(f"value does not fit the schema: {exc!r}") from exc


def canonical_event_bytes(event: GatewayEvent) -> bytes:
    """What the chain hash covers: the schemaless Avro encoding of `event` with `hash` = "".

    Everything else is covered, `prev_hash` and `seq` included. Encoded with the schema revision
    named by `event.schema_version`, so events written before a schema change still verify
    after it. Avro's binary encoding has one form per value, so this is deterministic.
    """
    schema = _event_schema(event.schema_version)  # refuses unknown revisions
    parts = _canonical_parts(event)
    if parts is not None:
        return parts[0] + _EMPTY_STRING + parts[1]
    record = _EVENT_FIELDS.to_record(event)
    record["hash"] = ""
    out = BytesIO()
    try:
        schemaless_writer(out, schema, record)
    except Exception as exc:
        raise CodecError(f"value does not fit the schema: {exc!r}") from exc
    return out.getvalue()


def event_hash(event: GatewayEvent) -> str:
    """SHA-256 hex of `canonical_event_bytes(event)`: the value of `event.hash` in a sound chain."""
    _event_schema(event.schema_version)  # refuses unknown revisions
    parts = _canonical_parts(event)
    if parts is None:
        return hashlib.sha256(canonical_event_bytes(event)).hexdigest()
    digest = hashlib.sha256(parts[0])
    digest.update(_EMPTY_STRING)
    digest.update(parts[1])
    return digest.hexdigest()
