//! ClickHouse writer against a real engine: chdb (ClickHouse 26.x in-process) behind the
//! test-only HTTP front `deploy/testing/chdb_front.py` (docs/testing.md says what is real and
//! what is scaffolding). Every test starts its own front and `tracegate serve` on free loopback
//! ports and has bounded waits.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{counts, send_sequenced, ChFront, Gateway};
use opentelemetry::trace::{
    Link, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
    Tracer as _, TracerProvider as _,
};
use opentelemetry::{Array, Context, KeyValue, StringValue, Value};
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig, WithHttpConfig};
use opentelemetry_proto::tonic::common::v1::{
    any_value, AnyValue, ArrayValue, KeyValue as PKeyValue, KeyValueList,
};
use opentelemetry_proto::tonic::trace::v1::Status as PStatus;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;

fn setup(
    db: &str,
    front_args: &[&str],
    extra_env: &[(&str, &str)],
) -> (ChFront, Vec<(String, String)>) {
    let front = ChFront::start(front_args);
    let mut env = common::clickhouse_env(&front, db);
    for (k, v) in extra_env {
        env.push((k.to_string(), v.to_string()));
    }
    let out = common::migrate(&env);
    assert!(out.contains("migrations applied: [1, 2, 3]"), "{out}");
    (front, env)
}

fn num(v: &serde_json::Value) -> u64 {
    match v {
        serde_json::Value::Number(n) => n.as_u64().expect("u64"),
        serde_json::Value::String(s) => s.parse().unwrap_or_else(|_| panic!("not a number: {s}")),
        other => panic!("not a number: {other}"),
    }
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64
}

#[test]
fn migrate_is_idempotent_versioned_and_applies_retention() {
    let (front, mut env) = setup("mig", &[], &[]);
    let out = common::migrate(&env);
    assert!(out.contains("migrations applied: []"), "{out}");
    assert!(
        out.contains("migrations already present: [1, 2, 3]"),
        "{out}"
    );
    let tables = front
        .query("SELECT name FROM system.tables WHERE database = 'mig' ORDER BY name FORMAT TSV");
    for t in [
        "otel_traces",
        "otel_traces_payloads",
        "otel_traces_trace_id_ts",
        "otel_traces_trace_id_ts_mv",
        "otel_logs",
        "otel_logs_payloads",
        "otel_metrics_gauge",
        "otel_metrics_sum",
        "otel_metrics_histogram",
        "otel_metrics_exponential_histogram",
        "otel_metrics_summary",
        "tracegate_schema_migrations",
    ] {
        assert!(tables.lines().any(|l| l == t), "{t} missing: {tables}");
    }
    let engine = front.query(
        "SELECT engine_full FROM system.tables WHERE database = 'mig' AND name = 'otel_traces'",
    );
    assert!(
        engine.contains("non_replicated_deduplication_window = 1000"),
        "{engine}"
    );
    assert!(engine.contains("toIntervalDay(30)"), "{engine}");
    assert!(
        engine.contains("ORDER BY (OrgId, WorkspaceId, ProjectId"),
        "{engine}"
    );
    env.push(("TRACEGATE_CLICKHOUSE__TTL_DAYS".into(), "7".into()));
    let out = common::migrate(&env);
    assert!(out.contains("ttl updated: [\"otel_traces\""), "{out}");
    let engine = front.query(
        "SELECT engine_full FROM system.tables WHERE database = 'mig' AND name = 'otel_traces_payloads'",
    );
    assert!(engine.contains("toIntervalDay(7)"), "{engine}");
    // Every table of every signal: tenant first in the key, retention from the config.
    for t in tracegate::clickhouse::schema::Table::ALL {
        let engine = front.query(&format!(
            "SELECT engine_full FROM system.tables WHERE database = 'mig' AND name = '{}'",
            t.name()
        ));
        assert!(engine.contains("toIntervalDay(7)"), "{t:?}: {engine}");
        assert!(
            engine.contains("ORDER BY (OrgId, WorkspaceId, ProjectId"),
            "{t:?}: {engine}"
        );
    }
    let out = common::migrate(&env);
    assert!(out.contains("ttl updated: []"), "{out}");
    assert_eq!(
        front.query_u64("SELECT count() FROM mig.tracegate_schema_migrations"),
        3
    );
}

#[test]
fn migrate_without_clickhouse_config_names_the_key() {
    let out = common::run_tracegate(&["migrate"], &[], Duration::from_secs(30));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("clickhouse.url"), "{err}");
}

/// A ~1 MiB string with multi-byte characters (so previews must cut at a char boundary).
fn big_text(bytes: usize) -> String {
    let unit = "héllo wörld, prompt → completion 😀 ";
    let mut s = String::with_capacity(bytes + unit.len());
    while s.len() < bytes {
        s.push_str(unit);
    }
    s
}

fn utf8_prefix(s: &str, n: usize) -> &str {
    let mut end = n.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[test]
fn round_trip_from_the_otel_exporter_keeps_every_field() {
    let (front, env) = setup("rt", &[], &[]);
    let gw = Gateway::start(&common::env_refs(&env));
    let project = common::unique_project("ch-rt");
    let key = gw.create_key(&project);

    let base = SystemTime::now() - Duration::from_secs(3600);
    let base = UNIX_EPOCH + Duration::new(base.duration_since(UNIX_EPOCH).unwrap().as_secs(), 0);
    let t0 = base + Duration::from_nanos(123_456_789);
    let t_event = t0 + Duration::from_nanos(1_000_001);
    let t1 = t0 + Duration::from_nanos(2_500_000_003);
    let prompt = big_text(1024 * 1024);
    let completion = big_text(20 * 1024);

    let trace_id = TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap();
    let parent_id = SpanId::from_hex("b7ad6b7169203331").unwrap();
    let link_trace = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
    let link_span = SpanId::from_hex("00f067aa0ba902b7").unwrap();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let exporter = SpanExporter::builder()
        .with_http()
        .with_endpoint(gw.traces_url())
        .with_protocol(Protocol::HttpBinary)
        .with_timeout(Duration::from_secs(30))
        .with_headers(HashMap::from([(
            "authorization".to_string(),
            format!("Bearer {key}"),
        )]))
        .build()
        .unwrap();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            Resource::builder()
                .with_service_name("rt-service")
                .with_attribute(KeyValue::new("deployment.environment", "test"))
                .build(),
        )
        .build();
    let tracer = provider.tracer_with_scope(
        opentelemetry::InstrumentationScope::builder("rt-scope")
            .with_version("1.2.3")
            .build(),
    );
    let parent = SpanContext::new(
        trace_id,
        parent_id,
        TraceFlags::SAMPLED,
        true,
        TraceState::from_key_value([("vendor", "v1")]).unwrap(),
    );
    let cx = Context::new().with_remote_span_context(parent);
    let mut span = tracer
        .span_builder("chat gpt-4o")
        .with_kind(SpanKind::Client)
        .with_start_time(t0)
        .with_attributes([
            KeyValue::new("str", "hello"),
            KeyValue::new("bool", true),
            KeyValue::new("int", -42i64),
            KeyValue::new("double", 2.5f64),
            KeyValue::new("arr.bool", Value::Array(Array::Bool(vec![true, false]))),
            KeyValue::new("arr.int", Value::Array(Array::I64(vec![1, -2]))),
            KeyValue::new("arr.double", Value::Array(Array::F64(vec![0.5, 1.0]))),
            KeyValue::new(
                "arr.str",
                Value::Array(Array::String(vec![
                    StringValue::from("a"),
                    StringValue::from("b\"c"),
                ])),
            ),
            KeyValue::new("gen_ai.provider.name", "openai"),
            KeyValue::new("gen_ai.operation.name", "chat"),
            KeyValue::new("gen_ai.request.model", "gpt-4o"),
            KeyValue::new("gen_ai.response.model", "gpt-4o-2024-08-06"),
            KeyValue::new("gen_ai.usage.input_tokens", 1234i64),
            KeyValue::new("gen_ai.usage.output_tokens", 567i64),
            KeyValue::new("gen_ai.input.messages", prompt.clone()),
        ])
        .with_links(vec![Link::new(
            SpanContext::new(
                link_trace,
                link_span,
                TraceFlags::SAMPLED,
                true,
                TraceState::from_key_value([("l", "1")]).unwrap(),
            ),
            vec![KeyValue::new("link.attr", "x")],
            0,
        )])
        .start_with_context(&tracer, &cx);
    use opentelemetry::trace::Span as _;
    let span_id = span.span_context().span_id();
    span.add_event_with_timestamp(
        "gen_ai.choice",
        t_event,
        vec![
            KeyValue::new("index", 0i64),
            KeyValue::new("gen_ai.completion", completion.clone()),
        ],
    );
    span.set_status(Status::error("rate limited"));
    span.end_with_timestamp(t1);
    provider.force_flush().expect("export");
    provider.shutdown().expect("shutdown");
    rt.shutdown_timeout(Duration::from_secs(5));

    // A raw OTLP request for what the SDK cannot produce: kvlist, bytes and empty values, scope
    // attributes, flags and dropped counts.
    let mut raw = common::span(common::trace_id(77), common::span_id(77), "raw-span");
    raw.start_time_unix_nano = nanos(t0);
    raw.end_time_unix_nano = nanos(t0) + 5;
    raw.flags = 0x101;
    raw.dropped_attributes_count = 3;
    raw.dropped_events_count = 4;
    raw.dropped_links_count = 5;
    raw.status = Some(PStatus {
        code: 1,
        message: String::new(),
    });
    let any = |v| AnyValue { value: Some(v) };
    raw.attributes = vec![
        PKeyValue {
            key: "kv".into(),
            value: Some(any(any_value::Value::KvlistValue(KeyValueList {
                values: vec![
                    PKeyValue {
                        key: "a".into(),
                        value: Some(any(any_value::Value::IntValue(1))),
                        ..Default::default()
                    },
                    PKeyValue {
                        key: "b".into(),
                        value: Some(any(any_value::Value::ArrayValue(ArrayValue {
                            values: vec![
                                any(any_value::Value::BoolValue(true)),
                                any(any_value::Value::StringValue("x".into())),
                            ],
                        }))),
                        ..Default::default()
                    },
                    PKeyValue {
                        key: "c".into(),
                        value: Some(any(any_value::Value::BytesValue(vec![0, 1, 2]))),
                        ..Default::default()
                    },
                ],
            }))),
            ..Default::default()
        },
        PKeyValue {
            key: "bytes".into(),
            value: Some(any(any_value::Value::BytesValue(vec![0xde, 0xad]))),
            ..Default::default()
        },
        PKeyValue {
            key: "empty".into(),
            value: Some(AnyValue { value: None }),
            ..Default::default()
        },
        PKeyValue {
            key: "big.double".into(),
            value: Some(any(any_value::Value::DoubleValue(1e21))),
            ..Default::default()
        },
        PKeyValue {
            key: "gen_ai.system".into(),
            value: Some(any(any_value::Value::StringValue("anthropic".into()))),
            ..Default::default()
        },
    ];
    let mut req = common::request_with_spans(vec![raw]);
    req.resource_spans[0].scope_spans[0]
        .scope
        .as_mut()
        .unwrap()
        .attributes = vec![common::kv_str("scope.attr", "s")];
    let (status, _, body) = common::post_protobuf(&gw, &key, &req);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));

    // Acknowledged means inserted: no waiting needed.
    let rows = front.query_json(&format!(
        "SELECT OrgId, WorkspaceId, ProjectId, Region, toUnixTimestamp64Nano(Timestamp) AS ts, \
         TraceId, SpanId, ParentSpanId, TraceState, SpanName, SpanKind, ServiceName, \
         ResourceAttributes, ScopeName, ScopeVersion, SpanAttributes, Duration, StatusCode, \
         StatusMessage, arrayMap(x -> toUnixTimestamp64Nano(x), Events.Timestamp) AS ev_ts, \
         Events.Name AS ev_name, Events.Attributes AS ev_attrs, Links.TraceId AS l_trace, \
         Links.SpanId AS l_span, Links.TraceState AS l_state, Links.Attributes AS l_attrs, \
         ScopeAttributes, Flags, DroppedAttributesCount, DroppedEventsCount, DroppedLinksCount, \
         GenAiProvider, GenAiOperation, GenAiRequestModel, GenAiResponseModel, GenAiInputTokens, \
         GenAiOutputTokens, PayloadKeys FROM rt.otel_traces WHERE ProjectId = '{project}' \
         ORDER BY SpanName"
    ));
    assert_eq!(rows.len(), 2, "{rows:?}");
    let (sdk, raw) = (&rows[0], &rows[1]);
    assert_eq!(sdk["SpanName"], "chat gpt-4o");
    assert_eq!(sdk["OrgId"], "default");
    assert_eq!(sdk["WorkspaceId"], "default");
    assert_eq!(sdk["ProjectId"], project.as_str());
    assert_eq!(sdk["Region"], "local");
    assert_eq!(num(&sdk["ts"]), nanos(t0));
    assert_eq!(sdk["TraceId"], "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(sdk["SpanId"], span_id.to_string());
    assert_eq!(sdk["ParentSpanId"], "b7ad6b7169203331");
    assert_eq!(sdk["TraceState"], "vendor=v1");
    assert_eq!(sdk["SpanKind"], "Client");
    assert_eq!(sdk["ServiceName"], "rt-service");
    assert_eq!(sdk["ResourceAttributes"]["service.name"], "rt-service");
    assert_eq!(sdk["ResourceAttributes"]["deployment.environment"], "test");
    assert_eq!(sdk["ScopeName"], "rt-scope");
    assert_eq!(sdk["ScopeVersion"], "1.2.3");
    let a = &sdk["SpanAttributes"];
    assert_eq!(a["str"], "hello");
    assert_eq!(a["bool"], "true");
    assert_eq!(a["int"], "-42");
    assert_eq!(a["double"], "2.5");
    assert_eq!(a["arr.bool"], "[true,false]");
    assert_eq!(a["arr.int"], "[1,-2]");
    assert_eq!(a["arr.double"], "[0.5,1]");
    assert_eq!(a["arr.str"], r#"["a","b\"c"]"#);
    assert_eq!(a["gen_ai.usage.input_tokens"], "1234");
    assert_eq!(a["gen_ai.input.messages"], utf8_prefix(&prompt, 256));
    assert_eq!(num(&sdk["Duration"]), nanos(t1) - nanos(t0));
    assert_eq!(sdk["StatusCode"], "Error");
    assert_eq!(sdk["StatusMessage"], "rate limited");
    assert_eq!(num(&sdk["ev_ts"][0]), nanos(t_event));
    assert_eq!(sdk["ev_name"], serde_json::json!(["gen_ai.choice"]));
    assert_eq!(sdk["ev_attrs"][0]["index"], "0");
    assert_eq!(
        sdk["ev_attrs"][0]["gen_ai.completion"],
        utf8_prefix(&completion, 256)
    );
    assert_eq!(
        sdk["l_trace"],
        serde_json::json!(["4bf92f3577b34da6a3ce929d0e0e4736"])
    );
    assert_eq!(sdk["l_span"], serde_json::json!(["00f067aa0ba902b7"]));
    assert_eq!(sdk["l_state"], serde_json::json!(["l=1"]));
    assert_eq!(sdk["l_attrs"], serde_json::json!([{"link.attr": "x"}]));
    assert_eq!(num(&sdk["Flags"]) & 0xff, 1, "sampled");
    assert_eq!(sdk["GenAiProvider"], "openai");
    assert_eq!(sdk["GenAiOperation"], "chat");
    assert_eq!(sdk["GenAiRequestModel"], "gpt-4o");
    assert_eq!(sdk["GenAiResponseModel"], "gpt-4o-2024-08-06");
    assert_eq!(num(&sdk["GenAiInputTokens"]), 1234);
    assert_eq!(num(&sdk["GenAiOutputTokens"]), 567);
    assert_eq!(
        sdk["PayloadKeys"],
        serde_json::json!(["span:gen_ai.input.messages", "event:0:gen_ai.completion"])
    );

    // The large values, whole, from the payload table.
    let payloads = front.query_json(&format!(
        "SELECT Location, EventIndex, Key, Value, ValueBytes, TraceId, SpanId, \
         toUnixTimestamp64Nano(Timestamp) AS ts FROM rt.otel_traces_payloads \
         WHERE ProjectId = '{project}' ORDER BY Location DESC"
    ));
    assert_eq!(payloads.len(), 2);
    assert_eq!(payloads[0]["Location"], "span");
    assert_eq!(payloads[0]["Key"], "gen_ai.input.messages");
    assert!(
        payloads[0]["Value"].as_str() == Some(prompt.as_str()),
        "1 MiB prompt differs"
    );
    assert_eq!(num(&payloads[0]["ValueBytes"]), prompt.len() as u64);
    assert_eq!(payloads[0]["SpanId"], span_id.to_string());
    assert_eq!(num(&payloads[0]["ts"]), nanos(t0));
    assert_eq!(payloads[1]["Location"], "event");
    assert_eq!(num(&payloads[1]["EventIndex"]), 0);
    assert!(payloads[1]["Value"].as_str() == Some(completion.as_str()));

    // The raw request's extra types and fields.
    let a = &raw["SpanAttributes"];
    assert_eq!(a["kv"], r#"{"a":1,"b":[true,"x"],"c":"AAEC"}"#);
    assert_eq!(a["bytes"], "3q0=");
    assert_eq!(a["empty"], "");
    assert_eq!(a["big.double"], "1000000000000000000000");
    assert_eq!(raw["TraceId"], hex(&common::trace_id(77)));
    assert_eq!(raw["SpanId"], hex(&common::span_id(77)));
    assert_eq!(raw["ParentSpanId"], "");
    assert_eq!(raw["SpanKind"], "Internal");
    assert_eq!(raw["StatusCode"], "Ok");
    assert_eq!(num(&raw["Duration"]), 5);
    assert_eq!(num(&raw["Flags"]), 0x101);
    assert_eq!(num(&raw["DroppedAttributesCount"]), 3);
    assert_eq!(num(&raw["DroppedEventsCount"]), 4);
    assert_eq!(num(&raw["DroppedLinksCount"]), 5);
    assert_eq!(raw["ScopeAttributes"]["scope.attr"], "s");
    assert_eq!(
        raw["GenAiProvider"], "anthropic",
        "gen_ai.system is the fallback"
    );
    assert_eq!(raw["ev_name"], serde_json::json!([]));
    assert_eq!(raw["PayloadKeys"], serde_json::json!([]));

    // Grafana's trace lookup table is fed by the materialized view.
    assert_eq!(
        front.query_u64(
            "SELECT count() FROM rt.otel_traces_trace_id_ts WHERE TraceId = '0af7651916cd43dd8448eb211c80319c'"
        ),
        1
    );
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Both insert codecs reach the engine intact: the writer frames ClickHouse's native blocks
/// itself (`clickhouse/blocks.rs`), and the front checks every block's checksum and sizes the
/// way ClickHouse does before it decompresses. LZ4 is not the default, so it gets its own run;
/// the zstd default is what every other test here sends.
#[test]
fn lz4_and_zstd_insert_blocks_are_accepted() {
    for codec in ["lz4", "zstd"] {
        let db = format!("codec_{codec}");
        let (front, env) = setup(&db, &[], &[("TRACEGATE_CLICKHOUSE__COMPRESSION", codec)]);
        let gw = Gateway::start(&common::env_refs(&env));
        let project = common::unique_project(&db);
        let key = gw.create_key(&project);
        // 40 x 500 spans: several 1 MiB blocks per insert.
        let (acked, _) = send_sequenced(
            &gw,
            &key,
            "codec",
            40,
            500,
            2,
            Instant::now() + Duration::from_secs(120),
        );
        assert_eq!(acked, 20_000);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (count, uniq) = counts(&front, &db, &project);
            if count == acked {
                assert_eq!(uniq, acked, "{codec}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{codec}: {count} of {acked} spans"
            );
            thread::sleep(Duration::from_millis(200));
        }
        let failed: f64 = gw
            .metrics()
            .lines()
            .filter(|l| {
                l.starts_with("tracegate_clickhouse_inserts_total")
                    && l.contains("result=\"error\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        assert_eq!(
            failed, 0.0,
            "{codec}: no insert failed (a bad checksum is an error, then a retry)"
        );
    }
}

/// The writer-crash window: ClickHouse committed an insert but the writer never heard back
/// (the front drops 30 % of insert answers after committing them — what a writer killed -9 after
/// ClickHouse's commit sees). The same group is written again with the same tokens: ClickHouse
/// must drop every copy. The negative control sends no tokens and must show duplicates, so the
/// check can fail.
#[test]
fn lost_insert_acks_are_deduplicated_and_negative_control_duplicates() {
    const REQUESTS: u64 = 200;
    const PER_REQUEST: u64 = 100;
    for dedup in [true, false] {
        let db = if dedup { "ackloss" } else { "ackloss_nodedup" };
        let (front, env) = setup(
            db,
            &["--fault-ack-loss", "0.3", "--seed", "42"],
            &[(
                "TRACEGATE_CLICKHOUSE__INSERT_DEDUPLICATION",
                if dedup { "true" } else { "false" },
            )],
        );
        let gw = Gateway::start(&common::env_refs(&env));
        let project = common::unique_project(db);
        let key = gw.create_key(&project);
        let (acked, _) = send_sequenced(
            &gw,
            &key,
            "ackloss",
            REQUESTS,
            PER_REQUEST,
            4,
            Instant::now() + Duration::from_secs(240),
        );
        assert_eq!(acked, REQUESTS * PER_REQUEST);
        let (count, uniq) = counts(&front, db, &project);
        let metrics = gw.metrics();
        let retried = metrics
            .lines()
            .filter(|l| {
                l.starts_with("tracegate_clickhouse_inserts_total")
                    && l.contains("result=\"error\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
        eprintln!(
            "dedup={dedup}: acked {acked}, count {count}, uniq {uniq}, retried inserts {retried}"
        );
        assert!(
            retried > 0.0,
            "the fault injection lost no ack: the test proves nothing"
        );
        assert_eq!(uniq, acked, "every acknowledged span is in ClickHouse");
        if dedup {
            assert_eq!(count, acked, "count() equals acknowledged spans");
            assert_eq!(count - uniq, 0, "no duplicates");
        } else {
            assert!(
                count > uniq,
                "negative control: without tokens the retries duplicate"
            );
        }
    }
}

/// ClickHouse killed -9 at random moments under load and restarted on the same data: every
/// acknowledged span is there exactly once.
#[test]
fn clickhouse_killed_repeatedly_no_loss_no_duplicate() {
    let kills: u32 = std::env::var("TRACEGATE_TEST_CH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let (front, env) = setup("kills", &[], &[]);
    let front = Arc::new(Mutex::new(front));
    let gw = Gateway::start(&common::env_refs(&env));
    let project = common::unique_project("kills");
    let key = gw.create_key(&project);
    let done = Arc::new(AtomicBool::new(false));
    let killer = {
        let (front, done) = (front.clone(), done.clone());
        thread::spawn(move || {
            let mut n = 0;
            while n < kills && !done.load(Ordering::SeqCst) {
                thread::sleep(Duration::from_millis(rand_ms(200, 1500)));
                let mut f = front.lock().unwrap();
                f.kill9();
                thread::sleep(Duration::from_millis(rand_ms(0, 500)));
                f.restart();
                n += 1;
            }
            n
        })
    };
    let (acked, failures) = send_sequenced(
        &gw,
        &key,
        "kills",
        600,
        50,
        4,
        Instant::now() + Duration::from_secs(300),
    );
    done.store(true, Ordering::SeqCst);
    let n = killer.join().unwrap();
    let front = front.lock().unwrap();
    let (count, uniq) = counts(&front, "kills", &project);
    eprintln!("{n} kills: acked {acked}, count {count}, uniq {uniq}, client failures {failures}");
    assert!(n >= 1);
    assert_eq!(count, acked);
    assert_eq!(count - uniq, 0);
}

fn rand_ms(lo: u64, hi: u64) -> u64 {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    lo + t % (hi - lo).max(1)
}

/// ClickHouse down for 30 s (TRACEGATE_TEST_CH_OUTAGE_SECS) while clients keep sending: the
/// gateway holds the unwritten group (no ack), refuses more with 503 once its bounds are hit,
/// keeps its memory bounded, and writes everything exactly once when ClickHouse is back.
#[test]
fn clickhouse_down_30s_no_loss_no_duplicate_bounded_memory() {
    // Span numbers of the probes, after the 400 x 100 of the load.
    const PROBE_BASE: u64 = 400 * 100;
    let outage: u64 = std::env::var("TRACEGATE_TEST_CH_OUTAGE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let (front, env) = setup(
        "outage",
        &[],
        &[
            ("TRACEGATE_LIMITS__MAX_INFLIGHT_BYTES", "67108864"),
            // 8 clients, room for 4 waiting batches: the others must be refused (503).
            ("TRACEGATE_WRITER__QUEUE_CAPACITY", "4"),
        ],
    );
    let front = Arc::new(Mutex::new(front));
    let gw = Gateway::start(&common::env_refs(&env));
    let pid = gw.pid();
    let project = common::unique_project("outage");
    let key = gw.create_key(&project);
    let baseline = common::rss_kib(pid);
    let peak = Arc::new(AtomicU64::new(baseline));
    let done = Arc::new(AtomicBool::new(false));
    // Extra one-shot requests sent a few seconds into the outage. The 8 load clients may all be
    // waiting inside the group that cannot be written (then nothing new arrives and nothing is
    // refused); these probes arrive while it is stuck, fill the 4 waiting slots, and the rest
    // must be refused with 503. Refused probes are not retried; accepted ones are counted.
    const PROBES: u64 = 8;
    let probe_acked = Arc::new(AtomicU64::new(0));
    let probe_refused = Arc::new(AtomicU64::new(0));
    let chaos = {
        let (front, done, peak) = (front.clone(), done.clone(), peak.clone());
        let (url, key) = (gw.traces_url(), key.clone());
        let (probe_acked, probe_refused) = (probe_acked.clone(), probe_refused.clone());
        thread::spawn(move || {
            thread::sleep(Duration::from_secs(2));
            front.lock().unwrap().kill9();
            let until = Instant::now() + Duration::from_secs(outage);
            let probes: Vec<_> = (0..PROBES)
                .map(|i| {
                    let (url, key) = (url.clone(), key.clone());
                    let (acked, refused) = (probe_acked.clone(), probe_refused.clone());
                    thread::spawn(move || {
                        thread::sleep(Duration::from_secs(3));
                        let client = common::http_client_with_timeout(Duration::from_secs(240));
                        let body =
                            common::encode(&common::request_n("outage", PROBE_BASE + i * 100, 100));
                        let auth = format!("Bearer {key}");
                        match common::try_post(
                            &client,
                            &url,
                            &[
                                ("content-type", "application/x-protobuf"),
                                ("authorization", &auth),
                            ],
                            body,
                        ) {
                            Ok((200, _, _)) => {
                                acked.fetch_add(100, Ordering::SeqCst);
                            }
                            Ok((503, _, _)) => {
                                refused.fetch_add(1, Ordering::SeqCst);
                            }
                            other => eprintln!("probe {i}: {:?}", other.map(|r| r.0)),
                        }
                    })
                })
                .collect();
            while Instant::now() < until {
                peak.fetch_max(common::rss_kib(pid), Ordering::SeqCst);
                thread::sleep(Duration::from_millis(200));
            }
            front.lock().unwrap().restart();
            for p in probes {
                p.join().unwrap();
            }
            while !done.load(Ordering::SeqCst) {
                peak.fetch_max(common::rss_kib(pid), Ordering::SeqCst);
                thread::sleep(Duration::from_millis(200));
            }
        })
    };
    let load_started = Instant::now();
    let (acked, failures) = send_sequenced(
        &gw,
        &key,
        "outage",
        400,
        100,
        8,
        Instant::now() + Duration::from_secs(outage + 180),
    );
    done.store(true, Ordering::SeqCst);
    chaos.join().unwrap();
    let front = front.lock().unwrap();
    let (count, uniq) = counts(&front, "outage", &project);
    let refused_probes = probe_refused.load(Ordering::SeqCst);
    let acked = acked + probe_acked.load(Ordering::SeqCst);
    let peak = peak.load(Ordering::SeqCst);
    eprintln!(
        "outage {outage}s: acked {acked}, count {count}, uniq {uniq}, client retries {failures}, \
         rss baseline {baseline} KiB peak {peak} KiB"
    );
    assert!(
        load_started.elapsed() >= Duration::from_secs(outage),
        "the load finished before the outage ended: the test proves nothing"
    );
    assert!(
        failures + refused_probes > 0,
        "no request was refused while ClickHouse was down"
    );
    assert!(
        refused_probes > 0,
        "all {PROBES} requests sent during the outage were taken in: the waiting queue \
         (capacity 4) is not bounded"
    );
    assert_eq!(count, acked);
    assert_eq!(count - uniq, 0);
    assert!(
        peak < baseline + 256 * 1024,
        "memory grew from {baseline} KiB to {peak} KiB during the outage"
    );
}

/// A batch ClickHouse rejects (here: a CHECK constraint, a real engine refusal) goes to the
/// dead-letter archive and is counted; the other batches of the group are inserted and the
/// writer does not stall.
#[test]
fn rejected_batch_is_dead_lettered_and_does_not_block() {
    let (front, env) = setup(
        "dl",
        &[],
        &[("TRACEGATE_CLICKHOUSE__INSERT_INTERVAL_MS", "300")],
    );
    front.query("ALTER TABLE dl.otel_traces ADD CONSTRAINT no_poison CHECK SpanName != 'poison'");
    let gw = Gateway::start(&common::env_refs(&env));
    let project = common::unique_project("dl");
    let key = gw.create_key(&project);
    // Concurrent requests so that they share one group (insert interval 300 ms).
    let handles: Vec<_> = (0..4u64)
        .map(|i| {
            let url = gw.traces_url();
            let key = key.clone();
            thread::spawn(move || {
                let name = if i == 2 {
                    "poison".to_string()
                } else {
                    format!("good-{i}")
                };
                let req = common::request_with_spans(vec![common::span(
                    common::trace_id(1000 + i),
                    common::span_id(1000 + i),
                    &name,
                )]);
                let auth = format!("Bearer {key}");
                common::post(
                    &url,
                    &[
                        ("content-type", "application/x-protobuf"),
                        ("authorization", &auth),
                    ],
                    common::encode(&req),
                )
                .0
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), 200);
    }
    let names = front.query(&format!(
        "SELECT SpanName FROM dl.otel_traces WHERE ProjectId = '{project}' ORDER BY SpanName FORMAT TSV"
    ));
    assert_eq!(
        names.lines().collect::<Vec<_>>(),
        vec!["good-0", "good-1", "good-3"]
    );
    let metrics = gw.metrics();
    assert!(
        metrics.lines().any(|l| l
            .starts_with("tracegate_clickhouse_dead_letter_batches_total{reason=\"rejected\"} 1")),
        "{metrics}"
    );
    let dead = common::dead_letter_spans_in(&gw.data_dir);
    assert_eq!(common::span_names(&dead), vec!["poison"]);
    // Dead letters are archive objects like any other: encrypted (v2), under the tenant's
    // directory of the dead-letter area, and no span text is readable in the raw bytes.
    let area = gw.data_dir.join("archive").join(".clickhouse-dead-letter");
    let files = common::walk_files(&area);
    assert_eq!(files.len(), 1, "one dead-letter object: {files:?}");
    assert!(
        files[0]
            .components()
            .any(|c| c.as_os_str() == project.as_str()),
        "the dead letter is not under its project: {files:?}"
    );
    let raw = std::fs::read(&files[0]).unwrap();
    assert!(raw.starts_with(b"TGA2"), "not a v2 (encrypted) object");
    // (The header's encryption context names the tenant in clear, by design; the spans are not.)
    for plain in [&b"poison"[..], &common::trace_id(1002)[..]] {
        assert!(
            !raw.windows(plain.len()).any(|w| w == plain),
            "plaintext {:?} in the dead-letter object",
            String::from_utf8_lossy(plain)
        );
    }
    // The archive's own listing does not mix dead letters in with the spans.
    let archived = common::archive_spans_in(&gw.data_dir, Some(&project));
    assert!(common::span_names(&archived).contains(&"poison".to_string()));
    assert_eq!(archived.len(), 4);
    // The writer goes on.
    let (status, _, _) = common::post_protobuf(&gw, &key, &common::request_n("after", 5000, 3));
    assert_eq!(status, 200);
    assert_eq!(
        front.query_u64(&format!(
            "SELECT count() FROM dl.otel_traces WHERE ProjectId = '{project}'"
        )),
        6
    );
}
