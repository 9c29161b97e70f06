-- 0003: per-minute rollups of audit.events by tenant, principal, server and tool, for dashboards
-- and alert rules (a month of raw events is too much to scan every refresh).
--
-- The materialized view feeds every block inserted into audit.events. Its target carries the same
-- deduplication window as the source, so a replayed batch (same insert_deduplication_token) is
-- dropped from the rollups too instead of being counted twice.
--
-- What the counters mean (event types from schemas/events.py):
--   events         every event in the group
--   calls          requests admitted from agents   (agent_message_received, kind request)
--   refused        messages the gateway refused    (message_refused, any outcome)
--   blocked        refused by a block decision     (outcome blocked)
--   rate_limited   refused by a rate limit         (outcome rate_limited)
--   errors         error answers agents received   (agent_message_sent, kind error)
--   upstream_errors  errors or empty answers from upstream servers
--   timeouts       outcome timeout
--   latency_*      end-to-end latency the agent saw (agent_message_sent with latency_us)
-- Read the latency digest with quantileTDigestMerge(0.99)(latency_digest), or use the
-- audit.events_per_minute_merged view, which merges states per group.

CREATE TABLE IF NOT EXISTS audit.events_per_minute
(
    -- DateTime64, not DateTime: chDB's Native output drops the zone of a DateTime('UTC') column.
    minute          DateTime64(0, 'UTC')                         CODEC(DoubleDelta, ZSTD(1)),
    tenant          LowCardinality(String),
    principal       LowCardinality(String),
    server          LowCardinality(String),
    tool            LowCardinality(String),
    events          SimpleAggregateFunction(sum, UInt64),
    calls           SimpleAggregateFunction(sum, UInt64),
    refused         SimpleAggregateFunction(sum, UInt64),
    blocked         SimpleAggregateFunction(sum, UInt64),
    rate_limited    SimpleAggregateFunction(sum, UInt64),
    errors          SimpleAggregateFunction(sum, UInt64),
    upstream_errors SimpleAggregateFunction(sum, UInt64),
    timeouts        SimpleAggregateFunction(sum, UInt64),
    payload_bytes   SimpleAggregateFunction(sum, UInt64),
    latency_count   SimpleAggregateFunction(sum, UInt64),
    latency_sum_us  SimpleAggregateFunction(sum, Int64),
    latency_max_us  SimpleAggregateFunction(max, Int64),
    latency_digest  AggregateFunction(quantileTDigest, Int64)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(minute)
ORDER BY (tenant, minute, principal, server, tool)
SETTINGS non_replicated_deduplication_window = 10000, ttl_only_drop_parts = 1;

CREATE MATERIALIZED VIEW IF NOT EXISTS audit.events_per_minute_mv TO audit.events_per_minute AS
SELECT
    toStartOfMinute(ts)                                                        AS minute,
    tenant,
    principal,
    server,
    tool,
    count()                                                                    AS events,
    countIf(event_type = 'agent_message_received' AND kind = 'request')        AS calls,
    countIf(event_type = 'message_refused')                                    AS refused,
    countIf(outcome = 'blocked')                                               AS blocked,
    countIf(outcome = 'rate_limited')                                          AS rate_limited,
    countIf(event_type = 'agent_message_sent' AND kind = 'error')              AS errors,
    countIf(outcome = 'upstream_error')                                        AS upstream_errors,
    countIf(outcome = 'timeout')                                               AS timeouts,
    sum(payload_size)                                                          AS payload_bytes,
    countIf(event_type = 'agent_message_sent' AND latency_us IS NOT NULL)      AS latency_count,
    sumIf(assumeNotNull(latency_us), event_type = 'agent_message_sent' AND latency_us IS NOT NULL)
                                                                               AS latency_sum_us,
    maxIf(assumeNotNull(latency_us), event_type = 'agent_message_sent' AND latency_us IS NOT NULL)
                                                                               AS latency_max_us,
    quantileTDigestStateIf(assumeNotNull(latency_us), event_type = 'agent_message_sent' AND latency_us IS NOT NULL)
                                                                               AS latency_digest
FROM audit.events
GROUP BY minute, tenant, principal, server, tool;

-- Merged per group, for dashboards that should not have to know about aggregate states.
CREATE VIEW IF NOT EXISTS audit.events_per_minute_merged AS
SELECT
    minute,
    tenant,
    principal,
    server,
    tool,
    sum(events)                                       AS events,
    sum(calls)                                        AS calls,
    sum(refused)                                      AS refused,
    sum(blocked)                                      AS blocked,
    sum(rate_limited)                                 AS rate_limited,
    sum(errors)                                       AS errors,
    sum(upstream_errors)                              AS upstream_errors,
    sum(timeouts)                                     AS timeouts,
    sum(payload_bytes)                                AS payload_bytes,
    sum(latency_count)                                AS latency_count,
    sum(latency_sum_us)                               AS latency_sum_us,
    max(latency_max_us)                               AS latency_max_us,
    quantileTDigestMerge(0.5)(latency_digest)         AS latency_p50_us,
    quantileTDigestMerge(0.9)(latency_digest)         AS latency_p90_us,
    quantileTDigestMerge(0.99)(latency_digest)        AS latency_p99_us
FROM audit.events_per_minute
GROUP BY minute, tenant, principal, server, tool;
