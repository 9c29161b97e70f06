"""Avro object container files from schemaless bodies, for ClickHouse's `Avro` input format (pure).

ClickHouse reads Avro only as container files: a header naming the writer schema, then blocks of
records. The events on the log are schemaless bodies behind a small header (schemas/codec.py),
so a batch is one container with one block: the bodies concatenated as they are, nothing decoded
or re-encoded in Python. Record boundaries are not marked inside a block; the bodies must be whole,
well-formed records of the container's schema (the audit consumer scans each one first).

Format (Avro 1.11 spec, "Object Container Files"): `Obj\\x01`, the file metadata as an Avro map
(`avro.schema`, `avro.codec` = null), a 16-byte sync marker; each block is the record count and its
byte size (zigzag varints), the records, the sync marker again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

MAGIC = b"Obj\x01"


def zigzag(n: int) -> bytes:
    """An Avro long: zigzag, then base-128 varint, low groups first."""
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _string(data: bytes) -> bytes:
    return zigzag(len(data)) + data


class AvroContainer:
    """Container files of one writer schema; logical types in it (timestamp-micros) steer ClickHouse's mapping."""

    def __init__(self, schema: Mapping[str, Any]) -> None:
        self.schema_json = json.dumps(schema, separators=(",", ":")).encode()
        # Any 16 bytes do; derived from the schema so that equal batches make equal files.
        self.sync = hashlib.sha256(self.schema_json).digest()[:16]
        metadata = zigzag(2) + _string(b"avro.schema") + _string(self.schema_json) + _string(b"avro.codec")
        self.header = MAGIC + metadata + _string(b"null") + zigzag(0) + self.sync

    def build(self, bodies: Sequence[bytes]) -> bytes:
        """One file holding `bodies` (whole records of this schema) as one block; no block when empty."""
        if not bodies:
            return self.header
        return b"".join((self.header, zigzag(len(bodies)), zigzag(sum(map(len, bodies))), *bodies, self.sync))
