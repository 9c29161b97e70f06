-- 0001: the `audit` database and `audit.events`, one row per GatewayEvent.
--
-- Column names are a public interface (DESIGN.md §3): add columns freely, never rename. Every
-- field of the Avro record mcpgw.events.GatewayEvent has a column of the same name, except the
-- Avro/Python `ts`/`ts_us`, which is `ts` here.
--
-- Statements end with `;` at the end of a line; consumers/store/migrations.py splits on that.
-- Each statement is idempotent (IF NOT EXISTS) so a migration interrupted halfway can be re-run.
--
-- Retention: no TTL by default (an audit trail is kept until someone decides otherwise). To bound
-- it, apply `ALTER TABLE audit.events MODIFY TTL toDateTime(ts) + INTERVAL <days> DAY` from config
-- (consumers/store/migrations.py: apply_retention). ttl_only_drop_parts makes expiry drop
-- whole monthly parts instead of rewriting them.

CREATE DATABASE IF NOT EXISTS audit;

CREATE TABLE IF NOT EXISTS audit.events
(
    ts                DateTime64(6, 'UTC')   CODEC(DoubleDelta, ZSTD(1)),
    event_id          String                 CODEC(ZSTD(1)),
    event_type        LowCardinality(String),
    kind              LowCardinality(String),
    direction         LowCardinality(String),
    outcome           LowCardinality(String),
    stream_id         LowCardinality(String),
    seq               UInt64                 CODEC(Delta, ZSTD(1)),
    prev_hash         String                 CODEC(ZSTD(1)),
    hash              String                 CODEC(ZSTD(1)),
    gateway_instance  LowCardinality(String),
    protocol_era      LowCardinality(String),
    protocol_version  LowCardinality(String),
    transport         LowCardinality(String),
    session_id        String                 CODEC(ZSTD(1)),
    correlation_id    String                 CODEC(ZSTD(1)),
    tenant            LowCardinality(String),
    principal         LowCardinality(String),
    on_behalf_of      String                 CODEC(ZSTD(1)),
    client_addr       String                 CODEC(ZSTD(1)),
    server            LowCardinality(String),
    jsonrpc_id        String                 CODEC(ZSTD(1)),
    method            LowCardinality(String),
    tool              LowCardinality(String),
    resource_uri      String                 CODEC(ZSTD(1)),
    prompt_name       LowCardinality(String),
    error_code        Nullable(Int64),
    error_message     String                 CODEC(ZSTD(1)),
    latency_us        Nullable(Int64),
    payload           String                 CODEC(ZSTD(3)),
    payload_sha256    String                 CODEC(ZSTD(1)),
    payload_size      UInt64,
    redactions        UInt32,
    payload_truncated Bool,
    trace_id          String                 CODEC(ZSTD(1)),
    span_id           String                 CODEC(ZSTD(1)),
    detail            String                 CODEC(ZSTD(1)),
    audit_mode        LowCardinality(String),
    schema_version    UInt32,

    -- Conversations are looked up by id, and ids are scattered across the (tenant, principal, ts) order.
    INDEX idx_session_id     session_id     TYPE bloom_filter(0.01) GRANULARITY 4,
    INDEX idx_correlation_id correlation_id TYPE bloom_filter(0.01) GRANULARITY 4,
    INDEX idx_jsonrpc_id     jsonrpc_id     TYPE bloom_filter(0.01) GRANULARITY 4,
    INDEX idx_event_id       event_id       TYPE bloom_filter(0.01) GRANULARITY 4,
    INDEX idx_trace_id       trace_id       TYPE bloom_filter(0.01) GRANULARITY 4
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(ts)
-- Compliance questions are "what did tenant T's principal P do between t1 and t2".
ORDER BY (tenant, principal, ts, event_id)
-- The window makes a replayed batch (same insert_deduplication_token) a no-op on a plain,
-- non-replicated MergeTree; it is the last N insert blocks, so it must exceed the number of
-- batches a consumer can replay after a crash.
SETTINGS non_replicated_deduplication_window = 10000, ttl_only_drop_parts = 1;
