"""Numbered ClickHouse migrations (infra/clickhouse/NNNN_name.sql): read, split, order, apply.

An installed package carries the files as `consumers/store/clickhouse_migrations/`; a source
checkout (editable install included) reads infra/clickhouse/ itself.

Reading and splitting are pure; `apply_pending` drives any store through `execute_admin` (DDL) and
`query` (what is applied), so both backends run the very same statements.

File format:
    * `NNNN_name.sql`, applied in version order, each once; `audit.schema_migrations` records the
      version, the file's SHA-256 and how many statements ran or were skipped.
    * Statements end with `;`. Quotes, back-quotes and comments are honoured while splitting.
    * A comment line `-- requires: <capability>[, …]` starts a section whose statements need those
      backend capabilities; `-- requires: none` ends it. The one capability today is
      `access_control` (users, roles, grants, row policies), which a ClickHouse server has and the
      embedded chDB engine has not: a backend without it skips that section instead of failing.
    * Statements must be idempotent (IF NOT EXISTS, OR REPLACE): a migration interrupted halfway
      is re-run from its first statement.

An edited, already-applied file is reported (logged), never re-applied: fix forward with a new
version. Retention is configuration, not a migration: see `apply_retention`.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

from consumers.store.base import DATABASE, QueryResult, StoreError, StoreQueryError

log = logging.getLogger("mcpgw.store.migrations")

ACCESS_CONTROL = "access_control"
# Where a wheel carries infra/clickhouse/ (pyproject.toml: [tool.hatch.build.targets.wheel.force-include]).
PACKAGED_MIGRATIONS = "clickhouse_migrations"


def _migrations_dir() -> Path:
    """The shipped migrations: inside the package when installed from a wheel, else the source tree's."""
    packaged = resources.files(__package__ or "consumers.store") / PACKAGED_MIGRATIONS
    if isinstance(packaged, Path) and packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "infra" / "clickhouse"


MIGRATIONS_DIR = _migrations_dir()
MIGRATIONS_TABLE = f"{DATABASE}.schema_migrations"

# Run before anything else, so there is a place to record migration 0001 itself.
BOOTSTRAP: tuple[str, ...] = (
    f"CREATE DATABASE IF NOT EXISTS {DATABASE}",
    f"""CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE}
(
    version    UInt32,
    name       String,
    checksum   String,
    statements UInt32,
    skipped    UInt32,
    applied_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = MergeTree
ORDER BY version""",
)

_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_REQUIRES = re.compile(r"^--\s*requires:\s*([a-z_, ]+?)\s*$", re.IGNORECASE)
_IDENTIFIER = re.compile(r"^[A-Za-z0-9_]{1,64}$")


class MigrationError(StoreError):
    """A migration file is malformed, or one of its statements failed (ClickHouse's reason kept)."""


@dataclass(frozen=True, slots=True)
class Statement:
    sql: str
    requires: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    checksum: str
    statements: tuple[Statement, ...]


class MigrationTarget(Protocol):
    async def execute_admin(self, sql: str) -> None: ...

    async def query(self, sql: str, parameters: Mapping[str, Any] | None = None) -> QueryResult: ...


def split_statements(text: str) -> list[Statement]:
    """Split a migration file into statements, tagging each with its section's requirements."""
    statements: list[Statement] = []
    requires: frozenset[str] = frozenset()
    buf: list[str] = []
    quote = ""
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if quote:
            buf.append(ch)
            if ch == "\\" and i + 1 < n:
                buf.append(text[i + 1])
                i += 1
            elif ch == quote:
                quote = ""
        elif ch in "'\"`":
            quote = ch
            buf.append(ch)
        elif text.startswith("--", i):
            end = text.find("\n", i)
            end = n if end < 0 else end
            header = _REQUIRES.match(text[i:end].strip())
            if header and not "".join(buf).strip():
                names = {part.strip().lower() for part in header.group(1).split(",") if part.strip()}
                requires = frozenset(names - {"none"})
            i = end
            continue
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = n if end < 0 else end + 2
            continue
        elif ch == ";":
            if "".join(buf).strip():
                statements.append(Statement("".join(buf).strip(), requires))
            buf = []
        else:
            buf.append(ch)
        i += 1
    if quote:
        raise MigrationError(f"unterminated {quote} quote")
    if "".join(buf).strip():
        statements.append(Statement("".join(buf).strip(), requires))
    return statements


def parse_migration(name: str, text: str) -> Migration:
    match = _FILE_NAME.match(name)
    if match is None:
        raise MigrationError(f"{name}: migration files are named NNNN_lowercase_name.sql")
    try:
        statements = tuple(split_statements(text))
    except MigrationError as exc:
        raise MigrationError(f"{name}: {exc}") from None
    return Migration(int(match.group(1)), name.removesuffix(".sql"),
                     hashlib.sha256(text.encode()).hexdigest(), statements)


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Every migration under `directory`, in version order; a repeated version is an error."""
    if not directory.is_dir():
        raise MigrationError(f"no migrations directory at {directory}")
    migrations = [parse_migration(path.name, path.read_text(encoding="utf-8"))
                  for path in directory.iterdir() if path.suffix == ".sql"]
    migrations.sort(key=lambda m: m.version)
    for before, after in itertools.pairwise(migrations):
        if before.version == after.version:
            raise MigrationError(f"two migrations share version {after.version}: {before.name}, {after.name}")
    return migrations


def sql_string(value: str) -> str:
    """A ClickHouse string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


async def applied_versions(target: MigrationTarget) -> dict[int, str] | None:
    """Applied version → checksum, or None when the bookkeeping table does not exist yet."""
    exists = await target.query(
        "SELECT count() FROM system.tables WHERE database = {db:String} AND name = 'schema_migrations'",
        {"db": DATABASE})
    if not exists.rows or not exists.rows[0][0]:
        return None
    result = await target.query(f"SELECT version, any(checksum) FROM {MIGRATIONS_TABLE} GROUP BY version")
    return {int(version): str(checksum) for version, checksum in result.rows}


async def apply_pending(target: MigrationTarget, capabilities: frozenset[str],
                        migrations: Sequence[Migration] | None = None) -> list[Migration]:
    """Apply the migrations not yet recorded, in order; returns those it applied.

    A store that is already current is only read (two queries), so a user allowed nothing but
    INSERT and a look at schema_migrations can open it.
    """
    if migrations is None:
        migrations = load_migrations()
    applied = await applied_versions(target)
    if applied is None:
        for sql in BOOTSTRAP:
            await _run(target, sql, "bootstrap")
        applied = {}
    done: list[Migration] = []
    for migration in migrations:
        if migration.version in applied:
            if applied[migration.version] != migration.checksum:
                log.warning("migration %s changed after it was applied; the change is ignored (add a new "
                            "migration instead)", migration.name)
            continue
        ran = skipped = 0
        for statement in migration.statements:
            if not statement.requires <= capabilities:
                skipped += 1
                continue
            await _run(target, statement.sql, migration.name)
            ran += 1
        await _run(target, f"INSERT INTO {MIGRATIONS_TABLE} (version, name, checksum, statements, skipped) VALUES "
                           f"({migration.version}, {sql_string(migration.name)}, {sql_string(migration.checksum)}, "
                           f"{ran}, {skipped})", migration.name)
        if skipped:
            log.info("migration %s: skipped %d statements this backend cannot run (needs %s)", migration.name,
                     skipped, ", ".join(sorted(set().union(*(s.requires for s in migration.statements)))))
        done.append(migration)
    return done


async def _run(target: MigrationTarget, sql: str, where: str) -> None:
    try:
        await target.execute_admin(sql)
    except StoreQueryError as exc:
        raise MigrationError(f"migration {where} failed: {exc} (statement: {sql[:200]})") from exc


RETENTION_TABLES = ("audit.events", "audit.risk_scores")


def retention_statements(days: int, tables: Sequence[str] = RETENTION_TABLES, time_column: str = "ts") -> list[str]:
    """ALTERs that bound retention on `tables` to `days` (see `apply_retention`)."""
    if days < 1:
        raise ValueError(f"retention must be at least one day, not {days}")
    return [f"ALTER TABLE {table} MODIFY TTL toDateTime({time_column}) + INTERVAL {int(days)} DAY" for table in tables]


async def apply_retention(target: MigrationTarget, days: int | None, tables: Sequence[str] = RETENTION_TABLES) -> None:
    """Make retention what config says: `days`, or None for no TTL (the default: keep everything).

    Run after open, from config. `MODIFY TTL` rewrites existing parts once to apply it (ClickHouse's
    materialize_ttl_after_modify); with ttl_only_drop_parts, later expiry drops whole monthly parts.
    """
    if days is not None:
        for sql in retention_statements(days, tables):
            await _run(target, sql, "retention")
        return
    names = [table.split(".", 1)[1] for table in tables]
    # REMOVE TTL fails on a table without one, so only the tables that have one are altered.
    with_ttl = await target.query(
        "SELECT name FROM system.tables WHERE database = {db:String} AND has({names:Array(String)}, name) "
        "AND position(create_table_query, ' TTL ') > 0", {"db": DATABASE, "names": names})
    for (name,) in with_ttl.rows:
        await _run(target, f"ALTER TABLE {DATABASE}.{name} REMOVE TTL", "retention")


TENANT_TABLES = ("audit.events", "audit.risk_scores", "audit.decisions", "audit.events_per_minute")


def tenant_reader_statements(tenant: str) -> list[str]:
    """Access-control statements for a role that reads only `tenant`'s rows (server only).

    Grant the role to a user created with its own password: `GRANT audit_reader_<tenant> TO user`.
    """
    if not _IDENTIFIER.match(tenant):
        raise ValueError(f"tenant {tenant!r} cannot name a role: use letters, digits and _ (at most 64)")
    role = f"audit_reader_{tenant}"
    statements = [
        f"CREATE ROLE IF NOT EXISTS {role} SETTINGS PROFILE 'audit_readonly'",
        f"GRANT SELECT ON {DATABASE}.* TO {role}",
    ]
    for table in TENANT_TABLES:
        policy = f"tenant_{tenant}"
        statements.append(f"CREATE ROW POLICY OR REPLACE {policy} ON {table} FOR SELECT "
                          f"USING tenant = {sql_string(tenant)} TO {role}")
    return statements
