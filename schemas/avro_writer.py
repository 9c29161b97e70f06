"""Avro binary encoding of flat records by generated straight-line code: `RecordWriter`. Pure.

Every event is encoded twice on its way to the log (once for its chain hash, once for the wire),
and fastavro's generic writer walks the schema for each of a record's ~40 fields; a function
generated once per schema, doing only what each field's type needs, writes the same bytes several
times faster. `write_split` leaves one field out and returns the bytes before and after it, so the
chain hash (over the record with `hash` = "") and the wire bytes (with the hash) come from one
encoding.

Types: null, boolean, int, long, float, double, bytes, string, enum, fixed, and unions of null
with one of those (optional fields). A schema with any other field type raises
`UnsupportedSchema`: use fastavro for it. The bytes are those fastavro writes for the same values
(tests/schemas/test_avro_writer.py compares them); values fastavro would refuse raise here too
(`TypeError`, `ValueError`, `KeyError`, `AttributeError`, `OverflowError`), which callers map to
their own error.
"""

from __future__ import annotations

import keyword
import struct
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from schemas.catalog import Schema

__all__ = ["RecordWriter", "UnsupportedSchema"]

_LONG_MIN, _LONG_MAX = -(1 << 63), (1 << 63) - 1
_INT_MIN, _INT_MAX = -(1 << 31), (1 << 31) - 1
# Zigzag varints of the non-negative numbers below this, ready-made: small lengths and counts.
_SMALL = 4096
# Encoded strings of the `repeated` fields kept per writer (the cache is emptied when full), and
# the longest encoding kept: enough for a gateway's principals, tenants, sessions, servers, tools.
_CACHED_STRINGS = 4096
_CACHED_MAX_BYTES = 256


class UnsupportedSchema(ValueError):
    """A field type the generated writer does not handle."""


_PACK2, _PACK3, _PACK4, _PACK8 = (struct.Struct(f"{k}B").pack for k in (2, 3, 4, 8))


def _varint(n: int) -> bytes:
    """Avro's variable-length zigzag encoding of an already zigzagged non-negative int."""
    # No loop, one struct call per length: a timestamp (eight bytes) took 2 µs in a bytearray loop,
    # and struct.pack is cheaper than bytes() of a tuple.
    if n < 1 << 14:
        return _PACK2(n & 0x7F | 0x80, n >> 7) if n > 0x7F else bytes((n,))
    if n < 1 << 21:
        return _PACK3(n & 0x7F | 0x80, n >> 7 & 0x7F | 0x80, n >> 14)
    if n < 1 << 28:
        return _PACK4(n & 0x7F | 0x80, n >> 7 & 0x7F | 0x80, n >> 14 & 0x7F | 0x80, n >> 21)
    # Shifts and masks of one-digit ints are cheaper than those of the whole (multi-digit) number.
    lo, hi = n & 0xFFFFFFF, n >> 28
    if 1 << 21 <= hi < 1 << 28:  # 2**49 to 2**56: timestamps in µs
        return _PACK8(lo & 0x7F | 0x80, lo >> 7 & 0x7F | 0x80, lo >> 14 & 0x7F | 0x80, lo >> 21 | 0x80,
                      hi & 0x7F | 0x80, hi >> 7 & 0x7F | 0x80, hi >> 14 & 0x7F | 0x80, hi >> 21)
    return _PACK4(lo & 0x7F | 0x80, lo >> 7 & 0x7F | 0x80, lo >> 14 & 0x7F | 0x80, lo >> 21 | 0x80) + _varint(hi)


_SMALL_VARINTS = tuple(_varint(n << 1) for n in range(_SMALL))

# Varint bytes of `z >> 14` by that value, for zigzagged values of 2**14 and more: a varint is its
# low two 7-bit groups (both with the continuation bit), then the varint of the rest, and the rest
# of a timestamp in µs changes every 8 ms, of a sequence number every 8192 events. Bounded: emptied
# when full. Only `_long` fills it, with keys of valid longs only (1 to 2**50): the generated code
# looks a value up here before anything else, and what is not found (negative, too large, new)
# goes to `_long`.
_TAILS: dict[int, bytes] = {}
_TAILS_MAX = 1024
# Those low two groups, by `z & 0x3FFF`: one index instead of a struct call of four shifts and masks
# (the multi-digit ints of timestamps make each one cost). About 0.7 MB.
_LOW_GROUPS = tuple(bytes((i & 0x7F | 0x80, i >> 7 | 0x80)) for i in range(1 << 14))


def _long(n: int) -> bytes:
    if type(n) is int and 0 <= n <= _LONG_MAX:  # timestamps, sequence numbers, latencies
        if n < _SMALL:
            return _SMALL_VARINTS[n]
        z = n << 1
        if z < 1 << 14:
            return _PACK2(z & 0x7F | 0x80, z >> 7)
        tail = _TAILS.get(z >> 14)
        if tail is None:
            if len(_TAILS) >= _TAILS_MAX:
                _TAILS.clear()
            tail = _TAILS[z >> 14] = _varint(z >> 14)
        return _LOW_GROUPS[z & 0x3FFF] + tail
    if not isinstance(n, int):  # bool is an int to Avro writers too
        raise TypeError(f"{n!r} is not an integer")
    if not _LONG_MIN <= n <= _LONG_MAX:
        raise OverflowError(f"{n} does not fit an Avro long")
    return _varint((n << 1) ^ (n >> 63))


def _int(n: int) -> bytes:
    if isinstance(n, int) and not _INT_MIN <= n <= _INT_MAX:
        raise OverflowError(f"{n} does not fit an Avro int")
    return _long(n)


def _string(s: str) -> bytes:
    data = s.encode()  # strict UTF-8, as fastavro: a lone surrogate raises
    n = len(data)
    return (_SMALL_VARINTS[n] if n < _SMALL else _varint(n << 1)) + data


def _bytes(b: bytes) -> bytes:
    if type(b) is not bytes:
        if not isinstance(b, bytes | bytearray | memoryview):
            raise TypeError(f"{type(b).__name__} is not bytes")
        b = bytes(b)
    n = len(b)
    return (_SMALL_VARINTS[n] if n < _SMALL else _varint(n << 1)) + b


_DOUBLE = struct.Struct("<d").pack
_FLOAT = struct.Struct("<f").pack


def _fixed(size: int) -> Callable[[bytes], bytes]:
    def write(b: bytes) -> bytes:
        if not isinstance(b, bytes | bytearray | memoryview) or len(b) != size:
            raise ValueError(f"fixed field needs exactly {size} bytes")
        return bytes(b)

    return write


def _enum(symbols: Sequence[str], keys: Collection[str] = ()) -> dict[str, bytes]:
    # Keyed by symbol: a StrEnum member hashes and compares as its value, so both look up. A member
    # given in `keys` is the key itself: found by identity, it skips the string comparison (a
    # member is not an exact str, so that costs a rich compare call: ~35 ns a lookup).
    by_value = {str.__str__(k): k for k in keys if isinstance(k, str)}
    return {
        by_value.get(symbol, symbol): _SMALL_VARINTS[i] if i < _SMALL else _varint(i << 1)
        for i, symbol in enumerate(symbols)
    }


# Types written by one call of the helper bound to this name in the generated code's namespace.
_WRITER_CALLS = {"int": "_int", "double": "_double", "float": "_float"}


class _Codegen:
    """Source of one expression per field, and the helpers it refers to."""

    def __init__(self) -> None:
        cache: dict[str, bytes] = {}

        def remember(s: str) -> bytes:
            data = _string(s)  # refuses what is not a string first
            if type(s) is str and len(data) <= _CACHED_MAX_BYTES:
                if len(cache) >= _CACHED_STRINGS:
                    cache.clear()  # bounded; the values that repeat come back at once
                cache[s] = data
            return data

        self.env: dict[str, Any] = {
            "_long": _long, "_int": _int, "_string": _string, "_bytes": _bytes,
            "_double": _DOUBLE, "_float": _FLOAT, "_sv": _SMALL_VARINTS,
            "_sc": cache, "_remember": remember, "_tl": _TAILS, "_lg": _LOW_GROUPS,
        }  # fmt: skip

    def helper(self, value: Any) -> str:
        name = f"_h{len(self.env)}"
        self.env[name] = value
        return name

    def expr(self, field_type: Any, var: str, repeated: bool = False, enum_keys: Collection[str] = ()) -> str:
        t = field_type
        if isinstance(t, dict) and t.get("type") in ("enum", "fixed"):
            if t["type"] == "enum":
                return f"{self.helper(_enum(t['symbols'], enum_keys))}[{var}]"
            return f"{self.helper(_fixed(int(t['size'])))}({var})"
        if isinstance(t, dict):
            t = t["type"]  # a primitive with attributes (logicalType dropped by the codec, or kept: same wire)
            if isinstance(t, (dict, list)):
                raise UnsupportedSchema(f"nested type {field_type!r}")
        if isinstance(t, list):
            if len(t) == 2 and "null" in t:
                null_index = t.index("null")
                other_index = 1 - null_index
                other = t[other_index]
                inner = self.expr(other, var, repeated, enum_keys)
                null_bytes, other_bytes = _SMALL_VARINTS[null_index], _SMALL_VARINTS[other_index]
                return f"({null_bytes!r} if {var} is None else {other_bytes!r} + {inner})"
            raise UnsupportedSchema(f"union {t!r}: only null plus one type")
        if t == "string" and repeated:
            # One dict lookup (the str caches its hash) instead of encoding, measuring and
            # concatenating; only a str is remembered, so anything else still meets `_string`.
            return f"(_sc.get({var}) or _remember({var}))"
        if t == "string":
            # Inline, not a call per field: an empty string is one byte; a short one its length from
            # the table and its UTF-8 (`_string` takes the rest, and refuses what is not a string).
            return (f"(b'\\x00' if {var} == '' else _sv[_n] + _u if type({var}) is str and "
                    f"(_n := len(_u := {var}.encode())) < {_SMALL} else _string({var}))")
        if t == "long":
            # Small values from the table; larger ones (timestamps, sequence numbers) from the two
            # tables `_long` uses, inline while their tail is known, else through `_long` (which
            # refuses what is not a long, and learns the tail).
            return (f"(_sv[{var}] if type({var}) is int and 0 <= {var} < {_SMALL} else _lg[_z & 16383] + _t "
                    f"if type({var}) is int and (_t := _tl.get((_z := {var} << 1) >> 14)) is not None "
                    f"else _long({var}))")
        if t == "bytes":
            return (f"(_sv[_n] + {var} if type({var}) is bytes and (_n := len({var})) < {_SMALL} "
                    f"else _bytes({var}))")
        if t == "boolean":
            return f"(b'\\x01' if {var} else b'\\x00')"
        if t in _WRITER_CALLS:
            return f"{_WRITER_CALLS[t]}({var})"
        if t == "null":
            return f"(b'' if {var} is None else {self.helper(_not_null)}({var}))"
        raise UnsupportedSchema(f"field type {field_type!r}")


def _not_null(value: Any) -> bytes:
    raise TypeError(f"{value!r} is not null")


class RecordWriter:
    """Writes one record schema's body from a tuple of its field values, in schema order.

    `repeated`: string fields whose values recur from record to record (who, where, which tool);
    their encodings are kept in a bounded cache. Fields of unique values (ids, hashes) gain nothing
    from it and would only churn it.

    `attributes`: the attribute of an object holding each field, in schema order; with `split_at`,
    `split_object` then reads the object's attributes itself (no tuple of ~40 values in between).

    `enum_keys`: per enum field, the values it is usually given (a `StrEnum`'s members): looked up
    faster than other strings of the same symbols, which still work.
    """

    def __init__(self, schema: Schema, split_at: str | None = None, repeated: Collection[str] = (),
                 attributes: Sequence[str] | None = None,
                 enum_keys: Mapping[str, Collection[str]] | None = None) -> None:
        if schema.get("type") != "record":
            raise UnsupportedSchema("not a record schema")
        fields = schema["fields"]
        self.fields: tuple[str, ...] = tuple(f["name"] for f in fields)
        if attributes is not None and (
            len(attributes) != len(fields) or not all(a.isidentifier() and not keyword.iskeyword(a) for a in attributes)
        ):
            raise ValueError("attributes: one identifier per field")
        gen = _Codegen()
        names = [f"v{i}" for i in range(len(fields))]
        keys = enum_keys or {}
        exprs = [gen.expr(f["type"], name, f["name"] in repeated, keys.get(f["name"], ()))
                 for f, name in zip(fields, names, strict=True)]
        unpack = f"({', '.join(names)},) = values"
        source = [f"def write(values):\n    {unpack}\n    return b''.join(({', '.join(exprs)},))\n"]
        self.split_at = split_at
        if split_at is not None:
            at = self.fields.index(split_at)
            before, after = ", ".join(exprs[:at]), ", ".join(exprs[at + 1 :])
            body = f"    return b''.join(({before},)), b''.join(({after},))\n"
            source.append(f"def write_split(values):\n    {unpack}\n{body}")
            if attributes is not None:
                # Only the fields written: the one left out is not read at all.
                pairs = enumerate(zip(names, attributes, strict=True))
                reads = "".join(f"    {n} = o.{a}\n" for i, (n, a) in pairs if i != at)
                source.append(f"def split_object(o):\n{reads}{body}")
        namespace: dict[str, Any] = dict(gen.env)
        exec("\n".join(source), namespace)  # code built above from the schema's field types and identifiers
        self.write: Callable[[Sequence[Any]], bytes] = namespace["write"]
        # The encoding of the values before `split_at` and after it; that field itself is left out.
        self.write_split: Callable[[Sequence[Any]], tuple[bytes, bytes]] | None = namespace.get("write_split")
        self.split_object: Callable[[Any], tuple[bytes, bytes]] | None = namespace.get("split_object")
