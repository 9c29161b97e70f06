"""Every SQL query in docs/auditor-guide.md runs, read-only, against the real engine (chDB) and answers."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from consumers.compliance.tools import audit_query
from consumers.store.base import EVENTS_TABLE, AuditStore
from consumers.store.chdb_store import ChdbStore
from consumers.store.rows import event_row
from tests.schemas.example_values import gateway_events

pytestmark = pytest.mark.integration

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "auditor-guide.md"
QUERIES = re.findall(r"```sql\n(.*?)```", GUIDE.read_text(), re.DOTALL)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[AuditStore]:
    opened = ChdbStore(tmp_path / "store")
    await opened.open()
    # The schema examples: one event of each type, a valid chain with an acknowledged gap.
    rows = [event_row(e) for e in gateway_events()]
    await opened.insert(EVENTS_TABLE, rows, dedup_token=f"guide:0:0-{len(rows)}")
    try:
        yield opened
    finally:
        await opened.close()


def test_the_guide_has_the_common_questions() -> None:
    assert len(QUERIES) >= 6


async def test_each_guide_query_runs_and_answers(store: AuditStore) -> None:
    # One store for all queries: chDB hosts one engine per process.
    for sql in QUERIES:
        result = await audit_query(store, sql)
        assert result.columns, sql
        assert result.rows, f"no rows for a query the example trail can answer:\n{sql}"
        if "hash_matches" in result.columns:
            index = result.columns.index("hash_matches")
            truncated = result.columns.index("payload_truncated")
            assert all(row[index] for row in result.rows if not row[truncated]), json.dumps(
                [list(map(str, r)) for r in result.rows])
