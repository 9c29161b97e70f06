"""The Python types and the `.avsc` files cannot drift apart: names, order, types, defaults and
optionality, enum symbols; and the records carry the audit-store columns of DESIGN.md §3."""

from __future__ import annotations

import ast
import dataclasses
import types
from enum import Enum
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import pytest

from schemas import catalog
from schemas.codec import EVENT_RENAMES
from schemas.decisions import Decision, DecisionAction, DecisionScope
from schemas.events import Direction, GatewayEvent, Kind
from schemas.risk import RiskScore

PAIRS: list[tuple[type[Any], str, dict[str, str]]] = [
    (GatewayEvent, catalog.GATEWAY_EVENT, dict(EVENT_RENAMES)),
    (RiskScore, catalog.RISK_SCORE, {}),
    (Decision, catalog.DECISION, {}),
]
IDS = [p[1] for p in PAIRS]
TIMESTAMPS = {"ts", "expires_at", "window_start", "window_end"}

AUDIT_COLUMNS = {
    catalog.GATEWAY_EVENT: (
        "ts event_id stream_id seq prev_hash hash kind direction outcome tenant principal session_id server method "
        "tool jsonrpc_id error_code latency_us payload payload_sha256 payload_size redactions trace_id"
    ),
    catalog.DECISION: "ts decision_id action scope subject reason source expires_at risk_score",
    catalog.RISK_SCORE: "ts tenant principal session_id tool score reasons",
}


def _strip_null(avro: Any) -> tuple[bool, Any]:
    if isinstance(avro, list) and len(avro) == 2 and avro[0] == "null":
        return True, avro[1]
    return False, avro


def _check_type(py: Any, avro: Any, where: str) -> None:
    """Assert the Avro type `avro` is the one the Python annotation `py` stands for."""
    origin = get_origin(py)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(py) if a is not type(None)]
        assert len(args) == 1 and type(None) in get_args(py), f"{where}: only `X | None` unions are mapped"
        nullable, inner = _strip_null(avro)
        assert nullable, f"{where}: Python optional, Avro {avro!r} is not [\"null\", T]"
        _check_type(args[0], inner, where)
        return
    assert not _strip_null(avro)[0], f"{where}: Avro nullable, Python {py!r} is not optional"
    if origin is list:
        assert isinstance(avro, dict) and avro["type"] == "array", f"{where}: want an array, got {avro!r}"
        _check_type(get_args(py)[0], avro["items"], where + "[]")
        return
    if origin is dict:
        assert get_args(py)[0] is str, f"{where}: Avro map keys are strings"
        assert isinstance(avro, dict) and avro["type"] == "map", f"{where}: want a map, got {avro!r}"
        _check_type(get_args(py)[1], avro["values"], where + "{}")
        return
    if isinstance(py, type) and issubclass(py, Enum):
        assert isinstance(avro, dict) and avro["type"] == "enum", f"{where}: want an enum, got {avro!r}"
        assert avro["name"].rsplit(".", 1)[-1] == py.__name__, f"{where}: enum name {avro['name']} vs {py.__name__}"
        assert avro["symbols"] == [m.value for m in py], f"{where}: enum symbols differ from {py.__name__}"
        return
    name = avro["type"] if isinstance(avro, dict) else avro
    logical = avro.get("logicalType") if isinstance(avro, dict) else None
    allowed = {str: {"string"}, int: {"int", "long"}, bool: {"boolean"}, bytes: {"bytes"}, float: {"double"}}[py]
    assert name in allowed, f"{where}: Python {py.__name__}, Avro {name}"
    field_name = where.split(".")[-1].rstrip("[]{}")
    if field_name in TIMESTAMPS:
        assert (name, logical) == ("long", "timestamp-micros"), f"{where}: timestamps are long timestamp-micros"
    else:
        assert logical is None, f"{where}: unexpected logicalType {logical}"


def _avro_default(avro_type: Any, value: Any, py: Any) -> Any:
    """An Avro JSON default as the Python value the dataclass would hold."""
    if isinstance(avro_type, list):
        avro_type = avro_type[0]  # a union's default has its first branch's type
    name = avro_type["type"] if isinstance(avro_type, dict) else avro_type
    if name == "bytes":
        return value.encode("latin-1")  # Avro JSON spells bytes as code points 0-255
    if name == "enum":
        return py(value)
    return value


@pytest.mark.parametrize(("cls", "fullname", "renames"), PAIRS, ids=IDS)
def test_same_fields_in_the_same_order(cls: type[Any], fullname: str, renames: dict[str, str]) -> None:
    py_names = [renames.get(f.name, f.name) for f in dataclasses.fields(cls)]
    avro_names = [f["name"] for f in catalog.schema(fullname)["fields"]]
    assert py_names == avro_names


@pytest.mark.parametrize(("cls", "fullname", "renames"), PAIRS, ids=IDS)
def test_same_types(cls: type[Any], fullname: str, renames: dict[str, str]) -> None:
    hints = get_type_hints(cls)
    avro = {f["name"]: f for f in catalog.schema(fullname)["fields"]}
    for f in dataclasses.fields(cls):
        name = renames.get(f.name, f.name)
        _check_type(hints[f.name], avro[name]["type"], f"{cls.__name__}.{name}")


@pytest.mark.parametrize(("cls", "fullname", "renames"), PAIRS, ids=IDS)
def test_same_defaults(cls: type[Any], fullname: str, renames: dict[str, str]) -> None:
    hints = get_type_hints(cls)
    avro = {f["name"]: f for f in catalog.schema(fullname)["fields"]}
    for f in dataclasses.fields(cls):
        field = avro[renames.get(f.name, f.name)]
        if f.default is not dataclasses.MISSING:
            py_default: Any = f.default
        elif f.default_factory is not dataclasses.MISSING:
            py_default = f.default_factory()
        else:
            assert "default" not in field, f"{f.name}: required in Python, defaulted in Avro"
            continue
        assert "default" in field, f"{f.name}: defaulted in Python, required in Avro"
        py_type = get_args(hints[f.name])[0] if get_origin(hints[f.name]) is types.UnionType else hints[f.name]
        assert _avro_default(field["type"], field["default"], py_type) == py_default, f.name
        assert type(_avro_default(field["type"], field["default"], py_type)) is type(py_default), f.name


@pytest.mark.parametrize("fullname", list(AUDIT_COLUMNS))
def test_records_carry_the_audit_columns(fullname: str) -> None:
    names = {f["name"] for f in catalog.schema(fullname)["fields"]}
    assert set(AUDIT_COLUMNS[fullname].split()) <= names


def test_audit_vocabularies() -> None:
    assert {k.value for k in Kind} == {"request", "response", "error", "notification", "lifecycle"}
    assert {"agent_to_gateway", "gateway_to_agent", "gateway_to_upstream", "upstream_to_gateway"} <= {
        d.value for d in Direction
    }
    assert [a.value for a in DecisionAction] == ["block", "unblock"]
    assert [s.value for s in DecisionScope] == ["principal", "session", "tenant", "tool", "server"]


def test_files_are_named_by_full_name() -> None:
    files = sorted(catalog.AVSC_DIR.glob("*.avsc"))
    assert files
    for path in files:
        s = catalog.load_file(path)
        full = s["name"] if "." in s["name"] else f"{s['namespace']}.{s['name']}"
        assert path.name == f"{full}.avsc"


def test_revisions_only_add_fields_with_defaults() -> None:
    for fullname in IDS:
        current = {f["name"]: f for f in catalog.schema(fullname)["fields"]}
        for version, old in catalog.versions(fullname).items():
            assert catalog.version_of(old) == version
            old_names = {f["name"] for f in old["fields"]}
            assert old_names <= set(current), f"{fullname} v{version}: fields are never removed or renamed"
            for name, f in current.items():
                assert name in old_names or "default" in f, f"{fullname}.{name}: added without a default"


def test_schemas_package_imports_neither_ingress_nor_consumers() -> None:
    for path in Path(catalog.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                roots = {(node.module or "").split(".")[0]}
            else:
                continue
            assert not roots & {"ingress", "consumers", "mcpgw", "aiohttp", "aiokafka"}, f"{path.name}: {roots}"
