//! OTLP logs (issue 25, first part): the real OpenTelemetry Rust SDK's log exporter
//! (`opentelemetry-otlp` 0.33) over OTLP/HTTP protobuf, OTLP/HTTP JSON and OTLP/gRPC to a real
//! `tracegate serve`; every record archived once under the key's project, with its body,
//! severity, event name, attributes and trace context, and the tenant stamped. Raw requests
//! check `partial_success` (invalid records rejected one by one, the rest kept), the
//! `logs:write` scope (a traces-only key is refused), and logs through Kafka, split when a
//! request is larger than a Kafka message.

mod common;

use std::time::{Duration, Instant};

use common::{Gateway, TestBroker, Writer};
use opentelemetry::logs::Severity;
use opentelemetry::logs::{AnyValue as LogValue, LogRecord as _, Logger as _, LoggerProvider as _};
use opentelemetry_otlp::LogExporter;
use opentelemetry_sdk::logs::SdkLoggerProvider;
use opentelemetry_sdk::Resource;
use prost::Message;
use tracegate_proto::otlp::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use tracegate_proto::otlp::common::v1::{any_value, AnyValue, KeyValue};
use tracegate_proto::otlp::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use tracegate_proto::otlp::resource::v1::Resource as PResource;

const RECORDS: usize = 20;

type Transport = common::OtlpTransport;

fn exporter(gw: &Gateway, key: &str, t: Transport, rt: &tokio::runtime::Runtime) -> LogExporter {
    otlp_exporter!(LogExporter::builder(), gw, key, t, "/v1/logs", rt)
}

/// GenAI-event-shaped records `{prefix}-{i}` (event name, body, attributes, trace context).
fn emit(exporter: LogExporter, prefix: &str) {
    let provider = SdkLoggerProvider::builder()
        .with_resource(
            Resource::builder()
                .with_service_name("logs-test")
                .with_attribute(opentelemetry::KeyValue::new(
                    "tracegate.project_id",
                    "spoofed",
                ))
                .build(),
        )
        .with_batch_exporter(exporter)
        .build();
    let logger = provider.logger("tracegate-test");
    for i in 0..RECORDS {
        let mut r = logger.create_log_record();
        r.set_event_name("gen_ai.client.inference.operation.details");
        r.set_severity_number(Severity::Info);
        r.set_severity_text("INFO");
        r.set_body(LogValue::from(format!("{prefix}-{i}")));
        r.add_attribute("gen_ai.request.model", "gpt-test");
        r.set_trace_context(
            opentelemetry::trace::TraceId::from(0x1234_u128 + i as u128),
            opentelemetry::trace::SpanId::from(0x42_u64),
            None,
        );
        logger.emit(r);
    }
    provider.force_flush().expect("flush");
    provider.shutdown().expect("shutdown");
}

fn logs_in(gw: &Gateway, project: &str) -> Vec<serde_json::Value> {
    common::archive_cat(&gw.data_dir, Some(project), &["--signal", "logs"])
}

fn run_case(t: Transport) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let gw = Gateway::start(&[]);
    let project = format!("logs-{t:?}").to_lowercase();
    let key = gw.create_key(&project);
    emit(exporter(&gw, &key, t, &rt), &project);
    let records = logs_in(&gw, &project);
    let bodies: Vec<&str> = records
        .iter()
        .filter_map(|r| r["log"]["body"]["stringValue"].as_str())
        .collect();
    assert_eq!(records.len(), RECORDS, "{t:?}: {records:#?}");
    for i in 0..RECORDS {
        let want = format!("{project}-{i}");
        assert_eq!(
            bodies.iter().filter(|b| **b == want).count(),
            1,
            "{t:?}: {want}"
        );
    }
    let r = &records[0];
    assert_eq!(r["project_id"], project.as_str());
    assert_eq!(
        r["log"]["eventName"],
        "gen_ai.client.inference.operation.details"
    );
    assert_eq!(r["log"]["severityNumber"], 9);
    assert!(
        r["log"]["traceId"].as_str().is_some_and(|s| s.len() == 32),
        "{r}"
    );
    let res = r["resource"]["attributes"].as_array().unwrap();
    let stamped = res
        .iter()
        .find(|kv| kv["key"] == "tracegate.project_id")
        .unwrap();
    assert_eq!(stamped["value"]["stringValue"], project.as_str());
    // Spans of this project: none (logs are not spans).
    assert!(common::archive_spans_in(&gw.data_dir, Some(&project)).is_empty());
    let m = gw.metrics();
    assert_eq!(
        common::metric_value(&m, "tracegate_log_records_accepted_total"),
        RECORDS as f64
    );
}

#[test]
fn sdk_logs_over_http_protobuf() {
    run_case(Transport::HttpProtobuf);
}

#[test]
fn sdk_logs_over_http_json() {
    run_case(Transport::HttpJson);
}

#[test]
fn sdk_logs_over_grpc() {
    run_case(Transport::Grpc);
}

fn record(body: &str) -> LogRecord {
    LogRecord {
        severity_number: 17,
        body: Some(AnyValue {
            value: Some(any_value::Value::StringValue(body.into())),
        }),
        ..Default::default()
    }
}

fn request(records: Vec<LogRecord>) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(PResource {
                attributes: vec![KeyValue {
                    key: "service.name".into(),
                    value: Some(AnyValue {
                        value: Some(any_value::Value::StringValue("raw".into())),
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                log_records: records,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn post_logs(gw: &Gateway, key: &str, req: &ExportLogsServiceRequest) -> common::HttpResponse {
    common::post_otlp(gw, key, "/v1/logs", req.encode_to_vec())
}

#[test]
fn invalid_records_are_rejected_one_by_one_and_the_scope_is_required() {
    let gw = Gateway::start(&[]);
    let key = gw.create_key("raw-logs");
    let mut bad = record("bad-trace");
    bad.trace_id = vec![7; 5];
    let mut sev = record("bad-severity");
    sev.severity_number = 40;
    let req = request(vec![record("kept-1"), bad, record("kept-2"), sev]);
    let (status, _, body) = post_logs(&gw, &key, &req);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let resp = ExportLogsServiceResponse::decode(&body[..]).unwrap();
    let ps = resp.partial_success.expect("partial_success");
    assert_eq!(ps.rejected_log_records, 2);
    assert!(
        ps.error_message.contains("2 log record(s) rejected"),
        "{ps:?}"
    );
    assert!(ps.error_message.contains("trace_id"), "{ps:?}");
    let bodies: Vec<String> = logs_in(&gw, "raw-logs")
        .iter()
        .filter_map(|r| r["log"]["body"]["stringValue"].as_str().map(String::from))
        .collect();
    assert_eq!(bodies, ["kept-1", "kept-2"]);

    // A body nested deeper than the decoder follows (60 arrays: prost's recursion limit fails
    // the whole request) costs its record alone.
    let mut deep = AnyValue {
        value: Some(any_value::Value::StringValue("leaf".into())),
    };
    for _ in 0..60 {
        deep = AnyValue {
            value: Some(any_value::Value::ArrayValue(
                tracegate_proto::otlp::common::v1::ArrayValue { values: vec![deep] },
            )),
        };
    }
    let mut too_deep = record("too-deep");
    too_deep.body = Some(deep);
    let (status, _, body) = post_logs(&gw, &key, &request(vec![record("kept-3"), too_deep]));
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let ps = ExportLogsServiceResponse::decode(&body[..])
        .unwrap()
        .partial_success
        .expect("partial_success");
    assert_eq!(ps.rejected_log_records, 1, "{ps:?}");
    assert!(ps.error_message.contains("nested deeper"), "{ps:?}");
    let m = gw.metrics();
    assert!(
        m.contains(r#"tracegate_log_records_rejected_total{reason="invalid_severity"} 1"#),
        "{m}"
    );

    // A key made with traces:write alone (as every key before logs existed): traces yes,
    // logs no.
    let old = common::create_key_with(&gw.data_dir, "raw-logs", &["--scopes", "traces:write"]);
    let (status, _, body) = post_logs(&gw, &old, &request(vec![record("x")]));
    assert_eq!(status, 403, "{}", String::from_utf8_lossy(&body));
    let (status, _, _) = common::post_protobuf(&gw, &old, &common::request_n("t", 0, 1));
    assert_eq!(status, 200);
}

#[test]
fn logs_through_kafka_split_when_larger_than_a_message() {
    const TOPIC: &str = "tracegate-logs";
    let broker = TestBroker::start(&[(TOPIC, 2)]);
    let mut env = broker.env(TOPIC);
    // 16 KiB messages: a request of 60 records of 1 KiB is split into several.
    env.push(("TRACEGATE_KAFKA__MESSAGE_MAX_BYTES".into(), "16384".into()));
    let env_refs = common::env_refs(&env);
    let gw = Gateway::start(&env_refs);
    gw.wait_ready(Duration::from_secs(60));
    let key = gw.create_key("kafka-logs");
    let records: Vec<LogRecord> = (0..60)
        .map(|i| record(&format!("k{i:02}-{}", "x".repeat(1024))))
        .collect();
    let (status, _, body) = post_logs(&gw, &key, &request(records));
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let wr_dir = tempfile::tempdir().unwrap();
    let _writer = Writer::start(wr_dir.path(), None, &env_refs);
    let deadline = Instant::now() + Duration::from_secs(90);
    let bodies = loop {
        let got: Vec<String> =
            common::archive_cat(wr_dir.path(), Some("kafka-logs"), &["--signal", "logs"])
                .iter()
                .filter_map(|r| {
                    r["log"]["body"]["stringValue"]
                        .as_str()
                        .map(|s| s[..3].to_string())
                })
                .collect();
        if got.len() >= 60 || Instant::now() > deadline {
            break got;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let mut sorted = bodies.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 60, "every record once: {bodies:?}");
    assert_eq!(bodies.len(), 60, "a record archived twice");
}

/// `kafka.compression = "payload_zstd"` holds for log records as for spans: the gateway
/// compresses the envelope's payload once, Kafka carries the small bytes, and the writer reads
/// every record back. (Before, logs and metrics went plain: a backlog of them filled the
/// brokers ~10x faster than the same bytes as spans.)
#[test]
fn logs_through_kafka_are_zstd_payloads_with_payload_zstd() {
    const TOPIC: &str = "tracegate-logs-zstd";
    let broker = TestBroker::start(&[(TOPIC, 1)]);
    let mut env = broker.env(TOPIC);
    env.push(("TRACEGATE_KAFKA__COMPRESSION".into(), "payload_zstd".into()));
    let env_refs = common::env_refs(&env);
    let gw = Gateway::start(&env_refs);
    gw.wait_ready(Duration::from_secs(60));
    let key = gw.create_key("zstd-logs");
    let records: Vec<LogRecord> = (0..100)
        .map(|i| record(&format!("z{i:02}-{}", "prompt text ".repeat(200))))
        .collect();
    let req = request(records);
    let plain = req.encode_to_vec().len() as f64;
    let (status, _, body) = post_logs(&gw, &key, &req);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let produced = common::metric_value(&gw.metrics(), "tracegate_kafka_produced_bytes_total");
    assert!(
        produced > 0.0 && produced < plain / 5.0,
        "{produced} bytes produced for a {plain}-byte request"
    );
    let wr_dir = tempfile::tempdir().unwrap();
    let _writer = Writer::start(wr_dir.path(), None, &env_refs);
    let deadline = Instant::now() + Duration::from_secs(90);
    let n = loop {
        let n = common::archive_cat(wr_dir.path(), Some("zstd-logs"), &["--signal", "logs"]).len();
        if n >= 100 || Instant::now() > deadline {
            break n;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(n, 100);
}
