//! Queries Grafana's ClickHouse data source and ClickStack (HyperDX) send for OTel logs
//! (`otel_logs`) and metrics (`otel_metrics_gauge`, `otel_metrics_sum`,
//! `otel_metrics_histogram`), recorded from their repositories with their source, as
//! tools/queries.rs does for traces. Each is kept as the tool sends it (where a test's input had
//! to be adapted, its description says how); the test only does what the tool does before
//! sending: expand Grafana's `$__fromTime`/`$__toTime` macros (its backend
//! writes `toDateTime(<unix seconds>)`) and move ClickStack's recorded time range
//! (`1739318400000` … `1739491200000` ms) to the test's. The few that need more say so in their
//! description: Grafana's `$__timeInterval(TimeUnix)`, and ClickStack's metric snapshots, whose
//! range ends at `1765670400000` ms.
//!
//! Both tools default to database `default`, as in tools/queries.rs. Neither repository has a
//! query for `otel_metrics_summary` or `otel_metrics_exponential_histogram` (ClickStack only
//! names them in a metric source's `metricTables`): none is recorded.

/// grafana/clickhouse-datasource @ 1d04063a31fb30f9582cd0b3aeaacb7d350b0dcf. The logs query
/// builder with the OTel preset (src/otel.ts): on tracegate's otel_logs, which has TimestampTime
/// (gateway/src/clickhouse/migration_v3.rs), the default version 'auto (latest)' picks the 1.2.9
/// column map (src/otel.ts l. 23-38, 105-106; src/components/queryBuilder/views/
/// logsQueryBuilderHooks.ts l. 76-128): `TimestampTime` (FilterTime), `Timestamp` (Time), `Body`,
/// `SeverityText`, `TraceId`, `ResourceAttributes`, `ScopeAttributes`, `LogAttributes`; a new
/// logs query's filters and order (src/components/queryBuilder/defaultQueryOptions.ts l. 12-35:
/// within the dashboard range, level "is anything" (rendered as nothing), newest first) and
/// LIMIT 1000 (src/components/queryBuilder/compactQueryDefaults.ts l. 78); rendered by
/// src/data/sqlGenerator.ts l. 345-442. The database is the user's setting (the tests' `otel` is
/// written `default`).
pub const GRAFANA_LOGS: &[(&str, &str)] = &[
    (
        "logs panel as the test records it for a table with TimestampTime (src/data/sqlGenerator.test.ts l. 223-262, 'emits TimestampTime when FilterTime is mapped'): one row per record whose TimestampTime is in the range, newest first, at most 1000; columns timestamp, body, level",
        r#"SELECT Timestamp as "timestamp", Body as "body", SeverityText as "level" FROM "default"."otel_logs" WHERE ( TimestampTime >= $__fromTime AND TimestampTime <= $__toTime ) ORDER BY (TimestampTime, timestamp) DESC LIMIT 1000"#,
    ),
    (
        "logs panel with all the OTel preset's columns (the string issue grafana/clickhouse-datasource#2103 quotes, less its ServiceName filter): one row per record in the range, newest first, at most 1000; columns timestamp, body, level, traceID, ResourceAttributes, ScopeAttributes, LogAttributes as stored",
        r#"SELECT Timestamp as "timestamp", Body as "body", SeverityText as "level", TraceId as "traceID", ResourceAttributes, ScopeAttributes, LogAttributes FROM "default"."otel_logs" WHERE ( TimestampTime >= $__fromTime AND TimestampTime <= $__toTime ) ORDER BY (TimestampTime, timestamp) DESC LIMIT 1000"#,
    ),
    (
        // The test mocks the bucket to `INTERVAL 1 DAY`; that (a panel interval over 1 h) would
        // drop every record of the day the range starts in, since the filter compares the
        // bucket's start with $__fromTime. Recorded with the MINUTE logs.ts gives for Explore
        // ranges up to ~16 h.
        "log volume (histogram by level) of query 2 (src/data/CHDatasource.ts l. 348-432, buckets on the FilterTime column; src/data/logs.ts l. 34-84; test src/data/CHDatasource.test.ts l. 1620-1638): one row per minute whose start is >= $__fromTime, columns time, critical, error, warn, info, debug, trace, unknown = records whose SeverityText contains one of the level's spellings (case-sensitive substring: INFO counts in info; ERROR and error in error)",
        r#"SELECT toStartOfInterval("TimestampTime", INTERVAL 1 MINUTE) as "time", sum(multiSearchAny(toString("SeverityText"), ['critical','fatal','crit','alert','emerg','CRITICAL','FATAL','CRIT','ALERT','EMERG','Critical','Fatal','Crit','Alert','Emerg'])) as critical, sum(multiSearchAny(toString("SeverityText"), ['error','err','eror','ERROR','ERR','EROR','Error','Err','Eror'])) as error, sum(multiSearchAny(toString("SeverityText"), ['warn','warning','WARN','WARNING','Warn','Warning'])) as warn, sum(multiSearchAny(toString("SeverityText"), ['info','information','informational','INFO','INFORMATION','INFORMATIONAL','Info','Information','Informational'])) as info, sum(multiSearchAny(toString("SeverityText"), ['debug','dbug','DEBUG','DBUG','Debug','Dbug'])) as debug, sum(multiSearchAny(toString("SeverityText"), ['trace','TRACE','Trace'])) as trace, sum(multiSearchAny(toString("SeverityText"), ['unknown','UNKNOWN','Unknown'])) as unknown FROM "default"."otel_logs" WHERE ( time >= $__fromTime AND time <= $__toTime ) GROUP BY time ORDER BY time ASC"#,
    ),
    (
        "Explore's filter for a log attribute value on query 2 (modifyQuery ADD_FILTER, src/data/CHDatasource.ts l. 175-189 and 672-755; test src/data/CHDatasource.test.ts l. 1976-1987 with `LogAttributes.method` = `F`, sqlGenerator.test.ts l. 52-92 checks the same fragment): only the records in the range with LogAttributes['method'] = 'F', newest first",
        r#"SELECT Timestamp as "timestamp", Body as "body", SeverityText as "level", TraceId as "traceID", ResourceAttributes, ScopeAttributes, LogAttributes FROM "default"."otel_logs" WHERE ( TimestampTime >= $__fromTime AND TimestampTime <= $__toTime ) AND ( LogAttributes['method'] = 'F' ) ORDER BY (TimestampTime, timestamp) DESC LIMIT 1000"#,
    ),
    (
        // Not what Grafana sends to tracegate's table; it runs there too (reads only Timestamp).
        "logs panel for an otel_logs without TimestampTime (collector-contrib >= v0.151; the 1.3.0 map, src/otel.ts l. 61-82; src/data/sqlGenerator.test.ts l. 179-221, 'falls back to Time column when FilterTime is unmapped'): one row per record whose Timestamp is in the range, newest first, at most 1000; columns timestamp, body, level",
        r#"SELECT Timestamp as "timestamp", Body as "body", SeverityText as "level" FROM "default"."otel_logs" WHERE ( timestamp >= $__fromTime AND timestamp <= $__toTime ) ORDER BY timestamp DESC LIMIT 1000"#,
    ),
];

/// grafana/clickhouse-datasource @ 1d04063a31fb30f9582cd0b3aeaacb7d350b0dcf. The repository has
/// nothing for the otel_metrics_* tables (no test, preset or dashboard names them). These are
/// its time-series builder's output as its tests record it (src/data/sqlGenerator.test.ts
/// l. 264-327, src/components/queryBuilder/utils.test.ts l. 455-480) with the tests' table and
/// columns (`time_data`, `time_field`, `number_field`) replaced by a metric table, `TimeUnix` and
/// `Value`, plus what the builder adds to a new query: the dashboard-range filter and
/// ORDER BY time ASC (src/components/queryBuilder/views/timeSeriesQueryBuilderHooks.ts
/// l. 50-87), LIMIT 1000 (src/types/sql.ts l. 59), and a MetricName filter the user adds
/// (src/data/sqlGenerator.ts l. 850-987). The builder proposes the table's first DateTime
/// column, StartTimeUnix, as the time column; the user picks TimeUnix.
pub const GRAFANA_METRICS: &[(&str, &str)] = &[
    (
        "gauge as a time series (List mode, src/data/sqlGenerator.ts l. 447-529; test l. 264-294's shape): one row per otel_metrics_gauge point with MetricName 'nodejs.event_loop.utilization' in the range, oldest first; columns time, Value",
        r#"SELECT TimeUnix as "time", Value FROM "default"."otel_metrics_gauge" WHERE ( time >= $__fromTime AND time <= $__toTime ) AND ( MetricName = 'nodejs.event_loop.utilization' ) ORDER BY time ASC LIMIT 1000"#,
    ),
    (
        // The test also selects the bare column (`number_field`) next to sum(): ClickHouse
        // rejects that (NOT_AN_AGGREGATE), so only the time column is selected here.
        "sum of a counter per timestamp (List mode with an aggregate; test l. 296-327's shape): one row per distinct TimeUnix of otel_metrics_sum points with MetricName 'db.client.connections.usage' in the range, oldest first; total = sum of Value over the series at that time",
        r#"SELECT TimeUnix as "time", sum(Value) as total FROM "default"."otel_metrics_sum" WHERE ( time >= $__fromTime AND time <= $__toTime ) AND ( MetricName = 'db.client.connections.usage' ) GROUP BY time ORDER BY time ASC LIMIT 1000"#,
    ),
    (
        "average per interval and service (Trend mode, src/data/sqlGenerator.ts l. 534-590; utils.test.ts l. 455-480's shape): the test must also replace `$__timeInterval(TimeUnix)` with `toStartOfInterval(toDateTime(TimeUnix), INTERVAL 60 second)` (pkg/macros/macros.go l. 116-122: INTERVAL <panel interval in s, >= 1> second); one row per (ServiceName, minute whose start is >= $__fromTime) holding points of 'nodejs.event_loop.utilization', avg_value = their mean Value",
        r#"SELECT $__timeInterval(TimeUnix) as "time", ServiceName, avg(Value) as avg_value FROM "default"."otel_metrics_gauge" WHERE ( time >= $__fromTime AND time <= $__toTime ) AND ( MetricName = 'nodejs.event_loop.utilization' ) GROUP BY ServiceName, time ORDER BY time ASC LIMIT 1000"#,
    ),
];

/// hyperdxio/hyperdx @ b52a6fa83a1a8f6d1cc70e8b676103ade6a1b207. Its tests hold no complete
/// query for an OTel log source: these are the log source's defaults (packages/app/src/source.ts
/// l. 357-366 detection, l. 425-441: select `Timestamp, ServiceName as service, SeverityText as
/// level, Body`, implicit column `Body`, severity `SeverityText`) rendered by
/// packages/common-utils/src/core/renderChartConfig.ts as the search page asks, with the
/// fragments its tests record. ClickStack reads the table's keys from system.tables; on
/// tracegate's otel_logs (gateway/src/clickhouse/migration_v3.rs: PARTITION BY
/// toDate(TimestampTime), PRIMARY KEY (OrgId, WorkspaceId, ProjectId, ServiceName,
/// TimestampTime), ORDER BY (…, TimestampTime, Timestamp)) they give: the time column
/// `TimestampTime`, the first Date-typed primary-key column (source.ts l. 326-336), which the
/// range filter and the buckets use; the results' ORDER BY (TimestampTime, Timestamp) DESC
/// (packages/app/src/DBSearchPage.tsx l. 832-887; DBSearchPage.test.tsx l. 179-191); and the
/// key columns appended to the results' SELECT (packages/app/src/components/DBRowTable.tsx
/// l. 1358-1393). On the collector-contrib >= v0.151 table (no TimestampTime, ORDER BY
/// (toStartOfFiveMinutes(Timestamp), ServiceName, Timestamp)) it would use Timestamp, add a
/// `)AND(toStartOfFiveMinutes(Timestamp) >= …` condition (packages/common-utils/src/core/
/// utils.ts l. 1034-1062; renderChartConfig.test.ts l. 2178-2187) and order by
/// (toStartOfFiveMinutes(Timestamp), Timestamp). A bare term becomes
/// `hasToken(lower(Body), lower(...))` (queryParser.test.ts l. 206-208; Body's tokenbf_v1 index
/// changes nothing, a text index would give hasAllTokens(), queryParser.ts l. 1495-1604);
/// ClickStack re-prints WHERE fragments through node-sql-parser, which drops one pair of
/// parentheses (as in tools/queries.rs). A source has no query settings unless the user sets
/// some.
pub const CLICKSTACK_LOGS: &[(&str, &str)] = &[
    (
        "search results for the bare term `chat` (LIMIT 200: packages/app/src/defaults.ts l. 4; packages/app/src/hooks/useOffsetPaginatedQuery.tsx l. 196-221 pages the range from its end in windows of 15 min, 6 h, ...: this is page 1 for a range of at most 15 min, or the whole range as the test sets it): the records in the range whose Body has the token chat (case-insensitive), newest first, at most 200; columns Timestamp, service, level, Body, TimestampTime, OrgId, WorkspaceId, ProjectId, ServiceName, toDate(TimestampTime)",
        r#"SELECT Timestamp,ServiceName as service,SeverityText as level,Body,TimestampTime,OrgId,WorkspaceId,ProjectId,ServiceName,toDate(TimestampTime) FROM default.otel_logs WHERE (TimestampTime >= fromUnixTimestamp64Milli(1739318400000) AND TimestampTime <= fromUnixTimestamp64Milli(1739491200000)) AND ((hasToken(lower(Body), lower('chat')))) ORDER BY (TimestampTime, Timestamp) DESC LIMIT 200 OFFSET 0"#,
    ),
    (
        "count by severity over time under that search (histogram, packages/app/src/DBSearchPage.tsx l. 1810-1856: count() grouped by the source's severityTextExpression, granularity auto = 1 hour for the recorded 48 h range (utils.ts l. 439-480, 60 buckets), the results' aliases as WITH (utils.ts l. 1328-1345; renderChartConfig.test.ts l. 1272-1325)): one row per (SeverityText, hour) among the records with the token chat; count() = records",
        r#"WITH (ServiceName) AS service,(SeverityText) AS level SELECT count(),SeverityText,toStartOfInterval(toDateTime(TimestampTime), INTERVAL 1 hour) AS `__hdx_time_bucket` FROM default.otel_logs WHERE (TimestampTime >= fromUnixTimestamp64Milli(1739318400000) AND TimestampTime <= fromUnixTimestamp64Milli(1739491200000)) AND ((hasToken(lower(Body), lower('chat')))) GROUP BY SeverityText,toStartOfInterval(toDateTime(TimestampTime), INTERVAL 1 hour) AS `__hdx_time_bucket` ORDER BY toStartOfInterval(toDateTime(TimestampTime), INTERVAL 1 hour) AS `__hdx_time_bucket`"#,
    ),
    (
        "search results for the SQL filter LogAttributes['http.method'] = 'GET' (search bar in SQL mode; renderChartConfig.ts l. 1287-1465; no LogAttributeItems column with a text index, so no has() rewrite, renderChartConfig.test.ts l. 1435-1462): the records in the range with that attribute value, newest first, at most 200",
        r#"SELECT Timestamp,ServiceName as service,SeverityText as level,Body,TimestampTime,OrgId,WorkspaceId,ProjectId,ServiceName,toDate(TimestampTime) FROM default.otel_logs WHERE (TimestampTime >= fromUnixTimestamp64Milli(1739318400000) AND TimestampTime <= fromUnixTimestamp64Milli(1739491200000)) AND (LogAttributes['http.method'] = 'GET') ORDER BY (TimestampTime, Timestamp) DESC LIMIT 200 OFFSET 0"#,
    ),
    (
        "Event Patterns sample for the term chat (packages/app/src/hooks/usePatterns.tsx l. 142-158: body, time column and severity under fixed aliases plus the key columns, ORDER BY rand(), LIMIT 10000 from packages/app/src/components/PatternTable.tsx l. 44; WITH aliases as in renderChartConfig.test.ts l. 1272-1325): up to 10000 records with the token chat in random order; the browser mines patterns from __hdx_pattern_field",
        r#"WITH (ServiceName) AS service,(SeverityText) AS level SELECT Body as __hdx_pattern_field,TimestampTime as __hdx_timestamp,SeverityText as __hdx_severity_text,TimestampTime,OrgId,WorkspaceId,ProjectId,ServiceName,toDate(TimestampTime) FROM default.otel_logs WHERE (TimestampTime >= fromUnixTimestamp64Milli(1739318400000) AND TimestampTime <= fromUnixTimestamp64Milli(1739491200000)) AND ((hasToken(lower(Body), lower('chat')))) ORDER BY rand() DESC LIMIT 10000"#,
    ),
    (
        // The test's source has `timestamp` as its time column: written `TimestampTime`, the one
        // ClickStack takes on tracegate's table (see above); the test's mocked primary key adds
        // no condition, as tracegate's does not.
        "error rate per minute, a formula chart on otel_logs (packages/common-utils/src/__tests__/__snapshots__/renderChartConfig.test.ts.snap l. 35; test renderChartConfig.test.ts l. 4437-4494; settings as recorded less the mocked additional_result_filter): one row per minute holding records, errors = records with SeverityText exactly 'error' (lower case), total = records, Error rate = errors / total * 100",
        r#"SELECT countIf(SeverityText = 'error') AS "errors",count() AS "total",((coalesce(countIf(SeverityText = 'error'), 0) / nullif(coalesce(count(), 0), 0)) * 100) AS "Error rate",toStartOfInterval(toDateTime(TimestampTime), INTERVAL 1 minute) AS `__hdx_time_bucket` FROM default.otel_logs WHERE (TimestampTime >= fromUnixTimestamp64Milli(1739318400000) AND TimestampTime <= fromUnixTimestamp64Milli(1739491200000)) GROUP BY toStartOfInterval(toDateTime(TimestampTime), INTERVAL 1 minute) AS `__hdx_time_bucket` ORDER BY toStartOfInterval(toDateTime(TimestampTime), INTERVAL 1 minute) AS `__hdx_time_bucket` SETTINGS optimize_read_in_order = 0, cast_keep_nullable = 1, count_distinct_implementation = 'uniqCombined64', async_insert_busy_timeout_min_ms = 20000"#,
    ),
];

/// hyperdxio/hyperdx @ b52a6fa83a1a8f6d1cc70e8b676103ade6a1b207,
/// packages/common-utils/src/__tests__/__snapshots__/renderChartConfig.test.ts.snap, copied as
/// recorded (line breaks, indentation and `--` comments included), less the test's mocked
/// `additional_result_filter = 'x != 2'` setting (as in tools/queries.rs). The tests' range is
/// 2025-02-12 … 2025-12-14: the test must replace `1739318400000` with its start and
/// `1765670400000` (not `1739491200000`) with its end, in ms. The tables are a metric source's
/// `metricTables` (renderChartConfig.test.ts l. 59-65). The test mocks the primary key; on
/// tracegate's metric tables (ORDER BY (…, toStartOfHour(TimeUnix), cityHash64(Attributes),
/// TimeUnix)) ClickStack also puts `AND(toStartOfHour(TimeUnix) >= toStartOfHour(<start>) AND
/// toStartOfHour(TimeUnix) <= toStartOfHour(<end>))` right after the Source CTE's TimeUnix range
/// (utils.ts l. 1034-1062), which selects the same rows. A series is the rows with the same
/// cityHash64(ScopeAttributes, ResourceAttributes, Attributes); AggregationTemporality 1 is
/// delta, 2 cumulative. Each query's outer filter compares a bucket's start with the range
/// start, so a bucket that starts before it is dropped.
pub const CLICKSTACK_METRICS: &[(&str, &str)] = &[
    (
        "p95 of a gauge per minute (snapshot l. 1236-1265; test l. 97-105: MetricName 'nodejs.event_loop.utilization', granularity 1 minute, LIMIT 10): the last Value of each series in each minute, then the 0.95 quantile over the series; one row per minute holding otel_metrics_gauge points of that name (columns: the quantile, __hdx_time_bucket), at most 10; one series with 0.25 and 0.5 a minute apart gives two rows, 0.25 and 0.5",
        r#"WITH Source AS (
            SELECT
              *,
              cityHash64(ScopeAttributes, ResourceAttributes, Attributes) AS AttributesHash
            FROM default.otel_metrics_gauge
            WHERE (TimeUnix >= fromUnixTimestamp64Milli(1739318400000) AND TimeUnix <= fromUnixTimestamp64Milli(1765670400000)) AND ((MetricName = 'nodejs.event_loop.utilization'))
          ),Bucketed AS (
            SELECT
              toStartOfInterval(toDateTime(TimeUnix), INTERVAL 1 minute) AS `__hdx_time_bucket2`,
              AttributesHash,
              last_value(Value) AS LastValue,
              any(ScopeAttributes) AS ScopeAttributes,
              any(ResourceAttributes) AS ResourceAttributes,
              any(Attributes) AS Attributes,
              any(ResourceSchemaUrl) AS ResourceSchemaUrl,
              any(ScopeName) AS ScopeName,
              any(ScopeVersion) AS ScopeVersion,
              any(ScopeDroppedAttrCount) AS ScopeDroppedAttrCount,
              any(ScopeSchemaUrl) AS ScopeSchemaUrl,
              any(ServiceName) AS ServiceName,
              any(MetricDescription) AS MetricDescription,
              any(MetricUnit) AS MetricUnit,
              any(StartTimeUnix) AS StartTimeUnix,
              any(Flags) AS Flags
            FROM Source
            GROUP BY AttributesHash, __hdx_time_bucket2
            ORDER BY AttributesHash, __hdx_time_bucket2
          ) SELECT quantile(0.95)(toFloat64OrDefault(toString(LastValue))),toStartOfInterval(toDateTime(__hdx_time_bucket2), INTERVAL 1 minute) AS `__hdx_time_bucket` FROM Bucketed WHERE (__hdx_time_bucket2 >= fromUnixTimestamp64Milli(1739318400000) AND __hdx_time_bucket2 <= fromUnixTimestamp64Milli(1765670400000)) GROUP BY toStartOfInterval(toDateTime(__hdx_time_bucket2), INTERVAL 1 minute) AS `__hdx_time_bucket` ORDER BY toStartOfInterval(toDateTime(__hdx_time_bucket2), INTERVAL 1 minute) AS `__hdx_time_bucket` LIMIT 10 SETTINGS short_circuit_function_evaluation = 'force_enable', optimize_read_in_order = 0, cast_keep_nullable = 1, count_distinct_implementation = 'uniqCombined64', async_insert_busy_timeout_min_ms = 20000"#,
    ),
    (
        "average counter increase per 5 minutes (snapshot l. 1300-1373; test l. 128-169: MetricName 'db.client.connections.usage', avg, granularity 5 minute, LIMIT 10): a row's Rate is its rise over the previous point of its series (cumulative; a drop counts 0, the series' first point read is NULL) or its Value (delta), summed per series and bucket, averaged over series; one row per 5-minute bucket with otel_metrics_sum points of that name (Value, __hdx_time_bucket); insert >= 2 cumulative points of one series in one bucket, e.g. 10 then 25: Value 15",
        r#"WITH Source AS (
                SELECT
                  *,
                  cityHash64(ScopeAttributes, ResourceAttributes, Attributes) AS AttributesHash,
                  IF(
                    AggregationTemporality = 1,
                    Value, -- DELTA: Value is already the per-interval increase
                    greatest(Value - lagInFrame(toNullable(Value), 1, NULL) OVER (PARTITION BY AttributesHash ORDER BY TimeUnix), 0)
                  ) AS Rate,
                  IF(
                    AggregationTemporality = 1,
                    SUM(Value) OVER (PARTITION BY AttributesHash ORDER BY TimeUnix ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW),
                    Value
                  ) AS Sum
                FROM default.otel_metrics_sum
                WHERE (TimeUnix >= toStartOfInterval(fromUnixTimestamp64Milli(1739318400000), INTERVAL 5 minute) - INTERVAL 5 minute AND TimeUnix <= toStartOfInterval(fromUnixTimestamp64Milli(1765670400000), INTERVAL 5 minute) + INTERVAL 5 minute) AND ((MetricName = 'db.client.connections.usage'))),Bucketed AS (
            SELECT
              `__hdx_time_bucket2`,
              AttributesHash,
              Rate,
              Sum,
              ResourceAttributes,
              ResourceSchemaUrl,
              ScopeName,
              ScopeVersion,
              ScopeAttributes,
              ScopeDroppedAttrCount,
              ScopeSchemaUrl,
              ServiceName,
              MetricName,
              MetricDescription,
              MetricUnit,
              Attributes,
              StartTimeUnix,
              Flags,
              AggregationTemporality,
              IsMonotonic
            FROM (
              SELECT
                toStartOfInterval(toDateTime(TimeUnix), INTERVAL 5 minute) AS `__hdx_time_bucket2`,
                AttributesHash,
                -- Per-bucket increase: sum of raw per-row deltas. NULL
                -- Source.Rate (first row of each partition) is ignored by sum().
                sum(Source.Rate) AS Rate,
                -- Last cumulative reading in the bucket (by time), used by
                -- the no-aggFn last_value(Sum) outer projection. argMax is
                -- deterministic w.r.t. TimeUnix ordering unlike last_value
                -- which in a GROUP BY context is anyLast (order-dependent).
                argMax(Source.Sum, TimeUnix) AS Sum,
                any(ResourceAttributes) AS ResourceAttributes,
                any(ResourceSchemaUrl) AS ResourceSchemaUrl,
                any(ScopeName) AS ScopeName,
                any(ScopeVersion) AS ScopeVersion,
                any(ScopeAttributes) AS ScopeAttributes,
                any(ScopeDroppedAttrCount) AS ScopeDroppedAttrCount,
                any(ScopeSchemaUrl) AS ScopeSchemaUrl,
                any(ServiceName) AS ServiceName,
                any(MetricName) AS MetricName,
                any(MetricDescription) AS MetricDescription,
                any(MetricUnit) AS MetricUnit,
                any(Attributes) AS Attributes,
                any(StartTimeUnix) AS StartTimeUnix,
                any(Flags) AS Flags,
                any(AggregationTemporality) AS AggregationTemporality,
                any(IsMonotonic) AS IsMonotonic
              FROM Source
              GROUP BY AttributesHash, `__hdx_time_bucket2`
              ORDER BY AttributesHash, `__hdx_time_bucket2`
            )
          ) SELECT avg(
      toFloat64OrDefault(toString(Rate))
    ) AS "Value",toStartOfInterval(toDateTime(`__hdx_time_bucket2`), INTERVAL 5 minute) AS `__hdx_time_bucket` FROM Bucketed WHERE (`__hdx_time_bucket2` >= fromUnixTimestamp64Milli(1739318400000) AND `__hdx_time_bucket2` <= fromUnixTimestamp64Milli(1765670400000)) GROUP BY toStartOfInterval(toDateTime(`__hdx_time_bucket2`), INTERVAL 5 minute) AS `__hdx_time_bucket` ORDER BY toStartOfInterval(toDateTime(`__hdx_time_bucket2`), INTERVAL 5 minute) AS `__hdx_time_bucket` LIMIT 10 SETTINGS optimize_read_in_order = 0, cast_keep_nullable = 1, count_distinct_implementation = 'uniqCombined64', async_insert_busy_timeout_min_ms = 20000"#,
    ),
    (
        "counter increase per 5 minutes, Use Increase (snapshot l. 1375-1448; test l. 200-255: aggFn increase, same metric): the same Rate summed over the series; one row per 5-minute bucket, Value = total rise (15 for 10 then 25)",
        r#"WITH Source AS (
                SELECT
                  *,
                  cityHash64(ScopeAttributes, ResourceAttributes, Attributes) AS AttributesHash,
                  IF(
                    AggregationTemporality = 1,
                    Value, -- DELTA: Value is already the per-interval increase
                    greatest(Value - lagInFrame(toNullable(Value), 1, NULL) OVER (PARTITION BY AttributesHash ORDER BY TimeUnix), 0)
                  ) AS Rate,
                  IF(
                    AggregationTemporality = 1,
                    SUM(Value) OVER (PARTITION BY AttributesHash ORDER BY TimeUnix ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW),
                    Value
                  ) AS Sum
                FROM default.otel_metrics_sum
                WHERE (TimeUnix >= toStartOfInterval(fromUnixTimestamp64Milli(1739318400000), INTERVAL 5 minute) - INTERVAL 5 minute AND TimeUnix <= toStartOfInterval(fromUnixTimestamp64Milli(1765670400000), INTERVAL 5 minute) + INTERVAL 5 minute) AND ((MetricName = 'db.client.connections.usage'))),Bucketed AS (
            SELECT
              `__hdx_time_bucket2`,
              AttributesHash,
              Rate,
              Sum,
              ResourceAttributes,
              ResourceSchemaUrl,
              ScopeName,
              ScopeVersion,
              ScopeAttributes,
              ScopeDroppedAttrCount,
              ScopeSchemaUrl,
              ServiceName,
              MetricName,
              MetricDescription,
              MetricUnit,
              Attributes,
              StartTimeUnix,
              Flags,
              AggregationTemporality,
              IsMonotonic
            FROM (
              SELECT
                toStartOfInterval(toDateTime(TimeUnix), INTERVAL 5 minute) AS `__hdx_time_bucket2`,
                AttributesHash,
                -- Per-bucket increase: sum of raw per-row deltas. NULL
                -- Source.Rate (first row of each partition) is ignored by sum().
                sum(Source.Rate) AS Rate,
                -- Last cumulative reading in the bucket (by time), used by
                -- the no-aggFn last_value(Sum) outer projection. argMax is
                -- deterministic w.r.t. TimeUnix ordering unlike last_value
                -- which in a GROUP BY context is anyLast (order-dependent).
                argMax(Source.Sum, TimeUnix) AS Sum,
                any(ResourceAttributes) AS ResourceAttributes,
                any(ResourceSchemaUrl) AS ResourceSchemaUrl,
                any(ScopeName) AS ScopeName,
                any(ScopeVersion) AS ScopeVersion,
                any(ScopeAttributes) AS ScopeAttributes,
                any(ScopeDroppedAttrCount) AS ScopeDroppedAttrCount,
                any(ScopeSchemaUrl) AS ScopeSchemaUrl,
                any(ServiceName) AS ServiceName,
                any(MetricName) AS MetricName,
                any(MetricDescription) AS MetricDescription,
                any(MetricUnit) AS MetricUnit,
                any(Attributes) AS Attributes,
                any(StartTimeUnix) AS StartTimeUnix,
                any(Flags) AS Flags,
                any(AggregationTemporality) AS AggregationTemporality,
                any(IsMonotonic) AS IsMonotonic
              FROM Source
              GROUP BY AttributesHash, `__hdx_time_bucket2`
              ORDER BY AttributesHash, `__hdx_time_bucket2`
            )
          ) SELECT sum(
      toFloat64OrDefault(toString(Rate))
    ) AS "Value",toStartOfInterval(toDateTime(`__hdx_time_bucket2`), INTERVAL 5 minute) AS `__hdx_time_bucket` FROM Bucketed WHERE (`__hdx_time_bucket2` >= fromUnixTimestamp64Milli(1739318400000) AND `__hdx_time_bucket2` <= fromUnixTimestamp64Milli(1765670400000)) GROUP BY toStartOfInterval(toDateTime(`__hdx_time_bucket2`), INTERVAL 5 minute) AS `__hdx_time_bucket` ORDER BY toStartOfInterval(toDateTime(`__hdx_time_bucket2`), INTERVAL 5 minute) AS `__hdx_time_bucket` LIMIT 10 SETTINGS optimize_read_in_order = 0, cast_keep_nullable = 1, count_distinct_implementation = 'uniqCombined64', async_insert_busy_timeout_min_ms = 20000"#,
    ),
    (
        "median of a histogram per 2 minutes (snapshot l. 235-323; test l. 831-870: MetricName 'http.server.duration', quantile 0.5, granularity 2 minute, LIMIT 10): BucketCounts become deltas from the series' previous point (a cumulative series' first point is all zeros; delta points and resets count as they are), summed per bucket, and the median is interpolated between ExplicitBounds; one row per 2-minute bucket with a positive total (__hdx_time_bucket, Value); insert >= 2 cumulative points of one series in one bucket, or delta points, with ExplicitBounds: [10, 100] with BucketCounts [1, 2, 0] then [2, 5, 1] gives Value 55",
        r#"WITH source AS (
          SELECT
            MetricName,
            ExplicitBounds,
            toStartOfInterval(toDateTime(TimeUnix), INTERVAL 2 minute) AS `__hdx_time_bucket`,
            
            sumForEach(deltas) as rates
          FROM (
            SELECT
              TimeUnix,
              MetricName,
              ExplicitBounds,
              
              attr_hash,
              any(attr_hash) OVER prev_row AS prev_attr_hash,
              count() OVER prev_row = 0 OR prev_attr_hash != attr_hash AS is_first_series_point,
              any(bounds_hash) OVER prev_row AS prev_bounds_hash,
              any(counts) OVER prev_row AS prev_counts,
              counts,
              multiIf(
                  AggregationTemporality = 2 AND is_first_series_point, 
                  arrayWithConstant(length(counts), toInt64(0)),

                  AggregationTemporality = 1 
                      OR bounds_hash != prev_bounds_hash 
                      OR arrayExists((x) -> x.2 < x.1, arrayZip(prev_counts, counts)), 
                  counts,

                  counts - prev_counts
              ) AS deltas
            FROM (
              SELECT
                  TimeUnix,
                  MetricName,
                  AggregationTemporality,
                  ExplicitBounds,
                  ResourceAttributes,
                  Attributes,
                  cityHash64(ScopeAttributes, ResourceAttributes, Attributes) AS attr_hash,
                  cityHash64(ExplicitBounds) AS bounds_hash,
                  CAST(BucketCounts AS Array(Int64)) counts
              FROM default.otel_metrics_histogram
              WHERE (TimeUnix >= toStartOfInterval(fromUnixTimestamp64Milli(1739318400000), INTERVAL 2 minute) - INTERVAL 2 minute AND TimeUnix <= toStartOfInterval(fromUnixTimestamp64Milli(1765670400000), INTERVAL 2 minute) + INTERVAL 2 minute) AND ((MetricName = 'http.server.duration'))
              ORDER BY attr_hash, TimeUnix ASC
            )
            WINDOW prev_row AS (
            
              ORDER BY attr_hash, TimeUnix
              ROWS BETWEEN 1 PRECEDING AND 1 PRECEDING
            )
          )
          GROUP BY __hdx_time_bucket, MetricName, ExplicitBounds
          ORDER BY __hdx_time_bucket
          ),points AS (
          SELECT
            `__hdx_time_bucket`,
            MetricName,
            arrayZipUnaligned(arrayCumSum(rates), ExplicitBounds) as point,
            length(point) as n
          FROM source
          ),metrics AS (
          SELECT
            `__hdx_time_bucket`,
            MetricName,
            point[n].1 AS total,
            0.5 * total AS rank,
            arrayFirstIndex(x -> if(x.1 > rank, 1, 0), point) AS upper_idx,
            point[upper_idx].1 AS upper_count,
            ifNull(point[upper_idx].2, inf) AS upper_bound,
            CASE
              WHEN upper_idx > 1 THEN point[upper_idx - 1].2
              WHEN point[upper_idx].2 > 0 THEN 0
              ELSE inf
            END AS lower_bound,
            if (
              lower_bound = 0,
              0,
              point[upper_idx - 1].1
            ) AS lower_count,
            CASE
                WHEN upper_bound = inf THEN point[upper_idx - 1].2
                WHEN lower_bound = inf THEN point[1].2
                ELSE lower_bound + (upper_bound - lower_bound) * ((rank - lower_count) / (upper_count - lower_count))
            END AS "Value"
          FROM points
          WHERE length(point) > 1 AND total > 0
          ) SELECT `__hdx_time_bucket`, "Value" FROM metrics WHERE (`__hdx_time_bucket` >= fromUnixTimestamp64Milli(1739318400000) AND `__hdx_time_bucket` <= fromUnixTimestamp64Milli(1765670400000)) LIMIT 10 SETTINGS short_circuit_function_evaluation = 'force_enable', optimize_read_in_order = 0, cast_keep_nullable = 1, count_distinct_implementation = 'uniqCombined64', async_insert_busy_timeout_min_ms = 20000"#,
    ),
    (
        "median of a histogram per 2 minutes and service (snapshot l. 143-233; test l. 872-913: groupBy ServiceName, otherwise query 4): one row per (2-minute bucket, group = [ServiceName]) with a positive total, same data needs as query 4 per service",
        r#"WITH source AS (
          SELECT
            MetricName,
            ExplicitBounds,
            toStartOfInterval(toDateTime(TimeUnix), INTERVAL 2 minute) AS `__hdx_time_bucket`,
            group,
            sumForEach(deltas) as rates
          FROM (
            SELECT
              TimeUnix,
              MetricName,
              ExplicitBounds,
               group,
              attr_hash,
              any(attr_hash) OVER prev_row AS prev_attr_hash,
              count() OVER prev_row = 0 OR prev_attr_hash != attr_hash AS is_first_series_point,
              any(bounds_hash) OVER prev_row AS prev_bounds_hash,
              any(counts) OVER prev_row AS prev_counts,
              counts,
              multiIf(
                  AggregationTemporality = 2 AND is_first_series_point, 
                  arrayWithConstant(length(counts), toInt64(0)),

                  AggregationTemporality = 1 
                      OR bounds_hash != prev_bounds_hash 
                      OR arrayExists((x) -> x.2 < x.1, arrayZip(prev_counts, counts)), 
                  counts,

                  counts - prev_counts
              ) AS deltas
            FROM (
              SELECT
                  TimeUnix,
                  MetricName,
                  AggregationTemporality,
                  ExplicitBounds,
                  ResourceAttributes,
                  Attributes,[ServiceName] as group,
                  cityHash64(ScopeAttributes, ResourceAttributes, Attributes) AS attr_hash,
                  cityHash64(ExplicitBounds) AS bounds_hash,
                  CAST(BucketCounts AS Array(Int64)) counts
              FROM default.otel_metrics_histogram
              WHERE (TimeUnix >= toStartOfInterval(fromUnixTimestamp64Milli(1739318400000), INTERVAL 2 minute) - INTERVAL 2 minute AND TimeUnix <= toStartOfInterval(fromUnixTimestamp64Milli(1765670400000), INTERVAL 2 minute) + INTERVAL 2 minute) AND ((MetricName = 'http.server.duration'))
              ORDER BY group, attr_hash, TimeUnix ASC
            )
            WINDOW prev_row AS (
             PARTITION BY group
              ORDER BY attr_hash, TimeUnix
              ROWS BETWEEN 1 PRECEDING AND 1 PRECEDING
            )
          )
          GROUP BY __hdx_time_bucket, MetricName, group, ExplicitBounds
          ORDER BY __hdx_time_bucket
          ),points AS (
          SELECT
            `__hdx_time_bucket`,
group,
            MetricName,
            arrayZipUnaligned(arrayCumSum(rates), ExplicitBounds) as point,
            length(point) as n
          FROM source
          ),metrics AS (
          SELECT
            `__hdx_time_bucket`,
group,
            MetricName,
            point[n].1 AS total,
            0.5 * total AS rank,
            arrayFirstIndex(x -> if(x.1 > rank, 1, 0), point) AS upper_idx,
            point[upper_idx].1 AS upper_count,
            ifNull(point[upper_idx].2, inf) AS upper_bound,
            CASE
              WHEN upper_idx > 1 THEN point[upper_idx - 1].2
              WHEN point[upper_idx].2 > 0 THEN 0
              ELSE inf
            END AS lower_bound,
            if (
              lower_bound = 0,
              0,
              point[upper_idx - 1].1
            ) AS lower_count,
            CASE
                WHEN upper_bound = inf THEN point[upper_idx - 1].2
                WHEN lower_bound = inf THEN point[1].2
                ELSE lower_bound + (upper_bound - lower_bound) * ((rank - lower_count) / (upper_count - lower_count))
            END AS "Value"
          FROM points
          WHERE length(point) > 1 AND total > 0
          ) SELECT `__hdx_time_bucket`, group, "Value" FROM metrics WHERE (`__hdx_time_bucket` >= fromUnixTimestamp64Milli(1739318400000) AND `__hdx_time_bucket` <= fromUnixTimestamp64Milli(1765670400000)) LIMIT 10 SETTINGS short_circuit_function_evaluation = 'force_enable', optimize_read_in_order = 0, cast_keep_nullable = 1, count_distinct_implementation = 'uniqCombined64', async_insert_busy_timeout_min_ms = 20000"#,
    ),
];
