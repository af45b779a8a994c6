//! Log records and metrics in ClickHouse (issue 25): the real writer, through `tracegate serve`
//! on chdb, fills `otel_logs`, `otel_logs_payloads` and the five `otel_metrics_*` tables created
//! by `tracegate migrate`, with every field of the request in the Collector's columns, the
//! tenant stamped from the key, GenAI event attributes promoted, and large bodies and
//! attributes kept whole in the payload table.

mod common;

use std::time::Duration;

use common::{wait_until, ChFront, Gateway};
use prost::Message;
use tracegate_proto::otlp::collector::logs::v1::ExportLogsServiceRequest;
use tracegate_proto::otlp::collector::metrics::v1::ExportMetricsServiceRequest;
use tracegate_proto::otlp::common::v1::{
    any_value, AnyValue, InstrumentationScope, KeyValue, KeyValueList,
};
use tracegate_proto::otlp::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use tracegate_proto::otlp::metrics::v1::{
    exemplar, exponential_histogram_data_point::Buckets, metric::Data, number_data_point,
    summary_data_point::ValueAtQuantile, Exemplar, ExponentialHistogram,
    ExponentialHistogramDataPoint, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum, Summary, SummaryDataPoint,
};
use tracegate_proto::otlp::resource::v1::Resource;

const DB: &str = "signals";

fn kv(k: &str, v: any_value::Value) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    }
}

fn s(v: &str) -> any_value::Value {
    any_value::Value::StringValue(v.into())
}

fn resource() -> Option<Resource> {
    Some(Resource {
        attributes: vec![
            kv("service.name", s("chat-api")),
            kv("deployment.environment", s("prod")),
        ],
        ..Default::default()
    })
}

fn scope() -> Option<InstrumentationScope> {
    Some(InstrumentationScope {
        name: "genai-instr".into(),
        version: "0.9".into(),
        attributes: vec![kv("scope.k", s("v"))],
        dropped_attributes_count: 2,
    })
}

fn post(gw: &Gateway, key: &str, path: &str, body: Vec<u8>) {
    let r = common::post_otlp(gw, key, path, body);
    assert_eq!(r.0, 200, "{path}: {}", String::from_utf8_lossy(&r.2));
}

fn setup() -> (ChFront, Gateway) {
    let front = ChFront::start(&[]);
    let env = common::clickhouse_env(&front, DB);
    let out = common::migrate(&env);
    assert!(out.contains("migrations applied: [1, 2, 3]"), "{out}");
    let gw = Gateway::start(&common::env_refs(&env));
    (front, gw)
}

/// Waits until `sql` (a count) returns `n`.
fn wait_count(front: &ChFront, sql: &str, n: u64) {
    let ok = wait_until(Duration::from_secs(60), || front.query_u64(sql) >= n);
    assert!(ok, "{sql}: {} rows, want {n}", front.query_u64(sql));
    assert_eq!(front.query_u64(sql), n, "{sql}");
}

/// A multi-byte text of `bytes` bytes (previews must cut at a character boundary).
fn big_text(bytes: usize) -> String {
    "prompt é€ ".repeat(bytes / 14 + 1)[..]
        .chars()
        .take(bytes / 2)
        .collect()
}

#[test]
fn log_records_land_in_otel_logs_with_genai_columns_and_payloads() {
    let (front, gw) = setup();
    let key = gw.create_key("logs-ch");
    let t0 = common::now_unix_nano() - 60_000_000_000;
    let prompt = big_text(40 * 1024);
    let long_body = big_text(100 * 1024);
    let genai_event = LogRecord {
        time_unix_nano: t0,
        observed_time_unix_nano: t0 + 1,
        severity_number: 9,
        severity_text: "INFO".into(),
        event_name: "gen_ai.client.inference.operation.details".into(),
        body: Some(AnyValue {
            value: Some(any_value::Value::KvlistValue(KeyValueList {
                values: vec![kv("role", s("user")), kv("content", s("hi"))],
            })),
        }),
        attributes: vec![
            kv("gen_ai.provider.name", s("openai")),
            kv("gen_ai.operation.name", s("chat")),
            kv("gen_ai.request.model", s("gpt-4o")),
            kv("gen_ai.response.model", s("gpt-4o-2024-08-06")),
            kv("gen_ai.usage.input_tokens", any_value::Value::IntValue(12)),
            kv("gen_ai.usage.output_tokens", any_value::Value::IntValue(34)),
            kv("gen_ai.input.messages", s(&prompt)),
        ],
        flags: 1,
        trace_id: vec![0xab; 16],
        span_id: vec![0xcd; 8],
        ..Default::default()
    };
    let plain = LogRecord {
        observed_time_unix_nano: t0 + 5,
        severity_number: 17,
        severity_text: "ERROR".into(),
        body: Some(AnyValue {
            value: Some(s(&long_body)),
        }),
        ..Default::default()
    };
    let req = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: resource(),
            scope_logs: vec![ScopeLogs {
                scope: scope(),
                log_records: vec![genai_event, plain],
                schema_url: "https://opentelemetry.io/schemas/1.30.0".into(),
            }],
            schema_url: "https://opentelemetry.io/schemas/1.26.0".into(),
        }],
    };
    post(&gw, &key, "/v1/logs", req.encode_to_vec());
    wait_count(
        &front,
        &format!("SELECT count() FROM {DB}.otel_logs WHERE ProjectId = 'logs-ch'"),
        2,
    );
    let rows = front.query_json(&format!(
        "SELECT *, toUnixTimestamp64Nano(Timestamp) AS ns, toUnixTimestamp(TimestampTime) AS tt \
         FROM {DB}.otel_logs WHERE ProjectId = 'logs-ch' ORDER BY SeverityNumber"
    ));
    let (e, p) = (&rows[0], &rows[1]);
    assert_eq!(ns(&e["ns"]), t0, "{e}");
    assert_eq!(ns(&e["tt"]), t0 / 1_000_000_000);
    assert_eq!(
        ns(&p["ns"]),
        t0 + 5,
        "observed time when there is no time: {p}"
    );
    assert_eq!(e["TraceId"], "ab".repeat(16));
    assert_eq!(e["SpanId"], "cd".repeat(8));
    assert_eq!(e["TraceFlags"], 1);
    assert_eq!(
        (e["SeverityText"].as_str(), e["SeverityNumber"].as_u64()),
        (Some("INFO"), Some(9))
    );
    assert_eq!(
        (p["SeverityText"].as_str(), p["SeverityNumber"].as_u64()),
        (Some("ERROR"), Some(17))
    );
    assert_eq!(p["TraceId"], "");
    assert_eq!(e["ServiceName"], "chat-api");
    assert_eq!(e["Body"], r#"{"role":"user","content":"hi"}"#);
    assert_eq!(
        e["ResourceSchemaUrl"],
        "https://opentelemetry.io/schemas/1.26.0"
    );
    assert_eq!(
        e["ScopeSchemaUrl"],
        "https://opentelemetry.io/schemas/1.30.0"
    );
    assert_eq!(e["ResourceAttributes"]["deployment.environment"], "prod");
    assert_eq!(
        (e["ScopeName"].as_str(), e["ScopeVersion"].as_str()),
        (Some("genai-instr"), Some("0.9"))
    );
    assert_eq!(e["ScopeAttributes"]["scope.k"], "v");
    assert_eq!(e["EventName"], "gen_ai.client.inference.operation.details");
    assert_eq!(e["LogAttributes"]["gen_ai.request.model"], "gpt-4o");
    assert_eq!(e["LogAttributes"]["gen_ai.usage.input_tokens"], "12");
    for (col, want) in [
        ("GenAiProvider", "openai"),
        ("GenAiOperation", "chat"),
        ("GenAiRequestModel", "gpt-4o"),
        ("GenAiResponseModel", "gpt-4o-2024-08-06"),
    ] {
        assert_eq!(e[col], want, "{col}");
    }
    assert_eq!(ns(&e["GenAiInputTokens"]), 12);
    assert_eq!(ns(&e["GenAiOutputTokens"]), 34);
    // The tenant is the key's, whatever the record says.
    assert_eq!(e["ProjectId"], "logs-ch");
    assert_eq!(e["OrgId"], p["OrgId"]);
    assert!(
        e["ReceivedAt"]
            .as_str()
            .is_some_and(|r| r.starts_with("20")),
        "{e}"
    );

    // Large values: a preview in the row, the whole value in otel_logs_payloads.
    let preview = e["LogAttributes"]["gen_ai.input.messages"]
        .as_str()
        .unwrap();
    assert!(
        preview.len() <= 256 && prompt.starts_with(preview),
        "{preview}"
    );
    assert_eq!(
        e["PayloadKeys"],
        serde_json::json!(["attribute:gen_ai.input.messages"])
    );
    assert_eq!(p["PayloadKeys"], serde_json::json!(["body"]));
    let body_preview = p["Body"].as_str().unwrap();
    assert!(body_preview.len() <= 256 && long_body.starts_with(body_preview));
    let (id_e, id_p) = (
        e["RecordId"].as_str().unwrap(),
        p["RecordId"].as_str().unwrap(),
    );
    assert!(
        id_e.ends_with("-0-0") && id_p.ends_with("-0-1"),
        "{id_e} {id_p}"
    );
    assert_eq!(id_e[..32], id_p[..32], "one batch");
    let payloads = front.query_json(&format!(
        "SELECT RecordId, Location, Key, Value, ValueBytes, TraceId, \
         toUnixTimestamp64Nano(Timestamp) AS ns FROM {DB}.otel_logs_payloads \
         WHERE ProjectId = 'logs-ch' ORDER BY Location"
    ));
    assert_eq!(payloads.len(), 2, "{payloads:?}");
    assert_eq!(payloads[0]["Location"], "attribute");
    assert_eq!(payloads[0]["Key"], "gen_ai.input.messages");
    assert_eq!(payloads[0]["Value"].as_str(), Some(prompt.as_str()));
    assert_eq!(ns(&payloads[0]["ValueBytes"]), prompt.len() as u64);
    assert_eq!(payloads[0]["RecordId"], id_e);
    assert_eq!(payloads[0]["TraceId"], "ab".repeat(16));
    assert_eq!(ns(&payloads[0]["ns"]), t0);
    assert_eq!(payloads[1]["Location"], "body");
    assert_eq!(payloads[1]["Value"].as_str(), Some(long_body.as_str()));
    assert_eq!(payloads[1]["RecordId"], id_p);
}

/// A JSON number or numeric string (ClickHouse quotes 64-bit integers in JSON).
fn ns(v: &serde_json::Value) -> u64 {
    v.as_u64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or_else(|| panic!("not a number: {v}"))
}

fn f(v: &serde_json::Value) -> f64 {
    v.as_f64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or_else(|| panic!("not a number: {v}"))
}

fn point(attrs: Vec<KeyValue>, t: u64, value: number_data_point::Value) -> NumberDataPoint {
    NumberDataPoint {
        attributes: attrs,
        start_time_unix_nano: t - 10,
        time_unix_nano: t,
        value: Some(value),
        ..Default::default()
    }
}

fn metric(name: &str, data: Data) -> Metric {
    Metric {
        name: name.into(),
        description: format!("{name} description"),
        unit: "s".into(),
        data: Some(data),
        ..Default::default()
    }
}

fn metrics_request(t: u64) -> ExportMetricsServiceRequest {
    let exemplar = Exemplar {
        filtered_attributes: vec![kv("user", s("u1"))],
        time_unix_nano: t - 1,
        value: Some(exemplar::Value::AsDouble(1.5)),
        span_id: vec![0x11; 8],
        trace_id: vec![0x22; 16],
    };
    let mut gauge_a = point(vec![kv("q", s("a"))], t, number_data_point::Value::AsInt(7));
    gauge_a.exemplars = vec![exemplar.clone()];
    let gauge_b = point(
        vec![kv("q", s("b"))],
        t,
        number_data_point::Value::AsDouble(2.5),
    );
    let tokens = point(
        vec![kv("gen_ai.token.type", s("input"))],
        t,
        number_data_point::Value::AsInt(150),
    );
    let hist = HistogramDataPoint {
        start_time_unix_nano: t - 10,
        time_unix_nano: t,
        count: 3,
        sum: Some(4.5),
        bucket_counts: vec![1, 1, 1],
        explicit_bounds: vec![1.0, 2.0],
        exemplars: vec![Exemplar {
            value: Some(exemplar::Value::AsInt(2)),
            ..exemplar.clone()
        }],
        flags: 1,
        min: Some(0.5),
        max: Some(2.5),
        ..Default::default()
    };
    let exp = ExponentialHistogramDataPoint {
        start_time_unix_nano: t - 10,
        time_unix_nano: t,
        count: 5,
        sum: Some(10.0),
        scale: -2,
        zero_count: 1,
        positive: Some(Buckets {
            offset: -3,
            bucket_counts: vec![1, 2],
        }),
        negative: Some(Buckets {
            offset: 1,
            bucket_counts: vec![1],
        }),
        min: Some(0.1),
        max: Some(9.0),
        ..Default::default()
    };
    let summary = SummaryDataPoint {
        start_time_unix_nano: t - 10,
        time_unix_nano: t,
        count: 4,
        sum: 8.0,
        quantile_values: vec![
            ValueAtQuantile {
                quantile: 0.5,
                value: 1.5,
            },
            ValueAtQuantile {
                quantile: 0.99,
                value: 3.0,
            },
        ],
        ..Default::default()
    };
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: resource(),
            scope_metrics: vec![ScopeMetrics {
                scope: scope(),
                metrics: vec![
                    metric(
                        "queue.depth",
                        Data::Gauge(Gauge {
                            data_points: vec![gauge_a, gauge_b],
                        }),
                    ),
                    metric(
                        "gen_ai.client.token.usage",
                        Data::Sum(Sum {
                            data_points: vec![tokens],
                            aggregation_temporality: 2,
                            is_monotonic: true,
                        }),
                    ),
                    metric(
                        "gen_ai.client.operation.duration",
                        Data::Histogram(Histogram {
                            data_points: vec![hist],
                            aggregation_temporality: 1,
                        }),
                    ),
                    metric(
                        "latency.exp",
                        Data::ExponentialHistogram(ExponentialHistogram {
                            data_points: vec![exp],
                            aggregation_temporality: 2,
                        }),
                    ),
                    metric(
                        "rpc.duration",
                        Data::Summary(Summary {
                            data_points: vec![summary],
                        }),
                    ),
                ],
                schema_url: "https://opentelemetry.io/schemas/1.30.0".into(),
            }],
            schema_url: "https://opentelemetry.io/schemas/1.26.0".into(),
        }],
    }
}

#[test]
fn every_metric_type_lands_in_its_otel_metrics_table() {
    let (front, gw) = setup();
    let key = gw.create_key("metrics-ch");
    let t = common::now_unix_nano() - 30_000_000_000;
    post(&gw, &key, "/v1/metrics", metrics_request(t).encode_to_vec());
    let q = |table: &str, extra: &str| {
        front.query_json(&format!(
            "SELECT *, toUnixTimestamp64Nano(TimeUnix) AS t, \
             toUnixTimestamp64Nano(StartTimeUnix) AS st{extra} FROM {DB}.{table} \
             WHERE ProjectId = 'metrics-ch' ORDER BY Attributes['q']"
        ))
    };
    wait_count(
        &front,
        &format!("SELECT count() FROM {DB}.otel_metrics_summary WHERE ProjectId = 'metrics-ch'"),
        1,
    );
    let gauge = q("otel_metrics_gauge", "");
    assert_eq!(gauge.len(), 2, "{gauge:?}");
    let g = &gauge[0];
    assert_eq!((f(&g["Value"]), f(&gauge[1]["Value"])), (7.0, 2.5));
    assert_eq!((ns(&g["t"]), ns(&g["st"])), (t, t - 10));
    assert_eq!(g["MetricName"], "queue.depth");
    assert_eq!(g["MetricDescription"], "queue.depth description");
    assert_eq!(g["MetricUnit"], "s");
    assert_eq!(g["ServiceName"], "chat-api");
    assert_eq!(g["ResourceAttributes"]["deployment.environment"], "prod");
    assert_eq!(
        g["ResourceSchemaUrl"],
        "https://opentelemetry.io/schemas/1.26.0"
    );
    assert_eq!(
        g["ScopeSchemaUrl"],
        "https://opentelemetry.io/schemas/1.30.0"
    );
    assert_eq!(
        (g["ScopeName"].as_str(), g["ScopeVersion"].as_str()),
        (Some("genai-instr"), Some("0.9"))
    );
    assert_eq!(g["ScopeAttributes"]["scope.k"], "v");
    assert_eq!(g["ScopeDroppedAttrCount"], 2);
    assert_eq!(g["Attributes"]["q"], "a");
    assert_eq!(g["ProjectId"], "metrics-ch");
    assert_eq!(g["Exemplars.FilteredAttributes"][0]["user"], "u1");
    assert_eq!(f(&g["Exemplars.Value"][0]), 1.5);
    assert_eq!(g["Exemplars.SpanId"][0], "11".repeat(8));
    assert_eq!(g["Exemplars.TraceId"][0], "22".repeat(16));
    assert_eq!(gauge[1]["Exemplars.Value"], serde_json::json!([]));

    let sum = q("otel_metrics_sum", "");
    assert_eq!(sum.len(), 1, "{sum:?}");
    assert_eq!(f(&sum[0]["Value"]), 150.0);
    assert_eq!(sum[0]["AggregationTemporality"], 2);
    assert_eq!(sum[0]["IsMonotonic"], true);
    assert_eq!(sum[0]["Attributes"]["gen_ai.token.type"], "input");

    let h = &q("otel_metrics_histogram", "")[0];
    assert_eq!((ns(&h["Count"]), f(&h["Sum"])), (3, 4.5));
    assert_eq!(
        h["BucketCounts"]
            .as_array()
            .map(|a| a.iter().map(ns).collect::<Vec<_>>()),
        Some(vec![1, 1, 1])
    );
    assert_eq!(h["ExplicitBounds"], serde_json::json!([1, 2]));
    assert_eq!((f(&h["Min"]), f(&h["Max"])), (0.5, 2.5));
    assert_eq!(
        (h["Flags"].as_u64(), h["AggregationTemporality"].as_i64()),
        (Some(1), Some(1))
    );
    assert_eq!(
        f(&h["Exemplars.Value"][0]),
        2.0,
        "an int exemplar as its Float64"
    );

    let e = &q("otel_metrics_exponential_histogram", "")[0];
    assert_eq!(
        (ns(&e["Count"]), f(&e["Sum"]), ns(&e["ZeroCount"])),
        (5, 10.0, 1)
    );
    assert_eq!(
        (
            e["Scale"].as_i64(),
            e["PositiveOffset"].as_i64(),
            e["NegativeOffset"].as_i64()
        ),
        (Some(-2), Some(-3), Some(1))
    );
    assert_eq!(
        e["PositiveBucketCounts"]
            .as_array()
            .map(|a| a.iter().map(ns).collect::<Vec<_>>()),
        Some(vec![1, 2])
    );
    assert_eq!(
        e["NegativeBucketCounts"]
            .as_array()
            .map(|a| a.iter().map(ns).collect::<Vec<_>>()),
        Some(vec![1])
    );
    assert_eq!((f(&e["Min"]), f(&e["Max"])), (0.1, 9.0));

    let s = &q("otel_metrics_summary", "")[0];
    assert_eq!((ns(&s["Count"]), f(&s["Sum"])), (4, 8.0));
    assert_eq!(
        s["ValueAtQuantiles.Quantile"],
        serde_json::json!([0.5, 0.99])
    );
    assert_eq!(s["ValueAtQuantiles.Value"], serde_json::json!([1.5, 3]));

    // Written again (the same request, retried by a client): the dedup window keeps one copy.
    post(&gw, &key, "/v1/metrics", metrics_request(t).encode_to_vec());
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(q("otel_metrics_gauge", "").len(), 2);
}
