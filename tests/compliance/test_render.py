"""consumers/compliance/render.py: tables for people, JSON and CSV that keep values exact."""

from __future__ import annotations

import base64
import csv
import io
import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from consumers.compliance.render import render, render_report, render_report_json
from consumers.compliance.verify import verify
from consumers.store.base import QueryResult
from tests.compliance.chains import KEY, ChainBuilder

WHEN = datetime(2026, 11, 21, 12, 0, 0, 1250, tzinfo=UTC)
RESULT = QueryResult(
    ["tool", "calls", "last", "payload", "error_code", "reasons"],
    ["LowCardinality(String)", "UInt64", "DateTime64(6, 'UTC')", "String", "Nullable(Int64)", "Array(String)"],
    [("payments__charge", 12, WHEN, b"\xff\x00ok", None, ["burst", "secret"]),
     ("fs__delete", 3, WHEN, b'line one\nline two', -32001, [])],
)


def test_table_is_aligned_and_cannot_be_forged_by_a_payload() -> None:
    lines = render(RESULT, "table").splitlines()
    assert lines[0].split() == RESULT.columns
    assert len({len(line.rstrip()) for line in lines[:2]}) <= 2
    assert lines[0].index("calls") + len("calls") == lines[2].index("12") + 2  # numbers right-aligned
    assert "line one\\nline two" in lines[3] and "\\x00" in lines[2] and "NULL" in lines[2]
    assert "2026-11-21 12:00:00.001250" in lines[2]
    assert lines[-1] == "(2 rows)" and len(lines) == 5


def test_long_cells_are_cut() -> None:
    text = render(QueryResult(["detail"], ["String"], [("x" * 500,)]), "table")
    assert "x" * 59 + "…" in text and "x" * 61 not in text


def test_json_is_an_array_of_exact_objects() -> None:
    objects = json.loads(render(RESULT, "json"))
    assert objects[0] == {"tool": "payments__charge", "calls": 12, "last": "2026-11-21T12:00:00.001250Z",
                          "payload": base64.b64encode(b"\xff\x00ok").decode(), "error_code": None,
                          "reasons": ["burst", "secret"]}
    assert json.loads(render(QueryResult(["d"], ["Decimal(38, 2)"], [(Decimal("1.10"),)]), "json")) == [{"d": "1.10"}]


def test_csv() -> None:
    rows = list(csv.reader(io.StringIO(render(RESULT, "csv"))))
    assert rows[0] == RESULT.columns
    assert rows[1][3:] == [base64.b64encode(b"\xff\x00ok").decode(), "", '["burst","secret"]']
    assert rows[2][3] == base64.b64encode(b"line one\nline two").decode() and rows[2][4] == "-32001"


def test_unknown_format() -> None:
    with pytest.raises(ValueError, match="table, json, csv"):
        render(RESULT, "xml")


def test_report_text_and_json() -> None:
    b = ChainBuilder()
    b.messages(3)
    b.checkpoint()
    b.at(2).tool = "changed"
    report = verify(b.without(3), KEY)
    text = render_report(report)
    assert text.startswith("FAILED: 2 problem(s) found")
    assert "PROBLEM hash_mismatch: seq 2 event_id " + b.at(2).event_id in text
    assert "PROBLEM gap: seq 3" in text and "last signed head seq 3" in text
    data = json.loads(render_report_json(report))
    assert data["ok"] is False and data["counts"]["gap"] == 1
    assert [f["kind"] for f in data["streams"][0]["findings"]] == ["hash_mismatch", "gap"]
    b2 = ChainBuilder()
    b2.messages(1)
    assert render_report(verify(b2.events, KEY)).startswith("OK:")
