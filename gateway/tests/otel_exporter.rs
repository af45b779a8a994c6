//! End-to-end tests with the real OpenTelemetry Rust SDK + `opentelemetry-otlp` exporter
//! (0.33, matching the gateway's opentelemetry-proto) sending to a real `tracegate serve`:
//! OTLP/HTTP protobuf, OTLP/HTTP JSON and OTLP/gRPC (tonic), each plain and gzip-compressed (and zstd for HTTP protobuf and gRPC).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use common::Gateway;
use opentelemetry::trace::{Span as _, TraceContextExt, Tracer as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{
    Compression, Protocol, SpanExporter, WithExportConfig, WithHttpConfig, WithTonicConfig,
};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;

const TRACES: usize = 5;
const SPANS_PER_TRACE: usize = 10;
const SPANS: usize = TRACES * SPANS_PER_TRACE;
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug)]
enum Transport {
    HttpProtobuf,
    HttpJson,
    Grpc,
}

fn build_exporter(
    gw: &Gateway,
    key: &str,
    transport: Transport,
    compression: Option<Compression>,
    rt: &tokio::runtime::Runtime,
) -> SpanExporter {
    let bearer = format!("Bearer {key}");
    match transport {
        Transport::HttpProtobuf | Transport::HttpJson => {
            let protocol = match transport {
                Transport::HttpJson => Protocol::HttpJson,
                _ => Protocol::HttpBinary,
            };
            let headers = HashMap::from([("authorization".to_string(), bearer)]);
            let mut b = SpanExporter::builder()
                .with_http()
                .with_endpoint(gw.traces_url())
                .with_protocol(protocol)
                .with_timeout(EXPORT_TIMEOUT)
                .with_headers(headers);
            if let Some(c) = compression {
                b = b.with_compression(c);
            }
            b.build().expect("build OTLP/HTTP span exporter")
        }
        Transport::Grpc => {
            let mut md = tonic::metadata::MetadataMap::new();
            md.insert("authorization", bearer.parse().expect("metadata value"));
            let mut b = SpanExporter::builder()
                .with_tonic()
                .with_endpoint(gw.grpc_url())
                .with_protocol(Protocol::Grpc)
                .with_timeout(EXPORT_TIMEOUT)
                .with_metadata(md);
            if let Some(c) = compression {
                b = b.with_compression(c);
            }
            // tonic's channel spawns its connection task on the ambient tokio runtime.
            let _guard = rt.enter();
            b.build().expect("build OTLP/gRPC span exporter")
        }
    }
}

/// Emits `TRACES` traces of `SPANS_PER_TRACE` spans (a root + children) named `{prefix}-{t}-{c}`
/// through a batch span processor, then force-flushes and shuts the provider down.
fn emit_spans(exporter: SpanExporter, prefix: &str) {
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            Resource::builder()
                .with_service_name("tracegate-otel-exporter-test")
                .build(),
        )
        .build();
    let tracer = provider.tracer("tracegate-otel-exporter-test");
    for t in 0..TRACES {
        let mut root = tracer.start(format!("{prefix}-{t}-0"));
        root.set_attribute(KeyValue::new("test.trace", t as i64));
        let cx = Context::current_with_span(root);
        for c in 1..SPANS_PER_TRACE {
            let mut child = tracer.start_with_context(format!("{prefix}-{t}-{c}"), &cx);
            child.set_attribute(KeyValue::new("test.child", c as i64));
            child.set_attribute(KeyValue::new("test.label", format!("span {t}/{c}")));
            child.end();
        }
        cx.span().end();
    }
    provider
        .force_flush()
        .expect("force_flush: the exporter reported an export failure");
    provider.shutdown().expect("tracer provider shutdown");
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Sum of all samples of Prometheus metric `name` (any labels) in `text`.
fn metric_sum(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        let value = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
        if let Some(v) = value {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

fn run_case(transport: Transport, compression: Option<Compression>) {
    let gw = Gateway::start(&[]);
    let label = match compression {
        Some(c) => format!("{transport:?}-{c:?}"),
        None => format!("{transport:?}"),
    }
    .to_lowercase();
    let project = common::unique_project(&format!("otel-{label}"));
    let key = gw.create_key(&project);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let exporter = build_exporter(&gw, &key, transport, compression, &rt);
    let prefix = format!("span-{label}");
    emit_spans(exporter, &prefix);
    rt.shutdown_timeout(Duration::from_secs(5));

    // Acknowledged spans must be in the archive; allow a short grace period for visibility.
    let mut records = Vec::new();
    common::wait_until(Duration::from_secs(10), || {
        records = gw.archive_spans(Some(&project));
        records.len() >= SPANS
    });

    let names = common::span_names(&records);
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for n in &names {
        *counts.entry(n.as_str()).or_default() += 1;
    }
    let mut problems = Vec::new();
    for t in 0..TRACES {
        for c in 0..SPANS_PER_TRACE {
            let name = format!("{prefix}-{t}-{c}");
            match counts.get(name.as_str()) {
                Some(1) => {}
                Some(n) => problems.push(format!("{name} archived {n} times")),
                None => problems.push(format!("{name} missing")),
            }
        }
    }
    assert!(
        problems.is_empty() && records.len() == SPANS,
        "{label}: expected {SPANS} archived spans each exactly once, got {} records; problems: \
         {problems:?}",
        records.len()
    );

    // The envelopes: a clean compressed protobuf request is forwarded as the client compressed
    // it (schema version 2, its encoding, the plain length); everything else is plain (v1).
    let batches = common::archive_batches_in(&gw.data_dir, Some(&project));
    let want = match (transport, compression) {
        (Transport::HttpJson, _) | (_, None) => (1, 0),
        (_, Some(Compression::Zstd)) => (2, 1),
        (_, Some(Compression::Gzip)) => (2, 2),
        (_, Some(c)) => panic!("{label}: unexpected compression {c:?}"),
    };
    let encodings = common::envelope_encodings(&batches);
    assert_eq!(
        encodings.keys().copied().collect::<Vec<_>>(),
        vec![want],
        "{label}: envelope (schema_version, encoding) counts {encodings:?}"
    );
    for b in &batches {
        let plain =
            tracegate_otlp::envelope::plain_request(b, tracegate_otlp::envelope::MAX_PLAIN_BYTES)
                .unwrap_or_else(|e| panic!("{label}: archived payload unreadable: {e}"));
        if want.1 != 0 {
            assert_eq!(b.otlp_request_plain_len, plain.len() as u64, "{label}");
            assert!(
                b.otlp_request.len() < plain.len(),
                "{label}: not compressed"
            );
        }
    }

    // Per record: project, ids as lowercase hex, trace structure preserved.
    let mut by_trace: BTreeMap<String, Vec<&serde_json::Value>> = BTreeMap::new();
    for r in &records {
        assert_eq!(
            r["project_id"].as_str(),
            Some(project.as_str()),
            "{label}: wrong project_id in {r}"
        );
        let trace_id = r["span"]["traceId"].as_str().unwrap_or_default();
        let span_id = r["span"]["spanId"].as_str().unwrap_or_default();
        assert!(
            is_lower_hex(trace_id, 32) && trace_id.bytes().any(|b| b != b'0'),
            "{label}: traceId is not 32 hex chars: {r}"
        );
        assert!(
            is_lower_hex(span_id, 16) && span_id.bytes().any(|b| b != b'0'),
            "{label}: spanId is not 16 hex chars: {r}"
        );
        by_trace.entry(trace_id.to_string()).or_default().push(r);
    }
    assert_eq!(
        by_trace.len(),
        TRACES,
        "{label}: expected {TRACES} distinct trace ids"
    );
    for (trace_id, spans) in &by_trace {
        assert_eq!(spans.len(), SPANS_PER_TRACE, "{label}: trace {trace_id}");
        let root = spans
            .iter()
            .find(|s| s["span"]["name"].as_str().unwrap().ends_with("-0"))
            .unwrap_or_else(|| panic!("{label}: trace {trace_id} has no root span"));
        let root_id = root["span"]["spanId"].as_str().unwrap();
        let t = root["span"]["name"].as_str().unwrap();
        let t = &t[..t.len() - 2];
        for s in spans {
            let name = s["span"]["name"].as_str().unwrap();
            assert!(
                name.starts_with(&format!("{t}-")),
                "{label}: span {name} in trace of {t}"
            );
            if !std::ptr::eq(*s, *root) {
                assert_eq!(
                    s["span"]["parentSpanId"].as_str(),
                    Some(root_id),
                    "{label}: child's parentSpanId != root spanId: {s}"
                );
            }
        }
    }
    for r in &records {
        assert_eq!(
            r["resource"]["attributes"]
                .as_array()
                .and_then(|a| a.iter().find(|kv| kv["key"] == "service.name"))
                .map(|kv| kv["value"]["stringValue"].clone()),
            Some(serde_json::json!("tracegate-otel-exporter-test")),
            "{label}: resource service.name not preserved: {r}"
        );
    }

    let metrics = gw.metrics();
    assert!(
        metrics.contains("tracegate_spans_accepted_total"),
        "{label}: /metrics lacks tracegate_spans_accepted_total:\n{metrics}"
    );
    let accepted = metric_sum(&metrics, "tracegate_spans_accepted_total");
    assert!(
        accepted.is_some_and(|v| v >= SPANS as f64),
        "{label}: tracegate_spans_accepted_total = {accepted:?}, expected >= {SPANS}"
    );
    // The SDK's protobuf requests are clean: every one takes the scan fast path (bytes
    // forwarded, never decoded by prost). JSON always goes through prost.
    let path = |p: &str| {
        metric_sum(
            &metrics,
            &format!("tracegate_validation_path_requests_total{{path=\"{p}\"}}"),
        )
        .unwrap_or(0.0)
    };
    let (scan, prost) = (path("scan"), path("prost"));
    match transport {
        Transport::HttpJson => assert!(
            scan == 0.0 && prost >= 1.0,
            "{label}: JSON requests: scan {scan}, prost {prost}"
        ),
        Transport::HttpProtobuf | Transport::Grpc => assert!(
            scan >= 1.0 && prost == 0.0,
            "{label}: protobuf requests: scan {scan}, prost {prost}"
        ),
    }

    let mut gw = gw;
    let status = gw.terminate();
    assert!(status.success(), "{label}: SIGTERM exit status {status}");
}

#[test]
fn otlp_http_protobuf() {
    run_case(Transport::HttpProtobuf, None);
}

#[test]
fn otlp_http_protobuf_gzip() {
    run_case(Transport::HttpProtobuf, Some(Compression::Gzip));
}

#[test]
fn otlp_http_json() {
    run_case(Transport::HttpJson, None);
}

#[test]
fn otlp_http_json_gzip() {
    run_case(Transport::HttpJson, Some(Compression::Gzip));
}

#[test]
fn otlp_grpc() {
    run_case(Transport::Grpc, None);
}

#[test]
fn otlp_grpc_gzip() {
    run_case(Transport::Grpc, Some(Compression::Gzip));
}

#[test]
fn otlp_http_protobuf_zstd() {
    run_case(Transport::HttpProtobuf, Some(Compression::Zstd));
}

#[test]
fn otlp_grpc_zstd() {
    run_case(Transport::Grpc, Some(Compression::Zstd));
}
