//! Migration 3: the logs and metrics tables (issue 25), as the OpenTelemetry Collector's
//! clickhouseexporter creates them — same names, column names and types, so Grafana's log and
//! metric views and ClickStack read them unchanged (gateway/tests/clickhouse_tools.rs runs
//! their queries) — with tracegate's usual additions: the tenant columns first and leading the
//! sort key; for log records the GenAI columns (GenAI events carry the model, operation and
//! token counts as attributes), `RecordId` and `PayloadKeys`, and `otel_logs_payloads` where a
//! large body or attribute (a prompt) is kept whole, as spans' are.
//!
//! Differences from the exporter, each for a reason:
//! - every metric time column is `DateTime64(9)` (the exporter's newest DDL has `DateTime` in
//!   two tables and `DateTime64(9)` in three; nanoseconds lose nothing and read the same);
//! - the metric tables' sort key hashes `Attributes` (`cityHash64`), as the exporter's sum and
//!   exponential histogram tables do, rather than holding the map itself in the key;
//! - `otel_logs` keeps `EventName` (the exporter added it with the OTLP 1.5 field).

macro_rules! tenant_columns {
    () => {
        "    OrgId LowCardinality(String) CODEC(ZSTD(1)),
    WorkspaceId LowCardinality(String) CODEC(ZSTD(1)),
    ProjectId LowCardinality(String) CODEC(ZSTD(1)),
    Region LowCardinality(String) CODEC(ZSTD(1)),
"
    };
}

macro_rules! metric_columns {
    () => {
        "    ResourceAttributes Map(LowCardinality(String), String) CODEC(ZSTD(1)),
    ResourceSchemaUrl String CODEC(ZSTD(1)),
    ScopeName String CODEC(ZSTD(1)),
    ScopeVersion String CODEC(ZSTD(1)),
    ScopeAttributes Map(LowCardinality(String), String) CODEC(ZSTD(1)),
    ScopeDroppedAttrCount UInt32 CODEC(ZSTD(1)),
    ScopeSchemaUrl String CODEC(ZSTD(1)),
    ServiceName LowCardinality(String) CODEC(ZSTD(1)),
    MetricName LowCardinality(String) CODEC(ZSTD(1)),
    MetricDescription String CODEC(ZSTD(1)),
    MetricUnit String CODEC(ZSTD(1)),
    Attributes Map(LowCardinality(String), String) CODEC(ZSTD(1)),
    StartTimeUnix DateTime64(9) CODEC(Delta(8), ZSTD(1)),
    TimeUnix DateTime64(9) CODEC(Delta(8), ZSTD(1)),
"
    };
}

macro_rules! exemplars {
    () => {
        "    Exemplars Nested (
        FilteredAttributes Map(LowCardinality(String), String),
        TimeUnix DateTime64(9),
        Value Float64,
        SpanId String,
        TraceId String
    ) CODEC(ZSTD(1)),
"
    };
}

macro_rules! metric_tail {
    () => {
        "    INDEX idx_res_attr_key mapKeys(ResourceAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_res_attr_value mapValues(ResourceAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_scope_attr_key mapKeys(ScopeAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_scope_attr_value mapValues(ScopeAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_attr_key mapKeys(Attributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_attr_value mapValues(Attributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_time_minmax TimeUnix TYPE minmax GRANULARITY 1
) ENGINE = {engine}
PARTITION BY toDate(TimeUnix)
ORDER BY (OrgId, WorkspaceId, ProjectId, ServiceName, MetricName, toStartOfHour(TimeUnix), cityHash64(Attributes), TimeUnix)
{ttl_time_unix}
SETTINGS index_granularity = 8192, ttl_only_drop_parts = 1, {dedup}"
    };
}

/// Migration 3's statements (`migrations.rs` lists it; placeholders as there).
pub(super) const STATEMENTS: &[&str] = &[
    concat!(
        "CREATE TABLE IF NOT EXISTS `{db}`.otel_logs (\n",
        tenant_columns!(),
        "    Timestamp DateTime64(9) CODEC(Delta(8), ZSTD(1)),
    TimestampTime DateTime DEFAULT toDateTime(Timestamp),
    TraceId String CODEC(ZSTD(1)),
    SpanId String CODEC(ZSTD(1)),
    TraceFlags UInt8,
    SeverityText LowCardinality(String) CODEC(ZSTD(1)),
    SeverityNumber UInt8,
    ServiceName LowCardinality(String) CODEC(ZSTD(1)),
    Body String CODEC(ZSTD(1)),
    ResourceSchemaUrl LowCardinality(String) CODEC(ZSTD(1)),
    ResourceAttributes Map(LowCardinality(String), String) CODEC(ZSTD(1)),
    ScopeSchemaUrl LowCardinality(String) CODEC(ZSTD(1)),
    ScopeName String CODEC(ZSTD(1)),
    ScopeVersion LowCardinality(String) CODEC(ZSTD(1)),
    ScopeAttributes Map(LowCardinality(String), String) CODEC(ZSTD(1)),
    LogAttributes Map(LowCardinality(String), String) CODEC(ZSTD(1)),
    EventName String CODEC(ZSTD(1)),
    GenAiProvider LowCardinality(String) CODEC(ZSTD(1)),
    GenAiOperation LowCardinality(String) CODEC(ZSTD(1)),
    GenAiRequestModel LowCardinality(String) CODEC(ZSTD(1)),
    GenAiResponseModel LowCardinality(String) CODEC(ZSTD(1)),
    GenAiInputTokens UInt64 CODEC(T64, ZSTD(1)),
    GenAiOutputTokens UInt64 CODEC(T64, ZSTD(1)),
    RecordId String CODEC(ZSTD(1)),
    PayloadKeys Array(String) CODEC(ZSTD(1)),
    ReceivedAt DateTime64(9) CODEC(Delta(8), ZSTD(1)),
    INDEX idx_trace_id TraceId TYPE bloom_filter(0.001) GRANULARITY 1,
    INDEX idx_res_attr_key mapKeys(ResourceAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_res_attr_value mapValues(ResourceAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_scope_attr_key mapKeys(ScopeAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_scope_attr_value mapValues(ScopeAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_log_attr_key mapKeys(LogAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_log_attr_value mapValues(LogAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_body Body TYPE tokenbf_v1(32768, 3, 0) GRANULARITY 8,
    INDEX idx_gen_ai_request_model GenAiRequestModel TYPE bloom_filter(0.01) GRANULARITY 1
) ENGINE = {engine}
PARTITION BY toDate(TimestampTime)
PRIMARY KEY (OrgId, WorkspaceId, ProjectId, ServiceName, TimestampTime)
ORDER BY (OrgId, WorkspaceId, ProjectId, ServiceName, TimestampTime, Timestamp)
{ttl}
SETTINGS index_granularity = 8192, ttl_only_drop_parts = 1, {dedup}"
    ),
    concat!(
        "CREATE TABLE IF NOT EXISTS `{db}`.otel_logs_payloads (\n",
        tenant_columns!(),
        "    Timestamp DateTime64(9) CODEC(Delta(8), ZSTD(1)),
    TraceId String CODEC(ZSTD(1)),
    SpanId String CODEC(ZSTD(1)),
    RecordId String CODEC(ZSTD(1)),
    Location LowCardinality(String) CODEC(ZSTD(1)),
    Key LowCardinality(String) CODEC(ZSTD(1)),
    Value String CODEC(ZSTD(3)),
    ValueBytes UInt64 CODEC(ZSTD(1)),
    INDEX idx_trace_id TraceId TYPE bloom_filter(0.001) GRANULARITY 1
) ENGINE = {engine}
PARTITION BY toDate(Timestamp)
ORDER BY (OrgId, WorkspaceId, ProjectId, RecordId, Location, Key)
{ttl}
SETTINGS index_granularity = 1024, ttl_only_drop_parts = 1, {dedup}"
    ),
    concat!(
        "CREATE TABLE IF NOT EXISTS `{db}`.otel_metrics_gauge (\n",
        tenant_columns!(),
        metric_columns!(),
        "    Value Float64 CODEC(ZSTD(1)),
    Flags UInt32 CODEC(ZSTD(1)),
",
        exemplars!(),
        metric_tail!()
    ),
    concat!(
        "CREATE TABLE IF NOT EXISTS `{db}`.otel_metrics_sum (\n",
        tenant_columns!(),
        metric_columns!(),
        "    Value Float64 CODEC(ZSTD(1)),
    Flags UInt32 CODEC(ZSTD(1)),
",
        exemplars!(),
        "    AggregationTemporality Int32 CODEC(ZSTD(1)),
    IsMonotonic Boolean CODEC(Delta, ZSTD(1)),
",
        metric_tail!()
    ),
    concat!(
        "CREATE TABLE IF NOT EXISTS `{db}`.otel_metrics_histogram (\n",
        tenant_columns!(),
        metric_columns!(),
        "    Count UInt64 CODEC(Delta, ZSTD(1)),
    Sum Float64 CODEC(ZSTD(1)),
    BucketCounts Array(UInt64) CODEC(ZSTD(1)),
    ExplicitBounds Array(Float64) CODEC(ZSTD(1)),
",
        exemplars!(),
        "    Flags UInt32 CODEC(ZSTD(1)),
    Min Float64 CODEC(ZSTD(1)),
    Max Float64 CODEC(ZSTD(1)),
    AggregationTemporality Int32 CODEC(ZSTD(1)),
",
        metric_tail!()
    ),
    concat!(
        "CREATE TABLE IF NOT EXISTS `{db}`.otel_metrics_exponential_histogram (\n",
        tenant_columns!(),
        metric_columns!(),
        "    Count UInt64 CODEC(Delta, ZSTD(1)),
    Sum Float64 CODEC(ZSTD(1)),
    Scale Int32 CODEC(ZSTD(1)),
    ZeroCount UInt64 CODEC(ZSTD(1)),
    PositiveOffset Int32 CODEC(ZSTD(1)),
    PositiveBucketCounts Array(UInt64) CODEC(ZSTD(1)),
    NegativeOffset Int32 CODEC(ZSTD(1)),
    NegativeBucketCounts Array(UInt64) CODEC(ZSTD(1)),
",
        exemplars!(),
        "    Flags UInt32 CODEC(ZSTD(1)),
    Min Float64 CODEC(ZSTD(1)),
    Max Float64 CODEC(ZSTD(1)),
    AggregationTemporality Int32 CODEC(ZSTD(1)),
",
        metric_tail!()
    ),
    concat!(
        "CREATE TABLE IF NOT EXISTS `{db}`.otel_metrics_summary (\n",
        tenant_columns!(),
        metric_columns!(),
        "    Count UInt64 CODEC(Delta, ZSTD(1)),
    Sum Float64 CODEC(ZSTD(1)),
    ValueAtQuantiles Nested (
        Quantile Float64,
        Value Float64
    ) CODEC(ZSTD(1)),
    Flags UInt32 CODEC(ZSTD(1)),
",
        metric_tail!()
    ),
];
