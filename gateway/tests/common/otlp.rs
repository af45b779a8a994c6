//! OTLP requests for the tests: ids, spans, requests and their encodings.

use super::*;

/// Deterministic, non-zero 8-byte span id for `n`.
pub fn span_id(n: u64) -> Vec<u8> {
    (n | 0x8000_0000_0000_0000).to_be_bytes().to_vec()
}

pub fn now_unix_nano() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

pub use tracegate_spangen::kv_str;

/// A span with the given ids and name, start = now, duration 1 ms, one string attribute.
pub fn span(trace_id: Vec<u8>, span_id: Vec<u8>, name: &str) -> Span {
    let start = now_unix_nano();
    Span {
        trace_id,
        span_id,
        name: name.to_string(),
        kind: 1, // SPAN_KIND_INTERNAL
        start_time_unix_nano: start,
        end_time_unix_nano: start + 1_000_000,
        attributes: vec![kv_str("test.attr", "v")],
        ..Default::default()
    }
}

/// One ResourceSpans / one ScopeSpans request holding `spans` (`tracegate_spangen`, the
/// generator the benches and the load tool use).
pub fn request_with_spans(spans: Vec<Span>) -> ExportTraceServiceRequest {
    let from = tracegate_spangen::Sender {
        resource: &[("service.name", "tracegate-tests")],
        scope: "tracegate-tests",
        scope_version: "1",
    };
    tracegate_spangen::request_with_spans(spans, &from)
}

/// A request with spans `first..first+n`: trace id `trace_id(i / 10)`, span id `span_id(i)`,
/// name `format!("{prefix}-{i}")`.
pub fn request_n(prefix: &str, first: u64, n: u64) -> ExportTraceServiceRequest {
    let spans = (first..first + n)
        .map(|i| span(trace_id(i / 10), span_id(i), &format!("{prefix}-{i}")))
        .collect();
    request_with_spans(spans)
}

/// Protobuf encoding.
pub fn encode(req: &ExportTraceServiceRequest) -> Vec<u8> {
    req.encode_to_vec()
}

/// OTLP/JSON encoding (opentelemetry-proto's serde: hex ids, camelCase).
pub fn encode_json(req: &ExportTraceServiceRequest) -> Vec<u8> {
    serde_json::to_vec(req).expect("serialize request as JSON")
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

pub fn decode_response(body: &[u8]) -> ExportTraceServiceResponse {
    ExportTraceServiceResponse::decode(body).expect("decode ExportTraceServiceResponse")
}

/// A blocking client with connect and total timeouts.
pub fn http_client() -> reqwest::blocking::Client {
    http_client_with_timeout(HTTP_TIMEOUT)
}
