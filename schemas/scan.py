"""Checking an Avro body without decoding it: `BodyScanner`.

A consumer that hands the encoded bodies to a store able to read Avro itself (ClickHouse's `Avro`
input format) still has to tell a poison message from a good one before the batch goes out, and
needs a few fields (the event id, the time) on the way. Decoding every field with fastavro only to
throw the values away costs more than everything else the consumer does per event; this checks the
structure with generated straight-line code, about twice as fast, and builds only the picked values.

A scanner accepts a body only if every Avro reader reads it the same way, which is a little less
than fastavro accepts: fastavro also takes any non-zero boolean byte as true, negative enum and union
indexes as counted from the end, and varints longer than 10 bytes (wrapping), which ClickHouse's
reader refuses. So: booleans are 0 or 1, indexes in range and not negative, varints at most 10
bytes, lengths not negative and inside the body, strings valid UTF-8, and the record ends where the
body ends. Whatever a scanner accepts, `RecordCodec.decode` decodes to the same values; whatever the
codec decodes, re-encoded, a scanner accepts (tests/schemas/test_scan.py checks both on mutated
bodies). A caller hands what the scanner refuses to the codec, which has the last word.

Types: every Avro type but recursive records. Rejections raise `MalformedMessageError`. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, cast

from fastavro import parse_schema

from schemas.catalog import Schema
from schemas.codec import MalformedMessageError

_PICKABLE = frozenset({"string", "long", "int", "enum"})


def wide_varint(data: bytes, pos: int, first: int) -> tuple[int, int]:
    """A zigzag varint whose first byte, already read, is `first`: (value, position after it)."""
    n = first & 0x7F
    shift = 7
    b = first
    while b & 0x80:
        if shift == 63 and data[pos] > 1:
            raise MalformedMessageError("a varint longer than 64 bits")
        b = data[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        shift += 7
    return (n >> 1) ^ -(n & 1), pos


def length(data: bytes, pos: int, first: int) -> tuple[int, int]:
    """A string or bytes length that is not one small non-negative byte."""
    n, pos = wide_varint(data, pos, first)
    if n < 0:
        raise MalformedMessageError(f"negative length {n}")
    return n, pos


def index(data: bytes, pos: int, first: int, count: int, what: str) -> tuple[int, int]:
    """An enum or union index that is not one small non-negative byte."""
    i, pos = wide_varint(data, pos, first)
    if not 0 <= i < count:
        raise MalformedMessageError(f"{what} index {i} out of range")
    return i, pos


def skip_varint(data: bytes, pos: int) -> int:
    """The position after a varint whose first byte, already read, had its continuation bit set."""
    return wide_varint(data, pos, data[pos - 1])[1]


class _Source:
    """The generated function's text, with fresh variable names."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._counter = 0

    def var(self, stem: str) -> str:
        self._counter += 1
        return f"{stem}{self._counter}"

    def emit(self, indent: int, line: str) -> None:
        self.lines.append("    " * indent + line)


class BodyScanner:
    """Checks schemaless bodies of one record schema; returns the values of the top-level fields `pick`.

    `scan(data, start)` reads the body at `data[start:]`. Picked fields must be strings, ints, longs
    or enums (an enum's value is its symbol).
    """

    def __init__(self, schema: Schema, pick: Sequence[str] = ()) -> None:
        self._named: dict[str, Schema] = {}
        parsed = parse_schema(schema, named_schemas=self._named)
        if not isinstance(parsed, dict) or parsed.get("type") != "record":
            raise ValueError("a BodyScanner reads records")
        fields = {f["name"]: f["type"] for f in parsed["fields"]}
        for name in pick:
            kind = self._resolve(fields.get(name))
            if kind is None or self._kind(kind) not in _PICKABLE:
                raise ValueError(f"cannot pick {name!r}: pick top-level string, int, long or enum fields")
        self.pick = tuple(pick)
        self._constants: dict[str, Any] = {
            "wide": wide_varint, "length": length, "index": index, "skip": skip_varint,
            "Malformed": MalformedMessageError,
        }  # fmt: skip
        strict = self._function("strict", parsed, regions=False)
        namespace = dict(self._constants)
        exec(compile(strict, f"<BodyScanner {parsed['name']} strict>", "exec"), namespace)
        self._constants["strict"] = namespace["strict"]
        self.source = self._function("scan", parsed, regions=True)
        namespace = dict(self._constants)
        exec(compile(self.source, f"<BodyScanner {parsed['name']}>", "exec"), namespace)
        self._scan = cast(Callable[[bytes, int], tuple[Any, ...]], namespace["scan"])

    def _function(self, name: str, parsed: Schema, *, regions: bool) -> str:
        """The text of a scanning function; see `_emit` for `regions`."""
        self._regions = regions
        src = _Source()
        src.emit(0, f"def {name}(d, p):")
        src.emit(1, "start = a = p")
        src.emit(1, "texts = []")
        src.emit(1, "try:")
        picked: dict[str, str] = {}
        for f in parsed["fields"]:
            target = src.var("v") if f["name"] in self.pick else None
            self._emit(src, 2, f["type"], target, (parsed["name"],))
            if target is not None:
                picked[f["name"]] = target
        # Lengths are not checked against the body one by one: a value running past the end makes
        # the next read raise IndexError, or leaves `p` past the end, both caught here.
        src.emit(1, "except IndexError:")
        src.emit(2, "raise Malformed('the body ends inside a value') from None")
        src.emit(1, "except UnicodeDecodeError as exc:")
        src.emit(2, "raise Malformed(f'a string is not UTF-8: {exc}') from None")
        src.emit(1, "if p != len(d):")
        src.emit(2, "raise Malformed(f'{len(d) - p} bytes left after the record' if p < len(d) "
                    "else 'the body ends inside a value')")  # fmt: skip
        if regions:
            # All ASCII, so every string is UTF-8; otherwise the strict scan looks at each string.
            src.emit(1, "texts.append(d[a:p])")
            src.emit(1, "if not b''.join(texts).isascii():")
            src.emit(2, "return strict(d, start)")
        else:
            # One decode for all strings: an ASCII separator stops a sequence cut short in one string
            # from being completed by the next, so the joined text is valid UTF-8 iff every string is.
            src.emit(1, "try:")
            src.emit(2, "b'\\n'.join(texts).decode()")
            src.emit(1, "except UnicodeDecodeError as exc:")
            src.emit(2, "raise Malformed(f'a string is not UTF-8: {exc}') from None")
        src.emit(1, f"return ({''.join(picked[name] + ', ' for name in self.pick)})")
        return "\n".join(src.lines)

    def scan(self, data: bytes, start: int = 0) -> tuple[Any, ...]:
        return self._scan(data, start)

    def _resolve(self, schema: Any) -> Any:
        return self._named.get(schema, schema) if isinstance(schema, str) else schema

    @staticmethod
    def _kind(schema: Any) -> str:
        if isinstance(schema, list):
            return "union"
        return cast(str, schema if isinstance(schema, str) else schema["type"])

    def _constant(self, value: Any) -> str:
        name = f"k{len(self._constants)}"
        self._constants[name] = value
        return name

    # Each reader below starts with the common case, a varint of one byte with a small non-negative
    # value (an even byte under 0x80), and calls a helper for anything else.
    #
    # Strings must be UTF-8. The strict scan keeps every string and decodes them all at the end. The
    # fast one (`regions`) keeps the runs of the body between the bytes that may be above 0x7F
    # without being text (varints of two bytes or more, bytes, fixed and floating-point values) and
    # only checks they are ASCII, which most bodies' texts are; when they are not, it hands the body
    # to the strict scan. `a` is where the current run started; `cut` ends it before the value at `q`.

    def _cut(self, q: str) -> str:
        return f"texts.append(d[a:{q}]); " if self._regions else ""

    def _resume(self) -> str:
        return "; a = p" if self._regions else ""

    def _long(self, src: _Source, indent: int, var: str) -> None:
        src.emit(indent, f"{var} = d[p]; p += 1")
        src.emit(indent, f"if {var} < 0x80: {var} = ({var} >> 1) ^ -({var} & 1)")
        src.emit(indent, f"else: {self._cut('p - 1')}{var}, p = wide(d, p, {var}){self._resume()}")

    def _length(self, src: _Source, indent: int, var: str, *, text: bool) -> None:
        # Two bytes inline too: hex digests (64 characters) and payloads have two-byte lengths.
        cut = self._cut("p - 1") if text else ""
        resume = self._resume() if text else ""
        src.emit(indent, f"{var} = d[p]; p += 1")
        src.emit(indent, f"if {var} < 0x80 and not {var} & 1: {var} >>= 1")
        src.emit(indent, f"elif {var} & 0x81 == 0x80 and d[p] < 0x80: "
                         f"{cut}{var} = ({var} & 0x7E | d[p] << 7) >> 1; p += 1{resume}")  # fmt: skip
        src.emit(indent, f"else: {cut}{var}, p = length(d, p, {var}){resume}")

    def _index(self, src: _Source, indent: int, var: str, count: int, what: str, *, value: bool = True) -> None:
        slow = f"{self._cut('p - 1')}{var}, p = index(d, p, {var}, {count}, '{what}'){self._resume()}"
        src.emit(indent, f"{var} = d[p]; p += 1")
        if value:
            src.emit(indent, f"if {var} < {2 * count} and not {var} & 1: {var} >>= 1")
            src.emit(indent, f"else: {slow}")
        else:
            src.emit(indent, f"if {var} >= {2 * count} or {var} & 1: {slow}")

    def _emit(self, src: _Source, indent: int, schema: Any, target: str | None, records: tuple[str, ...]) -> None:
        """Code that reads one value of `schema` at `p`, leaving `p` after it; `target` gets the value."""
        schema = self._resolve(schema)
        kind = self._kind(schema)
        if kind == "null":
            src.emit(indent, "pass")
        elif kind == "boolean":
            src.emit(indent, "p += 1")
            src.emit(indent, "if d[p - 1] > 1: raise Malformed('a boolean byte is ' + str(d[p - 1]))")
        elif kind in ("int", "long"):
            if target:
                self._long(src, indent, target)
            else:
                src.emit(indent, "p += 1")
                src.emit(indent, "if d[p - 1] & 0x80:")
                src.emit(indent + 1, f"q = p - 1{'; texts.append(d[a:q])' if self._regions else ''}")
                src.emit(indent + 1, "while d[p] & 0x80: p += 1")
                src.emit(indent + 1, f"p += 1{self._resume()}")
                src.emit(indent + 1, "if p - q > 9: skip(d, q + 1)")  # ten bytes or more: is it too wide?
        elif kind in ("float", "double", "fixed"):
            size = {"float": 4, "double": 8}.get(kind) or int(schema["size"])
            src.emit(indent, f"{self._cut('p')}p += {size}{self._resume()}")
            src.emit(indent, "d[p - 1]")  # raises IndexError when the value runs past the body
        elif kind == "bytes":
            n = src.var("n")
            if self._regions:
                src.emit(indent, "texts.append(d[a:p])")
            self._length(src, indent, n, text=False)
            src.emit(indent, f"p += {n}{self._resume()}")
        elif kind == "string":
            n = src.var("n")
            self._length(src, indent, n, text=True)
            if not self._regions:
                src.emit(indent, f"if {n}: texts.append(d[p:p + {n}])")
            if target:
                src.emit(indent, f"{target} = d[p:p + {n}].decode()")
            src.emit(indent, f"p += {n}")
        elif kind == "enum":
            i = src.var("i")
            self._index(src, indent, i, len(schema["symbols"]), "enum", value=bool(target))
            if target:
                src.emit(indent, f"{target} = {self._constant(tuple(schema['symbols']))}[{i}]")
        elif kind == "union":
            i = src.var("u")
            self._index(src, indent, i, len(schema), "union")
            for number, branch in enumerate(schema):
                src.emit(indent, f"{'if' if number == 0 else 'elif'} {i} == {number}:")
                self._emit(src, indent + 1, branch, None, records)
        elif kind in ("record", "error"):
            name = schema["name"]
            if name in records:
                raise NotImplementedError(f"recursive record {name}: decode it instead")
            for f in schema["fields"]:
                self._emit(src, indent, f["type"], None, (*records, name))
        elif kind in ("array", "map"):
            # Blocks of items until a zero count; a negative count is followed by the block's size.
            count, block = src.var("c"), src.var("s")
            src.emit(indent, "while True:")
            self._long(src, indent + 1, count)
            src.emit(indent + 1, f"if {count} == 0: break")
            src.emit(indent + 1, f"if {count} < 0:")
            src.emit(indent + 2, f"{count} = -{count}")
            self._long(src, indent + 2, block)
            src.emit(indent + 1, f"for _ in range({count}):")
            if kind == "map":
                self._emit(src, indent + 2, "string", None, records)
            self._emit(src, indent + 2, schema["items"] if kind == "array" else schema["values"], None, records)
        else:
            raise NotImplementedError(f"Avro type {kind!r}")
