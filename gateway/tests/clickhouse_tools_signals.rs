//! The tools that read logs and metrics (issue 25, item 3): Grafana's ClickHouse data source
//! and ClickStack run their recorded queries (tools/queries_signals.rs) on `otel_logs` and the
//! `otel_metrics_*` tables as tracegate's writer fills them, unchanged, and get what the data
//! says: the log panel, volume and attribute filter, the search, severity chart, pattern sample
//! and error rate, the gauge series and the counter and histogram aggregations ClickStack
//! computes over a series.

mod common;
#[path = "tools/queries_signals.rs"]
mod queries;

use common::{ChFront, Gateway};
use prost::Message;
use tracegate_proto::otlp::collector::logs::v1::ExportLogsServiceRequest;
use tracegate_proto::otlp::collector::metrics::v1::ExportMetricsServiceRequest;
use tracegate_proto::otlp::common::v1::{any_value, AnyValue};
use tracegate_proto::otlp::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use tracegate_proto::otlp::metrics::v1::{
    metric::Data, number_data_point, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum,
};
use tracegate_proto::otlp::resource::v1::Resource;
use tracegate_spangen::kv_str as kv;

fn resource() -> Option<Resource> {
    Some(Resource {
        attributes: vec![kv("service.name", "api")],
        ..Default::default()
    })
}

fn post(gw: &Gateway, key: &str, path: &str, body: Vec<u8>) {
    let r = common::post_otlp(gw, key, path, body);
    assert_eq!(r.0, 200, "{path}: {}", String::from_utf8_lossy(&r.2));
}

const S: u64 = 1_000_000_000;

fn log(t: u64, body: &str, level: &str, attrs: &[(&str, &str)]) -> LogRecord {
    LogRecord {
        time_unix_nano: t,
        severity_text: level.into(),
        body: Some(AnyValue {
            value: Some(any_value::Value::StringValue(body.into())),
        }),
        attributes: attrs.iter().map(|(k, v)| kv(k, v)).collect(),
        ..Default::default()
    }
}

/// Three records around `b` (seconds): two with the token `chat`, INFO and `error`, one WARN.
fn logs(b: u64) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: resource(),
            scope_logs: vec![ScopeLogs {
                log_records: vec![
                    log(
                        (b + 10) * S,
                        "chat request started",
                        "INFO",
                        &[("method", "F"), ("http.method", "GET")],
                    ),
                    log(
                        (b + 11) * S,
                        "chat failed",
                        "error",
                        &[("http.method", "POST")],
                    ),
                    log((b + 70) * S, "unrelated", "WARN", &[]),
                ],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn number(t: u64, v: number_data_point::Value) -> NumberDataPoint {
    NumberDataPoint {
        start_time_unix_nano: (t - 60) * S,
        time_unix_nano: t * S,
        value: Some(v),
        ..Default::default()
    }
}

fn hist(t: u64, counts: Vec<u64>) -> HistogramDataPoint {
    HistogramDataPoint {
        start_time_unix_nano: (t - 60) * S,
        time_unix_nano: t * S,
        count: counts.iter().sum(),
        bucket_counts: counts,
        explicit_bounds: vec![10.0, 100.0],
        ..Default::default()
    }
}

/// The series the recorded queries name, inside one 10-minute bucket starting at `b`: a gauge
/// at 0.25 then 0.5 a minute later; a cumulative counter at 10 then 25; a cumulative histogram
/// at [1, 2, 0] then [2, 5, 1] over bounds [10, 100].
fn metrics(b: u64) -> ExportMetricsServiceRequest {
    use number_data_point::Value::{AsDouble, AsInt};
    let metric = |name: &str, data| Metric {
        name: name.into(),
        data: Some(data),
        ..Default::default()
    };
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: resource(),
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![
                    metric(
                        "nodejs.event_loop.utilization",
                        Data::Gauge(Gauge {
                            data_points: vec![
                                number(b + 10, AsDouble(0.25)),
                                number(b + 70, AsDouble(0.5)),
                            ],
                        }),
                    ),
                    metric(
                        "db.client.connections.usage",
                        Data::Sum(Sum {
                            data_points: vec![number(b + 10, AsInt(10)), number(b + 40, AsInt(25))],
                            aggregation_temporality: 2,
                            is_monotonic: true,
                        }),
                    ),
                    metric(
                        "http.server.duration",
                        Data::Histogram(Histogram {
                            data_points: vec![
                                hist(b + 10, vec![1, 2, 0]),
                                hist(b + 40, vec![2, 5, 1]),
                            ],
                            aggregation_temporality: 2,
                        }),
                    ),
                ],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn num(v: &serde_json::Value) -> f64 {
    v.as_f64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or(f64::NAN)
}

/// Sum of column `col` over `rows`.
fn total(rows: &[serde_json::Value], col: &str) -> f64 {
    rows.iter().map(|r| num(&r[col])).sum()
}

#[test]
fn grafana_and_clickstack_log_and_metric_queries_run_unchanged() {
    let front = ChFront::start(&[]);
    let env = common::clickhouse_env(&front, "default");
    common::migrate(&env);
    let gw = Gateway::start(&common::env_refs(&env));
    let key = gw.create_key("tools-signals");
    let now_s = common::now_unix_nano() / S;
    // Aligned to 10 minutes (so to ClickStack's 5- and 2-minute buckets), well inside the range.
    let b = (now_s - 40 * 60) / 600 * 600;
    post(&gw, &key, "/v1/logs", logs(b).encode_to_vec());
    post(&gw, &key, "/v1/metrics", metrics(b).encode_to_vec());
    let landed = common::wait_until(std::time::Duration::from_secs(60), || {
        front.query_u64("SELECT count() FROM default.otel_logs") == 3
            && front.query_u64("SELECT count() FROM default.otel_metrics_histogram") == 2
    });
    assert!(landed, "rows did not land");

    let (from_s, to_s) = (now_s - 3600, now_s + 60);
    let prepare = |sql: &str| {
        sql.replace("$__fromTime", &format!("toDateTime({from_s})"))
            .replace("$__toTime", &format!("toDateTime({to_s})"))
            .replace(
                "$__timeInterval(TimeUnix)",
                "toStartOfInterval(toDateTime(TimeUnix), INTERVAL 60 second)",
            )
            .replace("1739318400000", &(from_s * 1000).to_string())
            .replace("1739491200000", &(to_s * 1000).to_string())
            .replace("1765670400000", &(to_s * 1000).to_string())
    };
    let mut failed = Vec::new();
    let mut results: Vec<Vec<serde_json::Value>> = Vec::new();
    for (tool, list) in [
        ("Grafana logs", queries::GRAFANA_LOGS),
        ("Grafana metrics", queries::GRAFANA_METRICS),
        ("ClickStack logs", queries::CLICKSTACK_LOGS),
        ("ClickStack metrics", queries::CLICKSTACK_METRICS),
    ] {
        for (what, sql) in list {
            match front.try_query(&format!("{} FORMAT JSONEachRow", prepare(sql))) {
                Ok(out) => results.push(
                    out.lines()
                        .map(|l| serde_json::from_str(l).expect("JSON row"))
                        .collect(),
                ),
                Err(e) => {
                    failed.push(format!("{tool}: {what}: {e}"));
                    results.push(Vec::new());
                }
            }
        }
    }
    assert!(
        failed.is_empty(),
        "{} failed:\n{}",
        failed.len(),
        failed.join("\n")
    );

    // Grafana's logs: the panel, newest first; the volume by level; the attribute filter.
    let (gl, gm, cl) = (
        0,
        queries::GRAFANA_LOGS.len(),
        queries::GRAFANA_LOGS.len() + queries::GRAFANA_METRICS.len(),
    );
    let cm = cl + queries::CLICKSTACK_LOGS.len();
    for i in [gl, gl + 1, gl + 4] {
        assert_eq!(results[i].len(), 3, "{:?}", results[i]);
        assert_eq!(results[i][0]["body"], "unrelated", "newest first");
    }
    assert_eq!(results[gl + 1][1]["LogAttributes"]["http.method"], "POST");
    let volume = &results[gl + 2];
    for (level, n) in [("info", 1.0), ("error", 1.0), ("warn", 1.0), ("debug", 0.0)] {
        assert_eq!(total(volume, level), n, "{level}: {volume:?}");
    }
    assert_eq!(results[gl + 3].len(), 1);
    assert_eq!(results[gl + 3][0]["body"], "chat request started");

    // Grafana's metric series.
    let gauge: Vec<f64> = results[gm].iter().map(|r| num(&r["Value"])).collect();
    assert_eq!(gauge, [0.25, 0.5]);
    let sums: Vec<f64> = results[gm + 1].iter().map(|r| num(&r["total"])).collect();
    assert_eq!(sums, [10.0, 25.0]);
    assert_eq!(results[gm + 2].len(), 2, "{:?}", results[gm + 2]);
    assert_eq!(results[gm + 2][0]["ServiceName"], "api");

    // ClickStack's logs: the term search, the severity chart, the SQL filter, the pattern
    // sample, the error rate.
    assert_eq!(results[cl].len(), 2, "{:?}", results[cl]);
    assert_eq!(results[cl][0]["Body"], "chat failed");
    assert_eq!(results[cl][0]["ProjectId"], "tools-signals");
    assert_eq!(total(&results[cl + 1], "count()"), 2.0);
    assert_eq!(results[cl + 2].len(), 1);
    assert_eq!(results[cl + 2][0]["level"], "INFO");
    assert_eq!(results[cl + 3].len(), 2);
    assert_eq!(total(&results[cl + 4], "errors"), 1.0);
    assert_eq!(total(&results[cl + 4], "total"), 3.0);

    // ClickStack's metrics: p95 of the gauge per minute, the counter's increase (10 → 25), the
    // histogram's median (55 between the bounds), alone and per service.
    let p95: Vec<f64> = results[cm]
        .iter()
        .map(|r| num(&r["quantile(0.95)(toFloat64OrDefault(toString(LastValue)))"]))
        .collect();
    assert_eq!(p95, [0.25, 0.5], "{:?}", results[cm]);
    for i in [cm + 1, cm + 2] {
        assert_eq!(results[i].len(), 1, "{:?}", results[i]);
        assert_eq!(num(&results[i][0]["Value"]), 15.0, "{:?}", results[i]);
    }
    for i in [cm + 3, cm + 4] {
        assert_eq!(results[i].len(), 1, "{:?}", results[i]);
        assert_eq!(num(&results[i][0]["Value"]), 55.0, "{:?}", results[i]);
    }
    assert_eq!(results[cm + 4][0]["group"], serde_json::json!(["api"]));
}
