-- 0002: decisions, risk scores and signed chain checkpoints (DESIGN.md §3).
--
-- audit.decisions and audit.risk_scores are field-for-field the Avro records
-- mcpgw.decisions.Decision and mcpgw.risk.RiskScore; Avro nulls stay NULL (a decision with a NULL
-- tenant applies to every tenant, which is not the same as tenant '').
-- audit.checkpoints is projected from checkpoint_recorded events: the signed head (seq, hash) of
-- one ingress stream, for `mcpgw audit verify`.

CREATE TABLE IF NOT EXISTS audit.decisions
(
    ts                 DateTime64(6, 'UTC')   CODEC(Delta, ZSTD(1)),
    decision_id        String                 CODEC(ZSTD(1)),
    action             LowCardinality(String),
    scope              LowCardinality(String),
    subject            String                 CODEC(ZSTD(1)),
    tenant             LowCardinality(Nullable(String)),
    reason             String                 CODEC(ZSTD(1)),
    source             LowCardinality(String),
    actor              LowCardinality(String),
    expires_at         Nullable(DateTime64(6, 'UTC')),
    risk_score         Nullable(UInt8),
    evidence_event_ids Array(String)          CODEC(ZSTD(1)),
    schema_version     UInt32
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(ts)
-- "What was decided about this principal / tool / session, and when."
ORDER BY (scope, subject, ts, decision_id)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE TABLE IF NOT EXISTS audit.risk_scores
(
    ts             DateTime64(6, 'UTC')      CODEC(DoubleDelta, ZSTD(1)),
    score_id       String                    CODEC(ZSTD(1)),
    tenant         LowCardinality(String),
    principal      LowCardinality(String),
    session_id     Nullable(String)          CODEC(ZSTD(1)),
    tool           LowCardinality(Nullable(String)),
    server         LowCardinality(Nullable(String)),
    score          UInt8,
    reasons        Array(LowCardinality(String)),
    signals        Map(LowCardinality(String), Float64),
    window_start   Nullable(DateTime64(6, 'UTC')),
    window_end     Nullable(DateTime64(6, 'UTC')),
    event_id       Nullable(String)          CODEC(ZSTD(1)),
    scorer         LowCardinality(String),
    schema_version UInt32,

    INDEX idx_session_id session_id TYPE bloom_filter(0.01) GRANULARITY 4
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (tenant, principal, ts, score_id)
SETTINGS non_replicated_deduplication_window = 10000, ttl_only_drop_parts = 1;

CREATE TABLE IF NOT EXISTS audit.checkpoints
(
    ts         DateTime64(6, 'UTC')   CODEC(Delta, ZSTD(1)),
    stream_id  LowCardinality(String),
    seq        UInt64                 CODEC(Delta, ZSTD(1)),
    hash       String                 CODEC(ZSTD(1)),
    signature  String                 CODEC(ZSTD(1)),
    instance   LowCardinality(String),
    -- The checkpoint event itself: where it sits in the chain it signs.
    event_id   String                 CODEC(ZSTD(1)),
    event_seq  UInt64
)
ENGINE = MergeTree
ORDER BY (stream_id, seq)
SETTINGS non_replicated_deduplication_window = 10000;
