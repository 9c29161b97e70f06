"""The Avro schemas: `avsc/<namespace>.<Name>.avsc`, loaded lazily (no I/O at import).

Files reference shared named types by full name (`mcpgw.events.Kind`); `schema()` returns the
record with every reference inlined once, which is what fingerprints and the codec need.
Superseded revisions live in `avsc/history/<namespace>.<Name>.v<N>.avsc`, self-contained, so
that data written with them stays readable and their chain hashes stay verifiable.

How to evolve a schema: copy the current file, inlined (`json.dumps(schema(name))`), to
`history/` as `.v<N>.avsc`; add fields with defaults to the current file; bump the
`schema_version` field's default and the dataclass's. Upgrade readers before writers.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from pathlib import Path
from typing import Any, TypeAlias, cast

from fastavro.schema import fingerprint as _fingerprint
from fastavro.schema import to_parsing_canonical_form

AVSC_DIR = Path(__file__).with_name("avsc")
HISTORY_DIR = AVSC_DIR / "history"

GATEWAY_EVENT = "mcpgw.events.GatewayEvent"
RISK_SCORE = "mcpgw.risk.RiskScore"
DECISION = "mcpgw.decisions.Decision"

Schema: TypeAlias = dict[str, Any]

_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
_NAMED = frozenset({"record", "error", "enum", "fixed"})
_HISTORY_NAME = re.compile(r"^(?P<name>.+)\.v(?P<version>\d+)\.avsc$")


def schema(fullname: str) -> Schema:
    """The current schema of `fullname`, references inlined. A fresh copy: callers may mutate it."""
    return copy.deepcopy(_expanded(fullname))


def load_file(path: Path) -> Schema:
    """A schema file, references resolved against the files beside it (e.g. a test's old copy)."""
    return cast(Schema, _expand(json.loads(path.read_text()), "", set(), path.parent))


def versions(fullname: str) -> dict[int, Schema]:
    """Every revision of `fullname` we can read, by `schema_version`; the current one included."""
    found = {version_of(s): s for s in _history(fullname)}
    current = schema(fullname)
    found[version_of(current)] = current
    return found


def version_of(record_schema: Schema) -> int:
    for f in record_schema["fields"]:
        if f["name"] == "schema_version":
            return int(f["default"])
    return 0


def fingerprint(s: Schema) -> bytes:
    """CRC-64-AVRO of the Parsing Canonical Form, as the 8 bytes single-object encoding carries.

    fastavro's hex is already in the little-endian byte order the spec puts on the wire, so it is
    converted as is, not reversed (FIELD-NOTES.md).
    """
    return bytes.fromhex(_fingerprint(to_parsing_canonical_form(s), "CRC-64-AVRO"))


def without_logical_types(s: Any) -> Any:
    """The same wire schema with logicalType annotations dropped.

    Our Python types hold timestamps as integer microseconds; leaving `timestamp-micros` in would
    make fastavro build a datetime for every timestamp read only for us to undo it. The Parsing
    Canonical Form, hence the fingerprint, does not include logical types, so nothing on the wire
    changes.
    """
    if isinstance(s, dict):
        return {k: without_logical_types(v) for k, v in s.items() if k != "logicalType"}
    if isinstance(s, list):
        return [without_logical_types(v) for v in s]
    return s


@functools.cache
def _expanded(fullname: str) -> Schema:
    return cast(Schema, _expand(_read(AVSC_DIR, fullname), "", set(), AVSC_DIR))


def _history(fullname: str) -> list[Schema]:
    if not HISTORY_DIR.is_dir():
        return []
    out = []
    for path in sorted(HISTORY_DIR.glob(f"{fullname}.v*.avsc")):
        match = _HISTORY_NAME.match(path.name)
        if match and match["name"] == fullname:
            out.append(load_file(path))
    return out


def _read(directory: Path, fullname: str) -> Any:
    return json.loads((directory / f"{fullname}.avsc").read_text())


def _expand(node: Any, namespace: str, seen: set[str], directory: Path) -> Any:
    """Inline named-type references; a name defined once is referenced by name afterwards (Avro rule)."""
    if isinstance(node, str):
        if node in _PRIMITIVES:
            return node
        full = node if "." in node or not namespace else f"{namespace}.{node}"
        if full in seen:
            return full
        return _expand(_read(directory, full), namespace, seen, directory)
    if isinstance(node, list):
        return [_expand(n, namespace, seen, directory) for n in node]
    kind = node["type"]
    if kind in _NAMED:
        name = node["name"]
        if "." in name:
            namespace = name.rsplit(".", 1)[0]
        else:
            namespace = node.get("namespace", namespace)
            name = f"{namespace}.{name}" if namespace else name
        seen.add(name)
        out = dict(node)
        if kind in ("record", "error"):
            out["fields"] = [{**f, "type": _expand(f["type"], namespace, seen, directory)} for f in node["fields"]]
        return out
    if kind == "array":
        return {**node, "items": _expand(node["items"], namespace, seen, directory)}
    if kind == "map":
        return {**node, "values": _expand(node["values"], namespace, seen, directory)}
    return {**node, "type": _expand(kind, namespace, seen, directory)}
