"""The compliance tools on the real engine: rows written by the store's own row mapping into chDB,
tampered with directly in the engine (as someone with write access to the tables could), then
verified, queried and exported through `consumers/compliance/tools.py`."""

from __future__ import annotations

import importlib
import json
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from consumers.compliance.export import read_export
from consumers.compliance.report import FindingKind
from consumers.compliance.rows_to_events import row_to_event
from consumers.compliance.tools import audit_export, audit_query, audit_verify, render
from consumers.compliance.verify import verify
from consumers.store.base import EVENTS_TABLE, AuditStore, StoreReadOnly
from schemas.events import GatewayEvent
from tests.compliance.chains import KEY, T0, ChainBuilder

pytestmark = pytest.mark.integration


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[AuditStore]:
    try:
        module = importlib.import_module("consumers.store.chdb_store")
    except ImportError as exc:
        pytest.skip(f"chDB store unavailable: {exc}")
    opened: AuditStore = module.ChdbStore(tmp_path / "store")
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


def chains() -> tuple[ChainBuilder, ChainBuilder]:
    a, b = ChainBuilder("stream-a"), ChainBuilder("stream-b", tenant="globex")
    for i in range(3):
        a.messages(4, principal=f"agent-{i % 2}")
        a.checkpoint()
        b.messages(3)
    b.truncated(b'{"r":"' + bytes(range(256)) * 8 + b'"}', prefix=300)  # binary: exact bytes must survive
    refused = b.refuse(2)
    b.gap_record(refused)
    b.checkpoint()
    return a, b


async def load(store: AuditStore, events: Sequence[GatewayEvent]) -> None:
    from consumers.store.rows import event_row

    await store.insert(EVENTS_TABLE, [event_row(e) for e in events], dedup_token=f"test:0:0-{len(events)}")


async def test_untouched_store_verifies(store: AuditStore) -> None:
    a, b = chains()
    await load(store, [*a.events, *b.events])
    report = await audit_verify(store, KEY, page_rows=4)
    assert report.ok, report.findings
    assert report.counts["rows"] == len(a.events) + len(b.events)
    assert report.counts["checkpoints_verified"] == 4 and report.counts["acknowledged_gap"] == 1
    assert report.stream("stream-b").payloads_truncated == 1


async def test_altered_payload_and_deleted_row_in_the_engine_are_named(store: AuditStore) -> None:
    a, b = chains()
    await load(store, [*a.events, *b.events])
    await store.execute_admin(
        "ALTER TABLE audit.events UPDATE payload = '{\"jsonrpc\":\"2.0\",\"method\":\"tools/list\"}' "
        "WHERE stream_id = 'stream-a' AND seq = 3 SETTINGS mutations_sync = 2")
    await store.execute_admin(
        "ALTER TABLE audit.events DELETE WHERE stream_id = 'stream-a' AND seq = 8 SETTINGS mutations_sync = 2")
    report = await audit_verify(store, KEY, page_rows=5)
    assert not report.ok
    assert [(f.stream_id, f.kind, f.seq, f.event_id) for f in report.problems] == [
        ("stream-a", FindingKind.HASH_MISMATCH, 3, a.at(3).event_id),
        ("stream-a", FindingKind.PAYLOAD_MISMATCH, 3, a.at(3).event_id),
        ("stream-a", FindingKind.GAP, 8, ""),
    ]
    assert report.stream("stream-b").ok


async def test_queries_are_read_only_at_both_layers(store: AuditStore) -> None:
    a, _ = chains()
    await load(store, a.events)
    with pytest.raises(StoreReadOnly, match="query refused"):
        await audit_query(store, "ALTER TABLE audit.events DELETE WHERE 1")
    with pytest.raises(StoreReadOnly):  # the store refuses on its own too
        await store.query("ALTER TABLE audit.events DELETE WHERE 1")
    result = await audit_query(
        store, "SELECT principal, count() AS calls, max(ts) AS last FROM audit.events "
               "WHERE kind = 'request' GROUP BY principal ORDER BY principal")
    assert [row[:2] for row in result.rows] == [("agent-0", 8), ("agent-1", 4)]
    assert render(result, "table").splitlines()[0].split() == ["principal", "calls", "last"]
    assert json.loads(render(result, "json"))[0]["calls"] == 8
    assert render(result, "csv").splitlines()[1].startswith("agent-0,8,")


def back(path: Path) -> list[GatewayEvent]:
    return [row_to_event(r) for r in read_export(path)]


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
async def test_export_round_trips(store: AuditStore, tmp_path: Path, fmt: str) -> None:
    a, b = chains()
    events = [*a.events, *b.events]
    await load(store, events)
    out = tmp_path / f"audit.{fmt}"
    summary = await audit_export(store, T0, T0 + 10**9, out_path=out, page_rows=6)
    assert summary.fmt == fmt and summary.rows == len(events)
    exported = back(out)
    assert exported == sorted(events, key=lambda e: (e.ts_us, e.stream_id, e.seq))
    assert verify(exported, KEY).ok
    await audit_export(store, T0, T0 + 10**9, tenant="globex", fmt=fmt, out_path=tmp_path / f"globex.{fmt}")
    assert back(tmp_path / f"globex.{fmt}") == b.events


async def test_parquet_keeps_clickhouse_types(store: AuditStore, tmp_path: Path) -> None:
    import pyarrow.parquet as pq  # type: ignore[import-untyped]

    a, _ = chains()
    await load(store, a.events)
    await audit_export(store, T0, T0 + 10**9, out_path=tmp_path / "a.parquet")
    schema: Any = pq.read_schema(str(tmp_path / "a.parquet"))
    assert str(schema.field("ts").type) == "timestamp[us, tz=UTC]"
    assert str(schema.field("payload").type) == "binary"
    assert str(schema.field("seq").type) == "uint64"
    assert str(schema.field("error_code").type) == "int64" and schema.field("error_code").nullable
    assert str(schema.field("payload_truncated").type) == "bool"
