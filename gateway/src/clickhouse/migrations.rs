//! The ClickHouse schema's migrations, as DDL (docs/clickhouse.md). `schema.rs` runs them.
//!
//! Column names, types, codecs and indexes follow the OpenTelemetry Collector's
//! clickhouseexporter and ClickStack's (HyperDX) DDL, so Grafana and ClickStack read the tables
//! unchanged (gateway/tests/clickhouse_tools.rs runs their queries); tracegate's additions are
//! the tenant columns (leading the sort key), the GenAI columns and the payload table.

/// A statement that starts with this runs only where ClickHouse has text indexes (26.2+).
pub const TEXT_INDEX: &str = "-- text index\n";

pub struct Migration {
    pub version: u32,
    pub name: &'static str,
    /// Statements with `{db}`, `{engine}`, `{agg_engine}`, `{ttl}`, `{ttl_start}` and `{dedup}`
    /// placeholders. One that starts with [`TEXT_INDEX`] runs only on a server with text
    /// indexes (ClickHouse 26.2 and later).
    pub statements: &'static [&'static str],
}

/// The ordered migrations. Never edit an applied one: add a new version.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "otel_traces with tenant and GenAI columns, payload table, trace id index",
        statements: &[
            r#"CREATE TABLE IF NOT EXISTS `{db}`.otel_traces (
    OrgId LowCardinality(String) CODEC(ZSTD(1)),
    WorkspaceId LowCardinality(String) CODEC(ZSTD(1)),
    ProjectId LowCardinality(String) CODEC(ZSTD(1)),
    Region LowCardinality(String) CODEC(ZSTD(1)),
    Timestamp DateTime64(9) CODEC(Delta(8), ZSTD(1)),
    TraceId String CODEC(ZSTD(1)),
    SpanId String CODEC(ZSTD(1)),
    ParentSpanId String CODEC(ZSTD(1)),
    TraceState String CODEC(ZSTD(1)),
    SpanName LowCardinality(String) CODEC(ZSTD(1)),
    SpanKind LowCardinality(String) CODEC(ZSTD(1)),
    ServiceName LowCardinality(String) CODEC(ZSTD(1)),
    ResourceAttributes Map(LowCardinality(String), String) CODEC(ZSTD(1)),
    ScopeName String CODEC(ZSTD(1)),
    ScopeVersion String CODEC(ZSTD(1)),
    SpanAttributes Map(LowCardinality(String), String) CODEC(ZSTD(1)),
    Duration UInt64 CODEC(ZSTD(1)),
    StatusCode LowCardinality(String) CODEC(ZSTD(1)),
    StatusMessage String CODEC(ZSTD(1)),
    Events Nested (
        Timestamp DateTime64(9),
        Name LowCardinality(String),
        Attributes Map(LowCardinality(String), String)
    ) CODEC(ZSTD(1)),
    Links Nested (
        TraceId String,
        SpanId String,
        TraceState String,
        Attributes Map(LowCardinality(String), String)
    ) CODEC(ZSTD(1)),
    ScopeAttributes Map(LowCardinality(String), String) CODEC(ZSTD(1)),
    Flags UInt32 CODEC(ZSTD(1)),
    DroppedAttributesCount UInt32 CODEC(ZSTD(1)),
    DroppedEventsCount UInt32 CODEC(ZSTD(1)),
    DroppedLinksCount UInt32 CODEC(ZSTD(1)),
    GenAiProvider LowCardinality(String) CODEC(ZSTD(1)),
    GenAiOperation LowCardinality(String) CODEC(ZSTD(1)),
    GenAiRequestModel LowCardinality(String) CODEC(ZSTD(1)),
    GenAiResponseModel LowCardinality(String) CODEC(ZSTD(1)),
    GenAiInputTokens UInt64 CODEC(T64, ZSTD(1)),
    GenAiOutputTokens UInt64 CODEC(T64, ZSTD(1)),
    PayloadKeys Array(String) CODEC(ZSTD(1)),
    ReceivedAt DateTime64(9) CODEC(Delta(8), ZSTD(1)),
    INDEX idx_trace_id TraceId TYPE bloom_filter(0.001) GRANULARITY 1,
    INDEX idx_res_attr_key mapKeys(ResourceAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_res_attr_value mapValues(ResourceAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_span_attr_key mapKeys(SpanAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_span_attr_value mapValues(SpanAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_duration Duration TYPE minmax GRANULARITY 1,
    INDEX idx_gen_ai_request_model GenAiRequestModel TYPE bloom_filter(0.01) GRANULARITY 1
) ENGINE = {engine}
PARTITION BY toDate(Timestamp)
ORDER BY (OrgId, WorkspaceId, ProjectId, ServiceName, SpanName, toDateTime(Timestamp))
{ttl}
SETTINGS index_granularity = 8192, ttl_only_drop_parts = 1, {dedup}"#,
            r#"CREATE TABLE IF NOT EXISTS `{db}`.otel_traces_payloads (
    OrgId LowCardinality(String) CODEC(ZSTD(1)),
    WorkspaceId LowCardinality(String) CODEC(ZSTD(1)),
    ProjectId LowCardinality(String) CODEC(ZSTD(1)),
    Region LowCardinality(String) CODEC(ZSTD(1)),
    Timestamp DateTime64(9) CODEC(Delta(8), ZSTD(1)),
    TraceId String CODEC(ZSTD(1)),
    SpanId String CODEC(ZSTD(1)),
    Location LowCardinality(String) CODEC(ZSTD(1)),
    EventIndex UInt32 CODEC(ZSTD(1)),
    Key LowCardinality(String) CODEC(ZSTD(1)),
    Value String CODEC(ZSTD(3)),
    ValueBytes UInt64 CODEC(ZSTD(1)),
    INDEX idx_trace_id TraceId TYPE bloom_filter(0.001) GRANULARITY 1
) ENGINE = {engine}
PARTITION BY toDate(Timestamp)
ORDER BY (OrgId, WorkspaceId, ProjectId, TraceId, SpanId, Location, EventIndex, Key)
{ttl}
SETTINGS index_granularity = 1024, ttl_only_drop_parts = 1, {dedup}"#,
            r#"CREATE TABLE IF NOT EXISTS `{db}`.otel_traces_trace_id_ts (
    TraceId String CODEC(ZSTD(1)),
    Start DateTime CODEC(Delta(4), ZSTD(1)),
    End DateTime CODEC(Delta(4), ZSTD(1)),
    OrgId LowCardinality(String) CODEC(ZSTD(1)),
    WorkspaceId LowCardinality(String) CODEC(ZSTD(1)),
    ProjectId LowCardinality(String) CODEC(ZSTD(1)),
    INDEX idx_trace_id TraceId TYPE bloom_filter(0.01) GRANULARITY 1
) ENGINE = {engine}
PARTITION BY toDate(Start)
ORDER BY (TraceId, Start)
{ttl_start}
SETTINGS index_granularity = 8192, ttl_only_drop_parts = 1"#,
            r#"CREATE MATERIALIZED VIEW IF NOT EXISTS `{db}`.otel_traces_trace_id_ts_mv
TO `{db}`.otel_traces_trace_id_ts
AS SELECT
    TraceId,
    min(toDateTime(Timestamp)) AS Start,
    max(toDateTime(Timestamp)) AS End,
    OrgId,
    WorkspaceId,
    ProjectId
FROM `{db}`.otel_traces
WHERE TraceId != ''
GROUP BY TraceId, OrgId, WorkspaceId, ProjectId"#,
        ],
    },
    V2,
    Migration {
        version: 3,
        name: "logs and metrics: otel_logs, otel_logs_payloads and the five otel_metrics_* tables",
        statements: super::migration_v3::STATEMENTS,
    },
];

/// Parity with the clickhouseexporter and ClickStack DDL (issue 24): the attribute "items"
/// columns ClickStack's attribute search reads, with their text indexes; `SampleRate` (sample
/// weighting) and the RUM session id; the span-name token index; `T64` on `Duration`; and the
/// trace-id lookup as an `AggregatingMergeTree` of `min`/`max`, as the Collector has it now.
const V2: Migration = Migration {
    version: 2,
    name: "clickhouseexporter and ClickStack parity: attribute items, SampleRate, RUM session, span-name index, T64, aggregating trace id lookup",
    statements: &[
        "ALTER TABLE `{db}`.otel_traces ADD COLUMN IF NOT EXISTS ResourceAttributeItems Array(String) \
         ALIAS arrayMap(kv -> concat(kv.1, '=', kv.2), CAST(ResourceAttributes, 'Array(Tuple(String, String))'))",
        "ALTER TABLE `{db}`.otel_traces ADD COLUMN IF NOT EXISTS SpanAttributeItems Array(String) \
         ALIAS arrayMap(kv -> concat(kv.1, '=', kv.2), CAST(SpanAttributes, 'Array(Tuple(String, String))'))",
        "ALTER TABLE `{db}`.otel_traces ADD COLUMN IF NOT EXISTS SampleRate UInt64 \
         MATERIALIZED greatest(toUInt64OrZero(SpanAttributes['SampleRate']), 1) CODEC(T64, ZSTD(1))",
        "ALTER TABLE `{db}`.otel_traces ADD COLUMN IF NOT EXISTS `__hdx_materialized_rum.sessionId` String \
         MATERIALIZED ResourceAttributes['rum.sessionId'] CODEC(ZSTD(1))",
        // Codec only: existing parts keep theirs until merged; nothing is rewritten now.
        "ALTER TABLE `{db}`.otel_traces MODIFY COLUMN Duration UInt64 CODEC(T64, ZSTD(1))",
        "ALTER TABLE `{db}`.otel_traces ADD INDEX IF NOT EXISTS idx_lower_span_name lower(SpanName) \
         TYPE tokenbf_v1(32768, 3, 0) GRANULARITY 8",
        "ALTER TABLE `{db}`.otel_traces ADD INDEX IF NOT EXISTS idx_rum_session_id \
         `__hdx_materialized_rum.sessionId` TYPE bloom_filter(0.001) GRANULARITY 1",
        "-- text index\nALTER TABLE `{db}`.otel_traces ADD INDEX IF NOT EXISTS idx_res_attr_items \
         ResourceAttributeItems TYPE text(tokenizer = 'array')",
        "-- text index\nALTER TABLE `{db}`.otel_traces ADD INDEX IF NOT EXISTS idx_span_attr_items \
         SpanAttributeItems TYPE text(tokenizer = 'array')",
        // Parts written before the index exist without it, and ClickHouse 26.9 then fails
        // `has(SpanAttributeItems, …)` on them ("First argument for function arrayMap must be a
        // function", measured on chdb 4.4.0): build it for them before anyone searches.
        "-- text index\nALTER TABLE `{db}`.otel_traces MATERIALIZE INDEX idx_res_attr_items \
         SETTINGS mutations_sync = 2",
        "-- text index\nALTER TABLE `{db}`.otel_traces MATERIALIZE INDEX idx_span_attr_items \
         SETTINGS mutations_sync = 2",
        // The lookup is rebuilt from the spans themselves (the last statement), so dropping the
        // old one loses nothing, and a run that dies half-way is simply run again.
        "DROP VIEW IF EXISTS `{db}`.otel_traces_trace_id_ts_mv SYNC",
        "DROP TABLE IF EXISTS `{db}`.otel_traces_trace_id_ts SYNC",
        // The tenant columns are in the key: two tenants' spans under one trace id (a client
        // can send any id) stay two rows and never widen each other's time range.
        r#"CREATE TABLE IF NOT EXISTS `{db}`.otel_traces_trace_id_ts (
    TraceId String CODEC(ZSTD(1)),
    Start SimpleAggregateFunction(min, DateTime) CODEC(ZSTD(1)),
    End SimpleAggregateFunction(max, DateTime) CODEC(ZSTD(1)),
    OrgId LowCardinality(String) CODEC(ZSTD(1)),
    WorkspaceId LowCardinality(String) CODEC(ZSTD(1)),
    ProjectId LowCardinality(String) CODEC(ZSTD(1))
) ENGINE = {agg_engine}
PARTITION BY toStartOfWeek(Start)
ORDER BY (TraceId, OrgId, WorkspaceId, ProjectId)
{ttl_start}
SETTINGS index_granularity = 8192, ttl_only_drop_parts = 1"#,
        r#"CREATE MATERIALIZED VIEW IF NOT EXISTS `{db}`.otel_traces_trace_id_ts_mv
TO `{db}`.otel_traces_trace_id_ts
AS SELECT
    TraceId,
    min(toDateTime(Timestamp)) AS Start,
    max(toDateTime(Timestamp)) AS End,
    OrgId,
    WorkspaceId,
    ProjectId
FROM `{db}`.otel_traces
WHERE TraceId != ''
GROUP BY TraceId, OrgId, WorkspaceId, ProjectId"#,
        // min/max: rows the view added meanwhile and these aggregate to the same answer.
        "INSERT INTO `{db}`.otel_traces_trace_id_ts SELECT TraceId, min(toDateTime(Timestamp)), \
         max(toDateTime(Timestamp)), OrgId, WorkspaceId, ProjectId FROM `{db}`.otel_traces \
         WHERE TraceId != '' GROUP BY TraceId, OrgId, WorkspaceId, ProjectId",
    ],
};
