"""The audit-store contract, written once and run on every backend (tests/store/conftest.py)."""

from __future__ import annotations

import dataclasses
import secrets
from datetime import timedelta
from typing import Any

import pytest

from consumers.store.avro_container import AvroContainer
from consumers.store.base import (
    CHECKPOINTS_TABLE,
    DECISIONS_TABLE,
    EVENTS_TABLE,
    RISK_TABLE,
    StoreQueryError,
    StoreReadOnly,
)
from consumers.store.migrations import (
    ACCESS_CONTROL,
    apply_pending,
    apply_retention,
    load_migrations,
    tenant_reader_statements,
)
from consumers.store.rows import (
    CHECKPOINT_COLUMNS,
    DECISION_COLUMNS,
    EVENT_COLUMNS,
    RISK_SCORE_COLUMNS,
    checkpoint_row,
    decision_row,
    event_row,
    risk_score_row,
    utc,
)
from schemas import catalog
from schemas.codec import SINGLE_OBJECT_HEADER_SIZE, EventCodec
from schemas.events import Direction, EventType, GatewayEvent, Kind, Outcome
from tests.schemas.example_values import T0, decisions, gateway_events, risk_scores
from tests.store.conftest import StoreBackend

TABLES = ("events", "decisions", "risk_scores", "checkpoints", "events_per_minute", "events_per_minute_mv",
          "events_per_minute_merged", "schema_migrations")


async def select(backend: StoreBackend, table: str, columns: tuple[str, ...], order: str) -> list[dict[str, Any]]:
    result = await backend.store.query(f"SELECT {', '.join(columns)} FROM {table} ORDER BY {order}")
    assert result.columns == list(columns)
    return [dict(zip(result.columns, row, strict=True)) for row in result.rows]


async def scalar(backend: StoreBackend, sql: str) -> Any:
    return (await backend.store.query(sql)).rows[0][0]


# ---- migrations ------------------------------------------------------------------------------------


async def test_migrations_create_the_schema(store_backend: StoreBackend) -> None:
    tables = await store_backend.store.query("SELECT name FROM system.tables WHERE database = 'audit' ORDER BY name")
    assert {row[0] for row in tables.rows} >= set(TABLES)
    versions = await store_backend.store.query(
        "SELECT version, statements, skipped FROM audit.schema_migrations ORDER BY version")
    assert [row[0] for row in versions.rows] == [m.version for m in load_migrations()]


async def test_reopening_applies_nothing(store_backend: StoreBackend) -> None:
    before = await scalar(store_backend, "SELECT count() FROM audit.schema_migrations")
    store = await store_backend.reopen()
    assert await scalar(store_backend, "SELECT count() FROM audit.schema_migrations") == before
    assert await apply_pending(store, store_backend.store.capabilities) == []


async def test_access_control_runs_only_where_the_backend_has_it(store_backend: StoreBackend) -> None:
    statements, skipped = (await store_backend.store.query(
        "SELECT statements, skipped FROM audit.schema_migrations WHERE version = 4")).rows[0]
    if ACCESS_CONTROL in store_backend.store.capabilities:
        assert (statements, skipped) == (statements, 0) and statements > 0
    else:
        assert (statements, skipped) == (0, skipped) and skipped > 0


async def test_every_migration_statement_parses(store_backend: StoreBackend) -> None:
    # Including those this backend skips: ClickHouse's own parser checks them (formatQuery).
    for migration in load_migrations():
        for statement in migration.statements:
            result = await store_backend.store.query("SELECT formatQuery({sql:String})", {"sql": statement.sql})
            assert result.rows[0][0], f"{migration.name}: {statement.sql[:80]}"


async def test_retention_follows_config(store_backend: StoreBackend) -> None:
    ttl = "SELECT name, match(create_table_query, 'TTL') FROM system.tables WHERE database = 'audit' " \
          "AND name IN ('events', 'risk_scores') ORDER BY name"
    assert (await store_backend.store.query(ttl)).rows == [("events", False), ("risk_scores", False)]
    await apply_retention(store_backend.store, 400)
    assert (await store_backend.store.query(ttl)).rows == [("events", True), ("risk_scores", True)]
    for _ in range(2):  # lifting it twice is not an error
        await apply_retention(store_backend.store, None)
        assert (await store_backend.store.query(ttl)).rows == [("events", False), ("risk_scores", False)]


# ---- round trips -----------------------------------------------------------------------------------


async def test_events_round_trip(store_backend: StoreBackend) -> None:
    events = gateway_events()
    rows = [event_row(e) for e in events]
    await store_backend.store.insert(EVENTS_TABLE, rows, "mcp.events:0:0-12")
    assert await select(store_backend, EVENTS_TABLE, EVENT_COLUMNS, "seq") == rows


async def test_payload_bytes_are_stored_exactly(store_backend: StoreBackend) -> None:
    # A refused malformed message is evidence too, byte for byte, even when it is not UTF-8.
    event = gateway_events()[1]
    raw = b'{"jsonrpc":"2.0","id":1,"method":"\xff\xfe\x00tools/call"}' + bytes(range(256))
    event = dataclasses.replace(event, payload=raw, payload_size=len(raw))
    await store_backend.store.insert(EVENTS_TABLE, [event_row(event)], "mcp.events:0:1-1")
    result = await store_backend.store.query("SELECT payload, length(payload), hex(payload) FROM audit.events")
    assert result.rows == [(raw, len(raw), raw.hex().upper())]


def avro_container(events: list[GatewayEvent]) -> bytes:
    codec = EventCodec()
    return AvroContainer(catalog.schema(catalog.GATEWAY_EVENT)).build(
        [codec.encode(e)[SINGLE_OBJECT_HEADER_SIZE:] for e in events])


async def test_avro_events_land_as_their_rows(store_backend: StoreBackend) -> None:
    # The audit consumer's fast path: ClickHouse decodes the bodies into exactly the rows event_row builds.
    events = gateway_events()
    raw = b'{"jsonrpc":"2.0","method":"\xff\xfe\x00"}' + bytes(range(256))
    events[1] = dataclasses.replace(events[1], payload=raw, payload_size=len(raw))
    await store_backend.store.insert_avro(EVENTS_TABLE, EVENT_COLUMNS, avro_container(events), "mcp.events:0:0-12")
    assert await select(store_backend, EVENTS_TABLE, EVENT_COLUMNS, "seq") == [event_row(e) for e in events]


async def test_an_avro_batch_is_deduplicated_by_its_token(store_backend: StoreBackend) -> None:
    events = call_events(6_000)  # more rows than one Native block of the clients
    container = avro_container(events)
    for _ in range(2):
        await store_backend.store.insert_avro(EVENTS_TABLE, EVENT_COLUMNS, container, "mcp.events:0:0-10799")
    assert await scalar(store_backend, "SELECT count() FROM audit.events") == len(events)
    assert await scalar(store_backend, "SELECT sum(events) FROM audit.events_per_minute") == len(events)
    with pytest.raises(StoreQueryError, match="dedup_token"):
        await store_backend.store.insert_avro(EVENTS_TABLE, EVENT_COLUMNS, container, "")


async def test_a_malformed_avro_batch_is_refused_whole(store_backend: StoreBackend) -> None:
    container = avro_container(call_events(20))
    with pytest.raises(StoreQueryError):
        await store_backend.store.insert_avro(EVENTS_TABLE, EVENT_COLUMNS, container[:-40], "mcp.events:0:0-35")
    assert await scalar(store_backend, "SELECT count() FROM audit.events") == 0


async def test_decisions_round_trip(store_backend: StoreBackend) -> None:
    rows = [decision_row(d) for d in decisions()]
    await store_backend.store.insert(DECISIONS_TABLE, rows, "mcp.decisions:0:0-2")
    assert await select(store_backend, DECISIONS_TABLE, DECISION_COLUMNS, "ts") == sorted(rows, key=lambda r: r["ts"])


async def test_risk_scores_round_trip(store_backend: StoreBackend) -> None:
    rows = [risk_score_row(s) for s in risk_scores()]
    await store_backend.store.insert(RISK_TABLE, rows, "mcp.risk:0:0-1")
    assert await select(store_backend, RISK_TABLE, RISK_SCORE_COLUMNS, "ts") == rows


async def test_checkpoints_round_trip(store_backend: StoreBackend) -> None:
    rows = [row for row in (checkpoint_row(e) for e in gateway_events()) if row is not None]
    assert len(rows) == 1
    await store_backend.store.insert(CHECKPOINTS_TABLE, rows, "mcp.events:0:0-12")
    assert await select(store_backend, CHECKPOINTS_TABLE, CHECKPOINT_COLUMNS, "stream_id, seq") == rows


async def test_query_parameters_are_bound_by_the_server(store_backend: StoreBackend) -> None:
    await store_backend.store.insert(EVENTS_TABLE, [event_row(e) for e in gateway_events()], "mcp.events:0:0-12")
    result = await store_backend.store.query(
        "SELECT count() FROM audit.events WHERE tenant = {tenant:String} AND principal = {who:String}",
        {"tenant": "acme", "who": "billing-agent' OR 1 = 1 --"})
    assert result.rows == [(0,)]
    assert result.types == ["UInt64"]


# ---- replay safety ---------------------------------------------------------------------------------


def call_events(n: int, tenant: str = "acme", principal: str = "agent-1") -> list[GatewayEvent]:
    """n tool calls: request received, answer sent (every third an error, every fifth refused as blocked)."""
    events: list[GatewayEvent] = []
    for i in range(n):
        common: dict[str, Any] = {"ts_us": T0 + i * 1_000, "tenant": tenant, "principal": principal,
                                  "server": "payments", "tool": "payments__charge", "stream_id": "s1"}
        if i % 5 == 4:
            events.append(GatewayEvent(EventType.MESSAGE_REFUSED, Kind.REQUEST, Direction.AGENT_TO_GATEWAY,
                                       Outcome.BLOCKED, event_id=f"r{i}", seq=2 * i + 1, **common))
            continue
        events.append(GatewayEvent(EventType.AGENT_MESSAGE_RECEIVED, Kind.REQUEST, Direction.AGENT_TO_GATEWAY,
                                   event_id=f"q{i}", seq=2 * i + 1, payload=b"{}", payload_size=2, **common))
        error = i % 3 == 2
        events.append(GatewayEvent(EventType.AGENT_MESSAGE_SENT, Kind.ERROR if error else Kind.RESPONSE,
                                   Direction.GATEWAY_TO_AGENT, Outcome.ERROR if error else Outcome.OK,
                                   event_id=f"a{i}", seq=2 * i + 2, latency_us=1_000 * (i + 1), **common))
    return events


async def test_a_replayed_batch_is_written_once(store_backend: StoreBackend) -> None:
    rows = [event_row(e) for e in call_events(50)]
    for _ in range(3):
        await store_backend.store.insert(EVENTS_TABLE, rows, "mcp.events:0:100-189")
    assert await scalar(store_backend, "SELECT count() FROM audit.events") == len(rows)
    assert await scalar(store_backend, "SELECT sum(events) FROM audit.events_per_minute") == len(rows)
    # A different range is a different batch, even with equal rows: the token decides, not the content.
    await store_backend.store.insert(EVENTS_TABLE, rows, "mcp.events:0:190-279")
    assert await scalar(store_backend, "SELECT count() FROM audit.events") == 2 * len(rows)
    assert await scalar(store_backend, "SELECT sum(events) FROM audit.events_per_minute") == 2 * len(rows)


async def test_a_large_batch_arrives_whole(store_backend: StoreBackend) -> None:
    # Clients split a batch into several Native blocks (and compressed frames): all of them count.
    rows = [event_row(e) for e in call_events(12_000)]
    await store_backend.store.insert(EVENTS_TABLE, rows, "mcp.events:0:0-21599")
    await store_backend.store.insert(EVENTS_TABLE, rows, "mcp.events:0:0-21599")
    assert await scalar(store_backend, "SELECT count() FROM audit.events") == len(rows)
    assert await scalar(store_backend, "SELECT sum(events) FROM audit.events_per_minute") == len(rows)


async def test_every_table_deduplicates(store_backend: StoreBackend) -> None:
    batches = {DECISIONS_TABLE: [decision_row(d) for d in decisions()],
               RISK_TABLE: [risk_score_row(s) for s in risk_scores()],
               CHECKPOINTS_TABLE: [r for r in (checkpoint_row(e) for e in gateway_events()) if r is not None]}
    for table, rows in batches.items():
        await store_backend.store.insert(table, rows, f"{table}:0:0-9")
        await store_backend.store.insert(table, rows, f"{table}:0:0-9")
        assert await scalar(store_backend, f"SELECT count() FROM {table}") == len(rows), table


async def test_an_insert_without_a_token_is_refused(store_backend: StoreBackend) -> None:
    with pytest.raises(StoreQueryError, match="dedup_token"):
        await store_backend.store.insert(EVENTS_TABLE, [event_row(gateway_events()[0])], "")


async def test_rollups_per_minute(store_backend: StoreBackend) -> None:
    await store_backend.store.insert(EVENTS_TABLE, [event_row(e) for e in call_events(50)], "mcp.events:0:0-89")
    result = await store_backend.store.query(
        "SELECT tenant, principal, server, tool, sum(calls), sum(refused), sum(blocked), sum(errors), "
        "sum(latency_count), max(latency_max_us), round(quantileTDigestMerge(0.5)(latency_digest), -3) "
        "FROM audit.events_per_minute GROUP BY tenant, principal, server, tool")
    # 50 calls: 10 refused (i % 5 == 4), 40 answered, of which i % 3 == 2 are errors.
    answered = [i for i in range(50) if i % 5 != 4]
    errors = sum(1 for i in answered if i % 3 == 2)
    slowest = 1_000 * (max(answered) + 1)
    assert result.rows == [("acme", "agent-1", "payments", "payments__charge", 40, 10, 10, errors, 40, slowest,
                            pytest.approx(25_000, abs=3_000))]
    minutes = await store_backend.store.query("SELECT DISTINCT minute FROM audit.events_per_minute")
    assert minutes.types == ["DateTime64(0, 'UTC')"]
    assert minutes.rows == [(utc(T0),)]  # T0 is on a minute; the 50 calls span 50 ms
    assert minutes.rows[0][0].utcoffset() == timedelta(0)
    merged = await store_backend.store.query(
        "SELECT sum(calls), sum(errors), max(latency_max_us) FROM audit.events_per_minute_merged")
    assert merged.rows == [(40, errors, slowest)]


# ---- the read path refuses writes ------------------------------------------------------------------


@pytest.mark.parametrize("sql", [
    "INSERT INTO audit.events (event_id) VALUES ('forged')",
    "INSERT INTO audit.events (event_id) SELECT 'forged'",
    "ALTER TABLE audit.events DELETE WHERE 1",
    "ALTER TABLE audit.events UPDATE principal = 'nobody' WHERE 1",
    "DROP TABLE audit.events",
    "TRUNCATE TABLE audit.events",
    "CREATE TABLE audit.copy (a UInt8) ENGINE = Memory",
    "OPTIMIZE TABLE audit.events FINAL",
    "SET readonly = 0",
    "SELECT 1 SETTINGS readonly = 0",
])
async def test_writes_through_query_are_refused(store_backend: StoreBackend, sql: str) -> None:
    await store_backend.store.insert(EVENTS_TABLE, [event_row(e) for e in gateway_events()], "mcp.events:0:0-12")
    with pytest.raises(StoreReadOnly, match="read-only") as raised:
        await store_backend.store.query(sql)
    assert not raised.value.retryable
    assert await scalar(store_backend, "SELECT count() FROM audit.events") == len(gateway_events())


async def test_a_bad_query_keeps_clickhouse_s_reason(store_backend: StoreBackend) -> None:
    with pytest.raises(StoreQueryError, match=r"UNKNOWN_TABLE|does not exist") as raised:
        await store_backend.store.query("SELECT * FROM audit.no_such_table")
    assert not raised.value.retryable


# ---- access control (server only) ------------------------------------------------------------------


async def test_a_tenant_reader_sees_only_its_tenant(store_backend: StoreBackend) -> None:
    if ACCESS_CONTROL not in store_backend.store.capabilities or not store_backend.server:
        pytest.skip("row policies need ClickHouse access control: chDB has none, and the HTTP shim serves chDB "
                    "(set MCPGW_TEST_CLICKHOUSE_URL to run this against a server)")
    store = store_backend.store
    await store.insert(EVENTS_TABLE, [event_row(e) for e in call_events(5, tenant="acme")], "t:0:0-9")
    await store.insert(EVENTS_TABLE, [event_row(e) for e in call_events(5, tenant="globex")], "t:0:10-19")
    for sql in tenant_reader_statements("acme"):
        await store.execute_admin(sql)
    password = secrets.token_hex(16)
    await store.execute_admin(f"CREATE USER OR REPLACE acme_reader_test IDENTIFIED BY '{password}' "
                              "DEFAULT ROLE audit_reader_acme")
    await store.execute_admin("GRANT audit_reader_acme TO acme_reader_test")
    try:
        reader = await store_backend.store_as("acme_reader_test", password)
        tenants = await reader.query("SELECT DISTINCT tenant FROM audit.events")
        assert tenants.rows == [("acme",)]
        with pytest.raises(StoreReadOnly):
            await reader.query("INSERT INTO audit.events (tenant) VALUES ('acme')")
    finally:
        await store.execute_admin("DROP USER IF EXISTS acme_reader_test")
        await store.execute_admin("DROP ROLE IF EXISTS audit_reader_acme")
