"""consumers/compliance/tools.py over an in-memory store: read-only queries, paged verify, exports."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from consumers.compliance.errors import ExportFormatError, IncompleteAuditSchema
from consumers.compliance.export import read_export
from consumers.compliance.rows_to_events import EVENT_COLUMNS, row_to_event
from consumers.compliance.tools import audit_export, audit_query, audit_verify
from consumers.compliance.verify import verify
from consumers.store.base import QueryResult, StoreReadOnly
from schemas.events import GatewayEvent
from tests.compliance.chains import KEY, T0, ChainBuilder
from tests.compliance.fake_store import FakeStore


def two_streams() -> tuple[ChainBuilder, ChainBuilder]:
    a, b = ChainBuilder("stream-a"), ChainBuilder("stream-b", tenant="globex")
    for i in range(4):
        a.messages(3, principal=f"agent-{i % 2}")
        a.checkpoint()
        b.messages(2)
    b.truncated(b'{"r":"' + bytes(range(256)) * 4 + b'"}', prefix=50)  # not UTF-8: exact bytes must survive
    return a, b


async def test_query_refuses_writes_before_the_store_sees_them() -> None:
    store = FakeStore()
    for sql in ("INSERT INTO audit.events VALUES (1)", "ALTER TABLE audit.events DELETE WHERE 1",
                "SELECT 1; DROP TABLE audit.events", "SELECT * FROM file('/etc/passwd')"):
        with pytest.raises(StoreReadOnly, match="query refused"):
            await audit_query(store, sql)
    assert store.calls == []
    store.canned["SELECT count() FROM audit.events"] = QueryResult(["count()"], ["UInt64"], [(0,)])
    assert (await audit_query(store, "SELECT count() FROM audit.events")).rows == [(0,)]


@pytest.mark.parametrize("page_rows", [1, 2, 3, 7, 20_000])
async def test_paged_verify_matches_the_in_memory_check(page_rows: int) -> None:
    a, b = two_streams()
    a.at(5).tool = "altered"
    kept = [e for e in [*a.events, *b.events] if (e.stream_id, e.seq) != ("stream-b", 4)]
    # Redelivered rows make groups of one seq that straddle or fill a page.
    kept += [replace(a.at(3)), replace(a.at(3)), replace(a.at(3)), replace(b.at(2))]
    store = FakeStore(kept)
    paged = await audit_verify(store, KEY, page_rows=page_rows)
    in_memory = verify(kept, KEY)
    assert paged.to_dict() == in_memory.to_dict()
    assert [(f.stream_id, f.kind, f.seq) for f in paged.problems] == [
        ("stream-a", "hash_mismatch", 5), ("stream-b", "gap", 4)]
    assert paged.counts["duplicate_row"] == 4 and paged.counts["rows"] == len(kept)


async def test_verify_named_streams_only() -> None:
    a, b = two_streams()
    report = await audit_verify(FakeStore([*a.events, *b.events]), KEY, ["stream-b"])
    assert [s.stream_id for s in report.streams] == ["stream-b"] and report.ok


async def test_verify_refuses_a_table_missing_hashed_columns() -> None:
    a, _ = two_streams()
    columns = [c for c in EVENT_COLUMNS if c != "on_behalf_of"]
    with pytest.raises(IncompleteAuditSchema, match="on_behalf_of"):
        await audit_verify(FakeStore(a.events, columns), KEY)


def partial_files(directory: Path) -> list[Path]:
    return list(directory.glob("*.partial"))


def exported_events(path: Path) -> list[GatewayEvent]:
    return [row_to_event(r) for r in read_export(path)]


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
async def test_export_round_trips_every_field(tmp_path: Path, fmt: str) -> None:
    a, b = two_streams()
    events = [*a.events, *b.events]
    out = tmp_path / f"audit.{fmt}"
    summary = await audit_export(FakeStore(events), T0, T0 + 10**9, fmt=fmt, out_path=out, page_rows=4)
    assert summary.rows == len(events) and summary.fmt == fmt
    assert summary.sha256 == hashlib.sha256(out.read_bytes()).hexdigest()
    assert not partial_files(tmp_path)
    back = exported_events(out)
    key = lambda e: (e.ts_us, e.stream_id, e.seq)  # noqa: E731
    assert back == sorted(events, key=key)
    report = verify(back, KEY)
    assert report.ok and report.counts["checkpoints_verified"] == 4


async def test_export_bounds_and_filters(tmp_path: Path) -> None:
    a, b = two_streams()
    store = FakeStore([*a.events, *b.events])
    start = datetime.fromtimestamp((T0 + 3_000) / 1e6, UTC)
    summary = await audit_export(store, start, T0 + 9_000, fmt="jsonl", out_path=tmp_path / "x.jsonl")
    assert [(e.stream_id, e.seq) for e in exported_events(tmp_path / "x.jsonl")] == [
        ("stream-a", 3), ("stream-b", 3), ("stream-a", 4), ("stream-b", 4), ("stream-a", 5), ("stream-b", 5),
        ("stream-a", 6), ("stream-b", 6), ("stream-a", 7), ("stream-b", 7), ("stream-a", 8), ("stream-b", 8)]
    assert summary.start_us == T0 + 3_000
    await audit_export(store, T0, T0 + 10**9, tenant="acme", principal="agent-1", out_path=tmp_path / "y.csv")
    picked = exported_events(tmp_path / "y.csv")
    assert picked and {(e.tenant, e.principal) for e in picked} == {("acme", "agent-1")}
    # A filtered export still lets each row's hash be recomputed; only the links span rows it left out.
    assert {f.kind for f in verify(picked, KEY).problems} <= {"gap", "checkpoint_mismatch"}


async def test_export_of_nothing_still_names_the_columns(tmp_path: Path) -> None:
    a, _ = two_streams()
    for fmt in ("parquet", "csv", "jsonl"):
        out = tmp_path / f"none.{fmt}"
        summary = await audit_export(FakeStore(a.events), T0 - 10, T0, out_path=out)
        assert summary.rows == 0 and summary.fmt == fmt and list(read_export(out)) == []
    assert (tmp_path / "none.csv").read_text().startswith("event_type,kind,direction,")


async def test_export_arguments(tmp_path: Path) -> None:
    store = FakeStore()
    with pytest.raises(ExportFormatError):
        await audit_export(store, T0, T0 + 1, fmt="xlsx", out_path=tmp_path / "a")
    with pytest.raises(ValueError, match="after its start"):
        await audit_export(store, T0, T0, out_path=tmp_path / "a.csv")
    summary = await audit_export(store, T0, T0 + 1, out_path=tmp_path / "no-suffix")
    assert summary.fmt == "parquet"
