//! Queries Grafana's ClickHouse data source and ClickStack (HyperDX) send for traces, recorded
//! from their repositories with their source. Each is kept as the tool sends it; the test only
//! does what the tool does before sending: put in the trace id the user looked up
//! (`'abcdefg'` in Grafana's tests), expand Grafana's `$__fromTime`/`$__toTime` macros (its
//! backend writes `toDateTime(<unix seconds>)`), and move ClickStack's recorded time range
//! (`1739318400000` … `1739491200000` ms) to the test's.
//!
//! Both tools default to database `default`; the test runs tracegate with
//! `clickhouse.database = "default"` so the names stay as recorded (docs/clickhouse.md says how
//! to point each tool at `tracegate`).

/// grafana/clickhouse-datasource @ 1d04063a31fb30f9582cd0b3aeaacb7d350b0dcf,
/// src/data/sqlGenerator.test.ts.
pub const GRAFANA: &[(&str, &str)] = &[
    (
        "trace id lookup through otel_traces_trace_id_ts (test 'generates trace ID query with OTel enabled', l. 630-670)",
        r#"WITH 'abcdefg' as __gf_trace_id, (SELECT min(Start) FROM "default"."otel_traces_trace_id_ts" WHERE TraceId = __gf_trace_id) as __gf_trace_start, (SELECT max(End) + 1 FROM "default"."otel_traces_trace_id_ts" WHERE TraceId = __gf_trace_id) as __gf_trace_end SELECT "TraceId" as traceID, "SpanId" as spanID, "ParentSpanId" as parentSpanID, "ServiceName" as serviceName, "SpanName" as operationName, multiply(toUnixTimestamp64Nano("Timestamp"), 0.000001) as startTime, multiply("Duration", 0.000001) as duration, arrayMap(key -> map('key', key, 'value',"SpanAttributes"[key]), mapKeys("SpanAttributes")) as tags, arrayMap(key -> map('key', key, 'value',"ResourceAttributes"[key]), mapKeys("ResourceAttributes")) as serviceTags, if("StatusCode" IN ('Error', 'STATUS_CODE_ERROR'), 2, 0) as statusCode FROM "default"."otel_traces" WHERE traceID = __gf_trace_id AND "Timestamp" >= __gf_trace_start AND "Timestamp" <= __gf_trace_end"#,
    ),
    (
        // The test maps kind to a column "Kind" and the instrumentation library to
        // "InstrumentationLibraryName/Version", which no OTel table has (the Collector's DDL
        // fails it too); Grafana's OTel preset (src/otel.ts) maps them to SpanKind and
        // ScopeName/ScopeVersion, which is what it sends for an OTel table: only those three
        // column names differ from the test's string.
        "trace id lookup with events, links, kind, status message, scope, trace state; nested not flattened (l. 504-560, OTel preset's column names)",
        r#"WITH 'abcdefg' as __gf_trace_id, (SELECT min(Start) FROM "default"."otel_traces_trace_id_ts" WHERE TraceId = __gf_trace_id) as __gf_trace_start, (SELECT max(End) + 1 FROM "default"."otel_traces_trace_id_ts" WHERE TraceId = __gf_trace_id) as __gf_trace_end SELECT "TraceId" as traceID, "SpanId" as spanID, "ParentSpanId" as parentSpanID, "ServiceName" as serviceName, "SpanName" as operationName, multiply(toUnixTimestamp64Nano("Timestamp"), 0.000001) as startTime, multiply("Duration", 0.000001) as duration, arrayMap(key -> map('key', key, 'value',"SpanAttributes"[key]), mapKeys("SpanAttributes")) as tags, arrayMap(key -> map('key', key, 'value',"ResourceAttributes"[key]), mapKeys("ResourceAttributes")) as serviceTags, if("StatusCode" IN ('Error', 'STATUS_CODE_ERROR'), 2, 0) as statusCode, arrayMap((name, timestamp, attributes) -> tuple(name, toString(toUnixTimestamp64Milli(timestamp)), arrayMap(key -> map('key', key, 'value', attributes[key]), mapKeys(attributes)))::Tuple(name String, timestamp String, fields Array(Map(String, String))), "Events".Name, "Events".Timestamp, "Events".Attributes) AS logs, arrayMap((traceID, spanID, attributes) -> tuple(traceID, spanID, arrayMap(key -> map('key', key, 'value', attributes[key]), mapKeys(attributes)))::Tuple(traceID String, spanID String, tags Array(Map(String, String))), "Links".TraceId, "Links".SpanId, "Links".Attributes) AS references, "SpanKind" as kind, "StatusMessage" as statusMessage, "ScopeName" as instrumentationLibraryName, "ScopeVersion" as instrumentationLibraryVersion, "TraceState" as traceState FROM "default"."otel_traces" WHERE traceID = __gf_trace_id AND "Timestamp" >= __gf_trace_start AND "Timestamp" <= __gf_trace_end"#,
    ),
    (
        "trace id lookup with events and links, nested flattened (l. 567-623, OTel preset's column names as above)",
        r#"WITH 'abcdefg' as __gf_trace_id, (SELECT min(Start) FROM "default"."otel_traces_trace_id_ts" WHERE TraceId = __gf_trace_id) as __gf_trace_start, (SELECT max(End) + 1 FROM "default"."otel_traces_trace_id_ts" WHERE TraceId = __gf_trace_id) as __gf_trace_end SELECT "TraceId" as traceID, "SpanId" as spanID, "ParentSpanId" as parentSpanID, "ServiceName" as serviceName, "SpanName" as operationName, multiply(toUnixTimestamp64Nano("Timestamp"), 0.000001) as startTime, multiply("Duration", 0.000001) as duration, arrayMap(key -> map('key', key, 'value',"SpanAttributes"[key]), mapKeys("SpanAttributes")) as tags, arrayMap(key -> map('key', key, 'value',"ResourceAttributes"[key]), mapKeys("ResourceAttributes")) as serviceTags, if("StatusCode" IN ('Error', 'STATUS_CODE_ERROR'), 2, 0) as statusCode, arrayMap(event -> tuple(multiply(toFloat64(event.Timestamp), 1000), arrayConcat(arrayMap(key -> map('key', key, 'value', event.Attributes[key]), mapKeys(event.Attributes)), [map('key', 'message', 'value', event.Name)]))::Tuple(timestamp Float64, fields Array(Map(String, String))), "Events") as logs, arrayMap(link -> tuple(link.TraceId, link.SpanId, arrayMap(key -> map('key', key, 'value', link.Attributes[key]), mapKeys(link.Attributes)))::Tuple(traceID String, spanID String, tags Array(Map(String, String))), "Links") AS references, "SpanKind" as kind, "StatusMessage" as statusMessage, "ScopeName" as instrumentationLibraryName, "ScopeVersion" as instrumentationLibraryVersion, "TraceState" as traceState FROM "default"."otel_traces" WHERE traceID = __gf_trace_id AND "Timestamp" >= __gf_trace_start AND "Timestamp" <= __gf_trace_end"#,
    ),
    (
        "trace id lookup without the lookup table (test 'generates trace ID query without OTel enabled', l. 329-366; also l. 677-715)",
        r#"SELECT "TraceId" as traceID, "SpanId" as spanID, "ParentSpanId" as parentSpanID, "ServiceName" as serviceName, "SpanName" as operationName, multiply(toUnixTimestamp64Nano("Timestamp"), 0.000001) as startTime, multiply("Duration", 0.000001) as duration, arrayMap(key -> map('key', key, 'value',"SpanAttributes"[key]), mapKeys("SpanAttributes")) as tags, arrayMap(key -> map('key', key, 'value',"ResourceAttributes"[key]), mapKeys("ResourceAttributes")) as serviceTags, if("StatusCode" IN ('Error', 'STATUS_CODE_ERROR'), 2, 0) as statusCode FROM "default"."otel_traces" WHERE traceID = 'abcdefg'"#,
    ),
    (
        "trace search (test 'generates trace search query', l. 874-942)",
        r#"SELECT "TraceId" as traceID, "ServiceName" as serviceName, "SpanName" as operationName, "Timestamp" as startTime, multiply("Duration", 0.000001) as duration FROM "default"."otel_traces" WHERE ( Timestamp >= $__fromTime AND Timestamp <= $__toTime ) AND ( ParentSpanId = '' ) AND ( Duration > 0 ) ORDER BY Timestamp DESC, Duration DESC LIMIT 1000"#,
    ),
];

/// hyperdxio/hyperdx @ b52a6fa83a1a8f6d1cc70e8b676103ade6a1b207. Complete queries where its
/// tests hold one; otherwise the trace source's defaults (packages/app/src/source.ts
/// l. 443-463) put into the shape its tests record, with the WHERE fragments its query parser
/// tests expect for a trace table (implicit column `SpanName`).
pub const CLICKSTACK: &[(&str, &str)] = &[
    (
        // The snapshot's `additional_result_filter = 'x != 2'` is the test's mocked source
        // setting (renderChartConfig.test.ts l. 89-96), not something ClickStack sends: left out.
        "sample-weighted error count (packages/common-utils/src/__tests__/__snapshots__/renderChartConfig.test.ts.snap l. 1226)",
        r#"SELECT sumIf(greatest(toUInt64OrZero(toString(SampleRate)), 1), StatusCode = 'Error') FROM default.otel_traces WHERE (Timestamp >= fromUnixTimestamp64Milli(1739318400000) AND Timestamp <= fromUnixTimestamp64Milli(1739491200000)) AND (StatusCode = 'Error') SETTINGS optimize_read_in_order = 0, cast_keep_nullable = 1, count_distinct_implementation = 'uniqCombined64', async_insert_busy_timeout_min_ms = 20000"#,
    ),
    (
        "sample-weighted p95 duration of a service (renderChartConfig.test.ts.snap l. 1230)",
        r#"SELECT quantileTDigestWeightedIf(0.95)(toFloat64OrDefault(toString(Duration)), toUInt32(greatest(toUInt64OrZero(toString(SampleRate)), 1)), ServiceName = 'api' AND toFloat64OrDefault(toString(Duration)) IS NOT NULL) FROM default.otel_traces WHERE (Timestamp >= fromUnixTimestamp64Milli(1739318400000) AND Timestamp <= fromUnixTimestamp64Milli(1739491200000)) AND (ServiceName = 'api') SETTINGS optimize_read_in_order = 0, cast_keep_nullable = 1, count_distinct_implementation = 'uniqCombined64', async_insert_busy_timeout_min_ms = 20000"#,
    ),
    (
        "search: results table for the bare term `chat` (snapshot l. 1538's shape; source.ts's defaultTableSelectExpression; packages/common-utils/src/__tests__/queryParser.test.ts l. 153-230: hasToken(lower(<implicit column>)))",
        r#"SELECT Timestamp, ServiceName as service, StatusCode as level, round(Duration / 1e6) as duration, SpanName FROM default.otel_traces WHERE (Timestamp >= fromUnixTimestamp64Milli(1739318400000) AND Timestamp <= fromUnixTimestamp64Milli(1739491200000)) AND ((hasToken(lower(SpanName), lower('chat')))) LIMIT 200 OFFSET 0"#,
    ),
    (
        "attribute search on the map (queryParser.test.ts l. 153-230: `SpanAttributes.gen_ai.request.model:(\"gpt-4o\")`)",
        r#"SELECT count() FROM default.otel_traces WHERE (((`SpanAttributes`['gen_ai.request.model'] ILIKE '%gpt-4o%' AND indexHint(mapContains(`SpanAttributes`, 'gen_ai.request.model')))))"#,
    ),
    (
        "attribute search on the items column and its text index (queryParser.test.ts l. 2801-2870)",
        r#"SELECT count() FROM default.otel_traces WHERE ((has(`SpanAttributeItems`, concat('gen_ai.request.model', '=', 'gpt-4o'))))"#,
    ),
    (
        "attribute search for an empty value (queryParser.test.ts l. 2716)",
        r#"SELECT count() FROM default.otel_traces WHERE ((has(`ResourceAttributeItems`, concat('deployment.environment', '=', '')) OR NOT mapContains(`ResourceAttributes`, 'deployment.environment')))"#,
    ),
    (
        "event name search (queryParser.test.ts l. 2113: `Events.Name:error`)",
        r#"SELECT count() FROM default.otel_traces WHERE has(Events.Name, 'error')"#,
    ),
    (
        "attribute key autocomplete from the items text index (packages/common-utils/src/core/metadata.ts l. 632-637, 742-747)",
        r#"SELECT splitByString('=', token)[1] AS key FROM mergeTreeTextIndex('default', 'otel_traces', 'idx_span_attr_items') WHERE part_name IN (SELECT name FROM system.parts WHERE database = 'default' AND table = 'otel_traces' AND active = 1) GROUP BY key HAVING key != '' LIMIT 1000"#,
    ),
    (
        "attribute key autocomplete by scanning the map (metadata.ts l. 898-914)",
        r#"WITH sampledKeys as (SELECT getSubcolumn(`SpanAttributes`, 'keys') AS keysArr FROM `default`.`otel_traces` LIMIT 100000) SELECT DISTINCT lowCardinalityKeys(arrayJoin(keysArr)) as key FROM sampledKeys LIMIT 1000 SETTINGS max_execution_time = 15, timeout_overflow_mode = 'break'"#,
    ),
    (
        "attribute value autocomplete (metadata.ts l. 1120-1129)",
        r#"SELECT DISTINCT `SpanAttributes`['gen_ai.request.model'] as value FROM `default`.`otel_traces` WHERE value != '' LIMIT 100 SETTINGS read_overflow_mode = 'break', max_rows_to_read = 100000"#,
    ),
    (
        "key → values facets from the items text index (metadata.ts l. 1205-1215)",
        r#"SELECT * FROM (SELECT 'SpanAttributes' as column, substring(token, 1, position(token, '=') - 1) AS key, groupUniqArray(100)(substring(token, position(token, '=') + 1)) AS value FROM mergeTreeTextIndex('default', 'otel_traces', 'idx_span_attr_items') WHERE part_name IN (SELECT name FROM system.parts WHERE database = 'default' AND table = 'otel_traces' AND active = 1) AND (startsWith(token, 'gen_ai.request.model=')) AND substring(token, position(token, '=') + 1) != '' GROUP BY column, key)"#,
    ),
    (
        "trace waterfall (packages/app/src/components/DBTraceWaterfallChart.tsx l. 159-310: the trace's spans, duration in seconds, LIMIT 50000)",
        r#"SELECT SpanName AS Body, Timestamp, SpanId, ServiceName, (Duration)/1e9 AS Duration, ParentSpanId, StatusCode, SpanAttributes, Events AS SpanEvents FROM default.otel_traces WHERE (Timestamp >= fromUnixTimestamp64Milli(1739318400000) AND Timestamp <= fromUnixTimestamp64Milli(1739491200000)) AND (TraceId = 'abcdefg') LIMIT 50000"#,
    ),
    (
        "RUM session search (docker/otel-collector/schema/seed/00005_otel_traces.sql's idx_rum_session_id)",
        r#"SELECT count() FROM default.otel_traces WHERE `__hdx_materialized_rum.sessionId` = 'sess-42'"#,
    ),
    (
        "the skip indexes ClickStack reads to choose its query (metadata.ts l. 431-438)",
        r#"SELECT name, type, type_full as typeFull, expr as expression, granularity FROM system.data_skipping_indices WHERE database = 'default' AND table = 'otel_traces'"#,
    ),
];
