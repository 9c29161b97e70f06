"""Unit tests for consumers/store/migrations.py and the shipped infra/clickhouse files (no services)."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from consumers.store.base import QueryResult, StoreQueryError
from consumers.store.migrations import (
    ACCESS_CONTROL,
    BOOTSTRAP,
    MigrationError,
    Statement,
    apply_pending,
    load_migrations,
    parse_migration,
    retention_statements,
    split_statements,
    tenant_reader_statements,
)


def test_split_honours_quotes_and_comments() -> None:
    text = """
    -- a comment; with a semicolon
    CREATE TABLE a (s String DEFAULT 'x;y', t String DEFAULT 'it''s; \\' ;');  /* block; comment */
    SELECT `odd;name` FROM a;
    SELECT "also;odd"
    """
    assert [s.sql for s in split_statements(text)] == [
        "CREATE TABLE a (s String DEFAULT 'x;y', t String DEFAULT 'it''s; \\' ;')",
        "SELECT `odd;name` FROM a",
        'SELECT "also;odd"',
    ]


def test_requires_sections() -> None:
    text = """
    CREATE TABLE a (x UInt8) ENGINE = Memory;
    -- requires: access_control
    CREATE ROLE r;
    GRANT SELECT ON a TO r;
    -- requires: none
    SELECT 1;
    """
    assert split_statements(text) == [
        Statement("CREATE TABLE a (x UInt8) ENGINE = Memory"),
        Statement("CREATE ROLE r", frozenset({ACCESS_CONTROL})),
        Statement("GRANT SELECT ON a TO r", frozenset({ACCESS_CONTROL})),
        Statement("SELECT 1"),
    ]


def test_a_requires_comment_inside_a_statement_is_just_a_comment() -> None:
    statements = split_statements("SELECT 1\n-- requires: access_control\n;\nSELECT 2;")
    assert [s.requires for s in statements] == [frozenset(), frozenset()]


def test_unterminated_quote_is_an_error() -> None:
    with pytest.raises(MigrationError, match=r"0009_bad.*unterminated"):
        parse_migration("0009_bad.sql", "SELECT 'oops;")


@pytest.mark.parametrize("name", ["1_x.sql", "0001-x.sql", "0001_X.sql", "0001_x.txt"])
def test_file_names(name: str) -> None:
    with pytest.raises(MigrationError, match="NNNN_lowercase_name"):
        parse_migration(name, "SELECT 1;")


def test_load_orders_by_version_and_refuses_duplicates(tmp_path: Path) -> None:
    (tmp_path / "0002_b.sql").write_text("SELECT 2;")
    (tmp_path / "0001_a.sql").write_text("SELECT 1;")
    (tmp_path / "README.md").write_text("not a migration")
    assert [m.name for m in load_migrations(tmp_path)] == ["0001_a", "0002_b"]
    (tmp_path / "0002_c.sql").write_text("SELECT 3;")
    with pytest.raises(MigrationError, match="share version 2"):
        load_migrations(tmp_path)


# ---- the shipped files -----------------------------------------------------------------------------


def test_shipped_migrations_are_numbered_without_gaps() -> None:
    migrations = load_migrations()
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    assert [m.name for m in migrations][:4] == ["0001_database_and_events", "0002_decisions_risk_checkpoints",
                                                "0003_rollups", "0004_users_and_grants"]


def test_only_access_control_statements_are_marked() -> None:
    for migration in load_migrations():
        for statement in migration.statements:
            needs = bool(re.match(r"(CREATE|ALTER|DROP) (ROLE|USER|ROW POLICY|SETTINGS PROFILE|QUOTA)|GRANT|REVOKE",
                                  statement.sql))
            assert statement.requires == (frozenset({ACCESS_CONTROL}) if needs else frozenset()), statement.sql


def test_shipped_statements_can_be_rerun() -> None:
    # A migration interrupted halfway is re-run from the top, so every statement must be idempotent.
    for migration in load_migrations():
        for statement in migration.statements:
            assert re.search(r"IF NOT EXISTS|OR REPLACE|^GRANT ", statement.sql), statement.sql


def test_every_replayable_table_has_a_dedup_window() -> None:
    for migration in load_migrations():
        for statement in migration.statements:
            if statement.sql.startswith("CREATE TABLE"):
                assert "non_replicated_deduplication_window" in statement.sql, statement.sql[:60]


# ---- the runner, against a fake store --------------------------------------------------------------


class FakeTarget:
    def __init__(self, applied: dict[int, str] | None = None) -> None:
        self.applied = applied
        self.executed: list[str] = []

    async def execute_admin(self, sql: str) -> None:
        if "fail" in sql:
            raise StoreQueryError("Code: 62. DB::Exception: Syntax error")
        self.executed.append(sql)

    async def query(self, sql: str, parameters: Mapping[str, Any] | None = None) -> QueryResult:
        if "system.tables" in sql:
            return QueryResult(["count()"], ["UInt64"], [(0 if self.applied is None else 1,)])
        rows = [(v, c) for v, c in (self.applied or {}).items()]
        return QueryResult(["version", "checksum"], ["UInt32", "String"], rows)


def sample(tmp_path: Path) -> list[Any]:
    (tmp_path / "0001_tables.sql").write_text("CREATE TABLE IF NOT EXISTS audit.t (x UInt8) ENGINE = Memory;\n"
                                              "-- requires: access_control\nCREATE ROLE IF NOT EXISTS r;\n")
    (tmp_path / "0002_more.sql").write_text("CREATE TABLE IF NOT EXISTS audit.u (x UInt8) ENGINE = Memory;\n")
    return load_migrations(tmp_path)


async def test_runner_bootstraps_applies_and_records(tmp_path: Path) -> None:
    target = FakeTarget(applied=None)
    done = await apply_pending(target, frozenset(), sample(tmp_path))
    assert [m.version for m in done] == [1, 2]
    assert target.executed[:2] == list(BOOTSTRAP)
    assert "CREATE ROLE IF NOT EXISTS r" not in target.executed
    assert re.search(r"VALUES \(1, '0001_tables', '[0-9a-f]{64}', 1, 1\)", target.executed[3])
    assert re.search(r"VALUES \(2, '0002_more', '[0-9a-f]{64}', 1, 0\)", target.executed[5])


async def test_runner_with_access_control_runs_everything(tmp_path: Path) -> None:
    target = FakeTarget(applied={})
    await apply_pending(target, frozenset({ACCESS_CONTROL}), sample(tmp_path))
    assert "CREATE ROLE IF NOT EXISTS r" in target.executed
    assert not set(BOOTSTRAP) & set(target.executed)


async def test_runner_skips_applied_and_reports_edits(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    migrations = sample(tmp_path)
    target = FakeTarget(applied={1: migrations[0].checksum, 2: "edited"})
    with caplog.at_level(logging.WARNING):
        assert await apply_pending(target, frozenset(), migrations) == []
    assert target.executed == []
    assert "0002_more changed after it was applied" in caplog.text


async def test_a_failing_statement_names_its_migration(tmp_path: Path) -> None:
    (tmp_path / "0001_bad.sql").write_text("SELECT fail;")
    with pytest.raises(MigrationError, match=r"migration 0001_bad failed: .*Syntax error"):
        await apply_pending(FakeTarget(applied={}), frozenset(), load_migrations(tmp_path))


# ---- retention and tenant readers ------------------------------------------------------------------


def test_retention() -> None:
    assert retention_statements(400, ("audit.events",)) == [
        "ALTER TABLE audit.events MODIFY TTL toDateTime(ts) + INTERVAL 400 DAY"]
    with pytest.raises(ValueError, match="at least one day"):
        retention_statements(0)


def test_tenant_reader_statements() -> None:
    statements = tenant_reader_statements("acme")
    assert statements[0] == "CREATE ROLE IF NOT EXISTS audit_reader_acme SETTINGS PROFILE 'audit_readonly'"
    assert "CREATE ROW POLICY OR REPLACE tenant_acme ON audit.events FOR SELECT USING tenant = 'acme' " \
           "TO audit_reader_acme" in statements
    with pytest.raises(ValueError, match="cannot name a role"):
        tenant_reader_statements("acme'; DROP TABLE audit.events; --")
