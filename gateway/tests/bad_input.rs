//! Bad-input tests for the OTLP/HTTP and OTLP/gRPC endpoints of the real `tracegate` binary,
//! against `docs/contract-for-tests.md`.
//!
//! Every case asserts the exact HTTP status or gRPC code, and every span sent gets a unique name
//! (`bi-<case>-...`). At the end of each test the archive is read back: no span of a rejected
//! request (nor a rejected span of a partial success) may be stored, while every span that was
//! accepted — including the valid siblings in partial-success requests — must be.
//!
//! Three gateways, one per test function (they run in parallel):
//! * `default_limits`: default config; most HTTP and gRPC cases share it.
//! * `oversize_and_bombs`: `max_request_bytes = 4 MiB`; oversize bodies and gzip / zstd bodies
//!   expanding past 1 GiB (HTTP and gRPC), and the server's peak RSS stays below 200 MiB.
//! * `inflight_overload`: `max_inflight_bytes = max_request_bytes = 64 KiB`; a half-sent request
//!   holds the in-flight budget, so another request gets 503 + Retry-After / UNAVAILABLE.
//!
//! Checks are soft within a test: a failing case is recorded and the remaining cases still run;
//! the test panics at the end listing every failure (so one report shows all violations).
//! Every network operation has a timeout.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use common::{Gateway, HttpResponse};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;

/// Timeout of one HTTP request made by these tests.
const REQ_TIMEOUT: Duration = Duration::from_secs(20);
/// Timeout of one gRPC call made by these tests.
const GRPC_TIMEOUT: Duration = Duration::from_secs(20);
/// How long to wait for accepted spans to show up in `archive cat`.
const ARCHIVE_WAIT: Duration = Duration::from_secs(20);
const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
const PB: &str = "application/x-protobuf";
const JSON: &str = "application/json";
/// Peak RSS allowed for the gateway after the compression bombs.
const MAX_RSS_KIB: u64 = 200 * 1024;

// ---------------------------------------------------------------------------------------------
// google.rpc.Status (for 400 bodies and grpc-status-details-bin)
// ---------------------------------------------------------------------------------------------

#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<ProtoAny>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ProtoAny {
    #[prost(string, tag = "1")]
    type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

// ---------------------------------------------------------------------------------------------
// Ledger: soft checks + span-name markers
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct Ledger {
    test: String,
    current: String,
    cases: Vec<String>,
    failed_cases: BTreeSet<String>,
    failures: Vec<String>,
    /// Span names that must be in the archive.
    stored: Vec<String>,
    /// Span names that must NOT be in the archive.
    rejected: Vec<String>,
}

impl Ledger {
    fn new(test: &str) -> Ledger {
        Ledger {
            test: test.to_string(),
            ..Default::default()
        }
    }

    fn begin(&mut self, case: &str) {
        self.current = case.to_string();
        self.cases.push(case.to_string());
    }

    fn fail(&mut self, msg: impl AsRef<str>) {
        let line = format!("[{}] {}", self.current, msg.as_ref());
        eprintln!("[bad_input {}] FAIL {line}", self.test);
        self.failed_cases.insert(self.current.clone());
        self.failures.push(line);
    }

    fn check(&mut self, ok: bool, msg: impl FnOnce() -> String) -> bool {
        if !ok {
            self.fail(msg());
        }
        ok
    }

    /// A span name for the current case; `stored` says whether it must end up in the archive.
    fn marker(&mut self, what: &str, stored: bool) -> String {
        let name = format!("bi-{}-{what}", self.current);
        if stored {
            self.stored.push(name.clone());
        } else {
            self.rejected.push(name.clone());
        }
        name
    }

    /// Drops names from the must-be-stored list: used when a request that should have been
    /// accepted was not (already reported), to avoid a second, confusing "missing" failure.
    fn unexpect_stored(&mut self, names: &[String]) {
        self.stored.retain(|n| !names.contains(n));
    }

    fn finish(self) {
        eprintln!("[bad_input {}] summary:", self.test);
        for c in &self.cases {
            let verdict = if self.failed_cases.contains(c) {
                "FAIL"
            } else {
                "ok"
            };
            eprintln!("[bad_input {}]   {verdict:4} {c}", self.test);
        }
        if !self.failures.is_empty() {
            panic!(
                "{} of {} cases failed in {}:\n{}",
                self.failed_cases.len(),
                self.cases.len(),
                self.test,
                self.failures.join("\n")
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Request builders
// ---------------------------------------------------------------------------------------------

static NEXT_ID: AtomicU64 = AtomicU64::new(1_000);

/// Fresh, unique, valid (trace id, span id).
fn fresh_ids() -> (Vec<u8>, Vec<u8>) {
    let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    (common::trace_id(n), common::span_id(n))
}

fn good_span(name: &str) -> Span {
    let (t, s) = fresh_ids();
    common::span(t, s, name)
}

fn span_with_ids(name: &str, trace_id: Vec<u8>, span_id: Vec<u8>) -> Span {
    common::span(trace_id, span_id, name)
}

fn resource() -> Resource {
    Resource {
        attributes: vec![common::kv_str("service.name", "tracegate-bad-input")],
        ..Default::default()
    }
}

fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: "tracegate-bad-input".to_string(),
        version: "1".to_string(),
        ..Default::default()
    }
}

fn pb_request(spans: Vec<Span>) -> Vec<u8> {
    common::request_with_spans(spans).encode_to_vec()
}

fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn varint_len(v: u64) -> usize {
    let mut n = 1;
    let mut v = v >> 7;
    while v != 0 {
        n += 1;
        v >>= 7;
    }
    n
}

/// Appends a length-delimited field.
fn put_field(buf: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_varint(buf, u64::from((field << 3) | 2));
    put_varint(buf, bytes.len() as u64);
    buf.extend_from_slice(bytes);
}

/// Protobuf AnyValue with `depth` AnyValues nested through `array_value` (the innermost one a
/// string), encoded iteratively (no recursion, linear time) so depth 100 000 is cheap.
fn deep_any_value_pb(depth: usize) -> Vec<u8> {
    assert!(depth >= 1);
    let inner: [u8; 3] = [0x0a, 0x01, b'x']; // AnyValue{string_value: "x"}
                                             // any_len[i] / arr_len[i]: encoded length of the AnyValue / its ArrayValue at level i
                                             // (level 0 = innermost).
    let mut any_len = Vec::with_capacity(depth);
    let mut arr_len = Vec::with_capacity(depth);
    any_len.push(inner.len() as u64);
    arr_len.push(0u64);
    for i in 1..depth {
        let a = 1 + varint_len(any_len[i - 1]) as u64 + any_len[i - 1];
        arr_len.push(a);
        any_len.push(1 + varint_len(a) as u64 + a);
    }
    let mut out = Vec::with_capacity(any_len[depth - 1] as usize);
    for i in (1..depth).rev() {
        out.push(0x2a); // AnyValue.array_value (5, LEN)
        put_varint(&mut out, arr_len[i]);
        out.push(0x0a); // ArrayValue.values (1, LEN)
        put_varint(&mut out, any_len[i - 1]);
    }
    out.extend_from_slice(&inner);
    debug_assert_eq!(out.len() as u64, any_len[depth - 1]);
    out
}

/// Encoded Span = `span` plus one more attribute `key` whose AnyValue is the raw bytes given.
fn span_with_raw_attr(span: &Span, key: &str, any_value: &[u8]) -> Vec<u8> {
    let mut kv = Vec::new();
    put_field(&mut kv, 1, key.as_bytes());
    put_field(&mut kv, 2, any_value);
    let mut b = span.encode_to_vec();
    put_field(&mut b, 9, &kv); // Span.attributes
    b
}

/// An ExportTraceServiceRequest with one resource / one scope holding `spans` and then the
/// already-encoded `raw_spans`.
fn pb_request_raw(spans: Vec<Span>, raw_spans: &[Vec<u8>]) -> Vec<u8> {
    let ss = ScopeSpans {
        scope: Some(scope()),
        spans,
        schema_url: String::new(),
    };
    let mut ss_bytes = ss.encode_to_vec();
    for raw in raw_spans {
        put_field(&mut ss_bytes, 2, raw); // ScopeSpans.spans
    }
    let rs = ResourceSpans {
        resource: Some(resource()),
        scope_spans: vec![],
        schema_url: String::new(),
    };
    let mut rs_bytes = rs.encode_to_vec();
    put_field(&mut rs_bytes, 2, &ss_bytes); // ResourceSpans.scope_spans
    let mut out = Vec::new();
    put_field(&mut out, 1, &rs_bytes); // ExportTraceServiceRequest.resource_spans
    out
}

/// A valid protobuf request with one span named `name` whose encoding is exactly `size` bytes
/// (padded with a string attribute).
fn pb_request_of_size(name: &str, size: usize) -> Vec<u8> {
    let base = good_span(name);
    let mut pad = size.saturating_sub(200);
    for _ in 0..20 {
        let mut s = base.clone();
        s.attributes.push(common::kv_str("pad", &"p".repeat(pad)));
        let enc = pb_request(vec![s]);
        if enc.len() == size {
            return enc;
        }
        let diff = size as i64 - enc.len() as i64;
        // Near a varint boundary, step by one.
        let step = if diff.abs() <= 2 { diff.signum() } else { diff };
        pad = (pad as i64 + step).max(0) as usize;
    }
    panic!("could not build a request of exactly {size} bytes");
}

fn json_span(name: &str, trace_hex: &str, span_hex: &str, extra_attrs: &str) -> String {
    let t = common::now_unix_nano();
    format!(
        r#"{{"traceId":"{trace_hex}","spanId":"{span_hex}","name":"{name}","kind":1,"startTimeUnixNano":"{t}","endTimeUnixNano":"{}","attributes":[{{"key":"test.attr","value":{{"stringValue":"v"}}}}{extra_attrs}]}}"#,
        t + 1_000_000
    )
}

fn json_good_span(name: &str) -> String {
    let (t, s) = fresh_ids();
    json_span(name, &hex::encode(t), &hex::encode(s), "")
}

fn json_request(spans: &[String]) -> Vec<u8> {
    format!(
        r#"{{"resourceSpans":[{{"resource":{{"attributes":[{{"key":"service.name","value":{{"stringValue":"tracegate-bad-input"}}}}]}},"scopeSpans":[{{"scope":{{"name":"tracegate-bad-input","version":"1"}},"spans":[{}]}}]}}]}}"#,
        spans.join(",")
    )
    .into_bytes()
}

/// OTLP/JSON AnyValue with `depth` AnyValues nested through `arrayValue`.
fn deep_any_value_json(depth: usize) -> String {
    let open = r#"{"arrayValue":{"values":["#;
    let close = "]}}";
    let mut s = String::with_capacity((depth - 1) * (open.len() + close.len()) + 32);
    for _ in 1..depth {
        s.push_str(open);
    }
    s.push_str(r#"{"stringValue":"x"}"#);
    for _ in 1..depth {
        s.push_str(close);
    }
    s
}

/// A JSON span with an extra attribute "deep" nested `depth` AnyValues deep.
fn json_deep_span(name: &str, depth: usize) -> String {
    let (t, s) = fresh_ids();
    let extra = format!(
        r#",{{"key":"deep","value":{}}}"#,
        deep_any_value_json(depth)
    );
    json_span(name, &hex::encode(t), &hex::encode(s), &extra)
}

fn gzip_fast(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// Runs `c` over `input` with `flush` until all input is consumed and the flush is complete.
fn deflate_chunk(c: &mut flate2::Compress, input: &[u8], flush: flate2::FlushCompress) -> Vec<u8> {
    let mut out: Vec<u8> = Vec::with_capacity(input.len() / 512 + 4096);
    let start = c.total_in();
    loop {
        if out.capacity() - out.len() < 4096 {
            out.reserve(64 * 1024);
        }
        let consumed = (c.total_in() - start) as usize;
        let st = c
            .compress_vec(&input[consumed..], &mut out, flush)
            .expect("deflate");
        let consumed = (c.total_in() - start) as usize;
        if st == flate2::Status::StreamEnd
            || (consumed == input.len() && out.len() < out.capacity())
        {
            return out;
        }
    }
}

/// A single, valid gzip stream of `chunks * 8 MiB` zeros (1 GiB for 128 chunks, ~1 MiB).
///
/// Compressing 1 GiB takes seconds in debug builds, so one 8 MiB chunk is compressed and ended
/// with a full flush (byte-aligned, history reset); the next chunk then compresses to the same
/// bytes, which are repeated. CRC and length trailers are exact.
fn gzip_bomb(chunks: usize) -> Vec<u8> {
    const CHUNK: usize = 8 << 20;
    let zeros = vec![0u8; CHUNK];
    let mut c = flate2::Compress::new(flate2::Compression::best(), false);
    let first = deflate_chunk(&mut c, &zeros, flate2::FlushCompress::Full);
    let second = deflate_chunk(&mut c, &zeros, flate2::FlushCompress::Full);
    let third = deflate_chunk(&mut c, &zeros, flate2::FlushCompress::Full);
    assert_eq!(
        second, third,
        "full-flushed deflate chunks of zeros are not identical"
    );
    let tail = deflate_chunk(&mut c, &[], flate2::FlushCompress::Finish);
    let mut gz = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    gz.extend_from_slice(&first);
    for _ in 1..chunks {
        gz.extend_from_slice(&second);
    }
    gz.extend_from_slice(&tail);
    let mut crc = flate2::Crc::new();
    for _ in 0..chunks {
        crc.update(&zeros);
    }
    gz.extend_from_slice(&crc.sum().to_le_bytes());
    gz.extend_from_slice(&((chunks * CHUNK) as u32).to_le_bytes());
    gz
}

/// A single zstd frame of 1 GiB zeros (~32 KiB).
fn zstd_bomb() -> Vec<u8> {
    let zeros = vec![0u8; 1 << 20];
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 1).expect("zstd encoder");
    for _ in 0..1024 {
        enc.write_all(&zeros).unwrap();
    }
    enc.finish().unwrap()
}

// ---------------------------------------------------------------------------------------------
// HTTP helpers
// ---------------------------------------------------------------------------------------------

struct Http {
    client: reqwest::blocking::Client,
    traces: String,
    base: String,
    key: String,
}

impl Http {
    fn new(gw: &Gateway, key: &str) -> Http {
        Http {
            client: common::http_client_with_timeout(REQ_TIMEOUT),
            traces: gw.traces_url(),
            base: gw.http_url(),
            key: key.to_string(),
        }
    }

    fn bearer(&self) -> String {
        format!("Bearer {}", self.key)
    }

    /// POST to /v1/traces with an explicit header set (no implicit auth).
    fn post_raw(
        &self,
        l: &mut Ledger,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Option<HttpResponse> {
        self.post_url(l, &self.traces, headers, body)
    }

    fn post_url(
        &self,
        l: &mut Ledger,
        url: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Option<HttpResponse> {
        match common::try_post(&self.client, url, headers, body) {
            Ok(r) => Some(r),
            Err(e) => {
                l.fail(format!("POST {url}: transport error: {e:?}"));
                None
            }
        }
    }

    /// POST with valid auth and the given content type (+ optional content encoding).
    fn post(
        &self,
        l: &mut Ledger,
        content_type: &str,
        encoding: Option<&str>,
        body: Vec<u8>,
    ) -> Option<HttpResponse> {
        let auth = self.bearer();
        let mut h = vec![
            ("content-type", content_type),
            ("authorization", auth.as_str()),
        ];
        if let Some(e) = encoding {
            h.push(("content-encoding", e));
        }
        self.post_raw(l, &h, body)
    }

    fn pb(&self, l: &mut Ledger, body: Vec<u8>) -> Option<HttpResponse> {
        self.post(l, PB, None, body)
    }

    fn json(&self, l: &mut Ledger, body: Vec<u8>) -> Option<HttpResponse> {
        self.post(l, JSON, None, body)
    }
}

fn content_type(resp: &HttpResponse) -> String {
    resp.1
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

fn body_preview(body: &[u8]) -> String {
    let n = body.len().min(300);
    format!("{:?}", String::from_utf8_lossy(&body[..n]))
}

/// Asserts the status; returns whether it matched.
fn expect_status(l: &mut Ledger, resp: &Option<HttpResponse>, want: u16) -> bool {
    match resp {
        None => false,
        Some(r) => l.check(r.0 == want, || {
            format!(
                "expected HTTP {want}, got {} (content-type {:?}, body {})",
                r.0,
                content_type(r),
                body_preview(&r.2)
            )
        }),
    }
}

/// 200, protobuf ExportTraceServiceResponse with partial_success unset.
fn expect_pb_ok(l: &mut Ledger, resp: &Option<HttpResponse>) -> bool {
    if !expect_status(l, resp, 200) {
        return false;
    }
    let r = resp.as_ref().unwrap();
    let ct = content_type(r);
    let mut ok = l.check(ct.starts_with(PB), || {
        format!("200 response content-type {ct:?}, want {PB}")
    });
    match ExportTraceServiceResponse::decode(&r.2[..]) {
        Ok(m) => {
            ok &= l.check(m.partial_success.is_none(), || {
                format!(
                    "partial_success set on full success: {:?}",
                    m.partial_success
                )
            })
        }
        Err(e) => {
            l.fail(format!(
                "200 body is not an ExportTraceServiceResponse: {e}"
            ));
            ok = false;
        }
    }
    ok
}

/// 200, protobuf response with partial_success.rejected_spans == n and a non-empty message.
fn expect_pb_partial(l: &mut Ledger, resp: &Option<HttpResponse>, n: i64) -> bool {
    if !expect_status(l, resp, 200) {
        return false;
    }
    let r = resp.as_ref().unwrap();
    let ct = content_type(r);
    let mut ok = l.check(ct.starts_with(PB), || {
        format!("200 response content-type {ct:?}, want {PB}")
    });
    match ExportTraceServiceResponse::decode(&r.2[..]) {
        Ok(m) => {
            ok &= check_partial(
                l,
                m.partial_success
                    .as_ref()
                    .map(|p| (p.rejected_spans, p.error_message.clone())),
                n,
            )
        }
        Err(e) => {
            l.fail(format!(
                "200 body is not an ExportTraceServiceResponse: {e}"
            ));
            ok = false;
        }
    }
    ok
}

fn check_partial(l: &mut Ledger, partial: Option<(i64, String)>, n: i64) -> bool {
    match partial {
        None => {
            l.fail(format!("partial_success unset, want rejected_spans={n}"));
            false
        }
        Some((rejected, msg)) => {
            let a = l.check(rejected == n, || {
                format!("partial_success.rejected_spans={rejected}, want {n} (message {msg:?})")
            });
            let b = l.check(!msg.is_empty(), || {
                "partial_success.error_message is empty".to_string()
            });
            a && b
        }
    }
}

/// 400 with a protobuf google.rpc.Status body (code 3, non-empty message).
fn expect_pb_invalid(l: &mut Ledger, resp: &Option<HttpResponse>) -> bool {
    if !expect_status(l, resp, 400) {
        return false;
    }
    let r = resp.as_ref().unwrap();
    let ct = content_type(r);
    let mut ok = l.check(ct.starts_with(PB), || {
        format!("400 response content-type {ct:?}, want {PB}")
    });
    match RpcStatus::decode(&r.2[..]) {
        Ok(s) => {
            eprintln!("[bad_input {}] [{}] 400 {s:?}", l.test, l.current);
            ok &= l.check(!s.message.is_empty(), || {
                format!("400 google.rpc.Status has an empty message: {s:?}")
            });
            ok &= l.check(s.code == 3, || {
                format!(
                    "400 google.rpc.Status code {}, want 3 (message {:?})",
                    s.code, s.message
                )
            });
        }
        Err(e) => {
            l.fail(format!(
                "400 body is not a google.rpc.Status ({e}): {}",
                body_preview(&r.2)
            ));
            ok = false;
        }
    }
    ok
}

fn json_body(l: &mut Ledger, r: &HttpResponse) -> Option<serde_json::Value> {
    let ct = content_type(r);
    l.check(ct.starts_with(JSON), || {
        format!("{} response content-type {ct:?}, want {JSON}", r.0)
    });
    match serde_json::from_slice::<serde_json::Value>(&r.2) {
        Ok(v) => Some(v),
        Err(e) => {
            l.fail(format!(
                "{} body is not JSON ({e}): {}",
                r.0,
                body_preview(&r.2)
            ));
            None
        }
    }
}

/// 400 with a JSON google.rpc.Status body `{"code":3,"message":"..."}`.
fn expect_json_invalid(l: &mut Ledger, resp: &Option<HttpResponse>) -> bool {
    if !expect_status(l, resp, 400) {
        return false;
    }
    let r = resp.as_ref().unwrap();
    let Some(v) = json_body(l, r) else {
        return false;
    };
    eprintln!("[bad_input {}] [{}] 400 {v}", l.test, l.current);
    let code_ok = l.check(v["code"].as_i64() == Some(3), || {
        format!("400 JSON body code {}, want 3: {v}", v["code"])
    });
    let msg_ok = l.check(v["message"].as_str().is_some_and(|m| !m.is_empty()), || {
        format!("400 JSON body lacks a non-empty message: {v}")
    });
    code_ok && msg_ok
}

/// 200 JSON ExportTraceServiceResponse without partialSuccess.
fn expect_json_ok(l: &mut Ledger, resp: &Option<HttpResponse>) -> bool {
    if !expect_status(l, resp, 200) {
        return false;
    }
    let r = resp.as_ref().unwrap();
    let Some(v) = json_body(l, r) else {
        return false;
    };
    l.check(v.is_object(), || {
        format!("200 JSON body is not an object: {v}")
    }) && l.check(v.get("partialSuccess").is_none_or(|p| p.is_null()), || {
        format!("partialSuccess set on full success: {v}")
    })
}

fn json_int(v: &serde_json::Value) -> Option<i64> {
    v.as_i64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}

/// 200 JSON response with partialSuccess.rejectedSpans == n (number or int64 string).
fn expect_json_partial(l: &mut Ledger, resp: &Option<HttpResponse>, n: i64) -> bool {
    if !expect_status(l, resp, 200) {
        return false;
    }
    let r = resp.as_ref().unwrap();
    let Some(v) = json_body(l, r) else {
        return false;
    };
    let p = &v["partialSuccess"];
    if p.is_null() {
        l.fail(format!(
            "partialSuccess missing, want rejectedSpans={n}: {v}"
        ));
        return false;
    }
    let rejected = json_int(&p["rejectedSpans"]).unwrap_or(-1);
    let msg = p["errorMessage"].as_str().unwrap_or("").to_string();
    check_partial(l, Some((rejected, msg)), n)
}

/// Server still answers a valid request with 200 (used after hostile inputs).
fn check_alive(l: &mut Ledger, gw: &mut Gateway, h: &Http, what: &str) {
    let running = gw.is_running();
    if !l.check(running, || format!("gateway process exited after {what}")) {
        return;
    }
    let name = l.marker(&format!("alive-after-{what}"), true);
    let resp = h.pb(l, pb_request(vec![good_span(&name)]));
    if !l.check(resp.as_ref().is_some_and(|r| r.0 == 200), || {
        format!(
            "valid request after {what} not answered 200: {:?}",
            resp.as_ref().map(|r| r.0)
        )
    }) {
        l.unexpect_stored(&[name]);
    }
}

// ---------------------------------------------------------------------------------------------
// gRPC (raw HTTP/2 via h2, so malformed and oversize messages can be sent)
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Default)]
struct GrpcReply {
    http_status: u16,
    grpc_status: Option<i32>,
    grpc_message: String,
    details: Option<RpcStatus>,
    details_error: Option<String>,
    messages: Vec<Vec<u8>>,
}

impl GrpcReply {
    fn has_retry_info(&self) -> bool {
        self.details.as_ref().is_some_and(|d| {
            d.details
                .iter()
                .any(|a| a.type_url.ends_with("google.rpc.RetryInfo"))
        })
    }
}

/// gRPC length-prefixed message.
fn grpc_frame(compressed: bool, msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(msg.len() + 5);
    out.push(u8::from(compressed));
    out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    out.extend_from_slice(msg);
    out
}

async fn send_body(mut stream: h2::SendStream<Bytes>, body: Vec<u8>) {
    let mut body = Bytes::from(body);
    while !body.is_empty() {
        stream.reserve_capacity(body.len().min(1 << 20));
        let cap = match std::future::poll_fn(|cx| stream.poll_capacity(cx)).await {
            Some(Ok(n)) => n,
            // Stream reset / closed by the server (e.g. it answered early): stop sending.
            _ => return,
        };
        if cap == 0 {
            continue;
        }
        let chunk = body.split_to(cap.min(body.len()));
        if stream.send_data(chunk, false).is_err() {
            return;
        }
    }
    let _ = stream.send_data(Bytes::new(), true);
}

fn header_str(map: &http::HeaderMap, name: &str) -> Option<String> {
    map.get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

async fn grpc_call_inner(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<GrpcReply, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let (client, conn) = h2::client::Builder::new()
        .initial_window_size(4 << 20)
        .initial_connection_window_size(8 << 20)
        .handshake::<_, Bytes>(tcp)
        .await
        .map_err(|e| format!("h2 handshake: {e}"))?;
    let conn_task = tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut client = client.ready().await.map_err(|e| format!("h2 ready: {e}"))?;
    let mut rb = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    let req = rb.body(()).map_err(|e| format!("build request: {e}"))?;
    let (resp_fut, stream) = client
        .send_request(req, false)
        .map_err(|e| format!("send_request: {e}"))?;
    let sender = tokio::spawn(send_body(stream, body));
    let result = async {
        let resp = resp_fut
            .await
            .map_err(|e| format!("response headers: {e}"))?;
        let (parts, mut recv) = resp.into_parts();
        let mut data = Vec::new();
        while let Some(chunk) = recv.data().await {
            let chunk = chunk.map_err(|e| format!("response body: {e}"))?;
            let _ = recv.flow_control().release_capacity(chunk.len());
            data.extend_from_slice(&chunk);
        }
        let trailers = recv
            .trailers()
            .await
            .map_err(|e| format!("response trailers: {e}"))?
            .unwrap_or_default();
        let get =
            |name: &str| header_str(&trailers, name).or_else(|| header_str(&parts.headers, name));
        let mut reply = GrpcReply {
            http_status: parts.status.as_u16(),
            grpc_status: get("grpc-status").and_then(|s| s.trim().parse().ok()),
            grpc_message: get("grpc-message").unwrap_or_default(),
            ..Default::default()
        };
        if let Some(d) = get("grpc-status-details-bin") {
            let engine = base64::engine::general_purpose::STANDARD_NO_PAD;
            match engine.decode(d.trim().trim_end_matches('=')) {
                Ok(raw) => match RpcStatus::decode(&raw[..]) {
                    Ok(s) => reply.details = Some(s),
                    Err(e) => reply.details_error = Some(format!("not a google.rpc.Status: {e}")),
                },
                Err(e) => reply.details_error = Some(format!("bad base64: {e}")),
            }
        }
        let mut rest = &data[..];
        while rest.len() >= 5 {
            let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
            if rest.len() < 5 + len {
                break;
            }
            reply.messages.push(rest[5..5 + len].to_vec());
            rest = &rest[5 + len..];
        }
        Ok(reply)
    }
    .await;
    sender.abort();
    conn_task.abort();
    result
}

struct Grpc {
    rt: tokio::runtime::Runtime,
    addr: SocketAddr,
    key: String,
}

impl Grpc {
    fn new(gw: &Gateway, key: &str) -> Grpc {
        Grpc {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime"),
            addr: gw.grpc,
            key: key.to_string(),
        }
    }

    fn call_raw(
        &self,
        l: &mut Ledger,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Option<GrpcReply> {
        let fut = async {
            tokio::time::timeout(
                GRPC_TIMEOUT,
                grpc_call_inner(self.addr, path, headers, body),
            )
            .await
        };
        match self.rt.block_on(fut) {
            Ok(Ok(r)) => Some(r),
            Ok(Err(e)) => {
                l.fail(format!("gRPC {path}: {e}"));
                None
            }
            Err(_) => {
                l.fail(format!("gRPC {path}: no answer within {GRPC_TIMEOUT:?}"));
                None
            }
        }
    }

    /// Export with valid auth; `encoding` sets grpc-encoding (then `message` must already be
    /// compressed and the frame is flagged compressed).
    fn export(&self, l: &mut Ledger, message: &[u8], encoding: Option<&str>) -> Option<GrpcReply> {
        let auth = format!("Bearer {}", self.key);
        let mut h = vec![("authorization", auth.as_str())];
        if let Some(e) = encoding {
            h.push(("grpc-encoding", e));
        }
        self.call_raw(l, EXPORT_PATH, &h, grpc_frame(encoding.is_some(), message))
    }
}

fn expect_grpc(l: &mut Ledger, reply: &Option<GrpcReply>, code: i32) -> bool {
    match reply {
        None => false,
        Some(r) => l.check(r.grpc_status == Some(code), || {
            format!(
                "expected grpc-status {code}, got {:?} (HTTP {}, grpc-message {:?})",
                r.grpc_status, r.http_status, r.grpc_message
            )
        }),
    }
}

/// OK with one ExportTraceServiceResponse; checks partial_success (None = must be unset).
fn expect_grpc_ok(l: &mut Ledger, reply: &Option<GrpcReply>, rejected: Option<i64>) -> bool {
    if !expect_grpc(l, reply, 0) {
        return false;
    }
    let r = reply.as_ref().unwrap();
    let Some(msg) = r.messages.first() else {
        l.fail("OK without a response message");
        return false;
    };
    match ExportTraceServiceResponse::decode(&msg[..]) {
        Ok(m) => match rejected {
            None => l.check(m.partial_success.is_none(), || {
                format!(
                    "partial_success set on full success: {:?}",
                    m.partial_success
                )
            }),
            Some(n) => check_partial(
                l,
                m.partial_success
                    .map(|p| (p.rejected_spans, p.error_message)),
                n,
            ),
        },
        Err(e) => {
            l.fail(format!(
                "response message is not an ExportTraceServiceResponse: {e}"
            ));
            false
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Archive checks
// ---------------------------------------------------------------------------------------------

/// Waits until every `stored` marker is archived, then checks that none of `rejected` is.
/// Returns the final archive snapshot.
fn verify_archive(l: &mut Ledger, gw: &Gateway) -> Vec<serde_json::Value> {
    l.begin("archive");
    let deadline = Instant::now() + ARCHIVE_WAIT;
    let mut records;
    loop {
        records = gw.archive_spans(None);
        let names: BTreeSet<String> = common::span_names(&records).into_iter().collect();
        let missing: Vec<&String> = l.stored.iter().filter(|n| !names.contains(*n)).collect();
        if missing.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            let msg = format!(
                "accepted spans missing from the archive after {ARCHIVE_WAIT:?}: {missing:?}"
            );
            l.fail(msg);
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // Let any straggling writes land before looking for rejected spans.
    std::thread::sleep(Duration::from_millis(300));
    records = gw.archive_spans(None);
    let names: BTreeSet<String> = common::span_names(&records).into_iter().collect();
    let leaked: Vec<String> = l
        .rejected
        .iter()
        .filter(|n| names.contains(*n))
        .cloned()
        .collect();
    l.check(leaked.is_empty(), || {
        format!("rejected spans were stored in the archive: {leaked:?}")
    });
    eprintln!(
        "[bad_input {}] archive: {} records, {} expected stored, {} expected absent",
        l.test,
        records.len(),
        l.stored.len(),
        l.rejected.len()
    );
    records
}

fn rss_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

// ---------------------------------------------------------------------------------------------
// Test 1: default limits — the bulk of the HTTP and gRPC cases
// ---------------------------------------------------------------------------------------------

#[test]
fn default_limits() {
    let mut gw = Gateway::start(&[("TRACEGATE_WRITER__MAX_WAIT_MS", "10")]);
    let key = gw.create_key("alpha");
    let _key_b = gw.create_key("beta");
    // A real, well-formed key minted in another data dir: unknown to this gateway.
    let foreign = tempfile::tempdir().expect("tempdir");
    let foreign_key = common::create_key_in(foreign.path(), "alpha");
    let h = Http::new(&gw, &key);
    let g = Grpc::new(&gw, &key);
    let mut l = Ledger::new("default_limits");

    // --- baselines: the valid path works and answers in the request's encoding ----------------
    l.begin("http_valid_pb");
    let baseline = l.marker("ok", true);
    let r = h.pb(&mut l, pb_request(vec![good_span(&baseline)]));
    expect_pb_ok(&mut l, &r);

    l.begin("http_valid_json");
    let n = l.marker("ok", true);
    let r = h.json(&mut l, json_request(&[json_good_span(&n)]));
    expect_json_ok(&mut l, &r);

    // --- content type / encoding -------------------------------------------------------------
    l.begin("http_content_type_text_plain_415");
    let n = l.marker("rej", false);
    let r = h.post(&mut l, "text/plain", None, pb_request(vec![good_span(&n)]));
    expect_status(&mut l, &r, 415);

    l.begin("http_content_encoding_br_415");
    let n = l.marker("rej", false);
    // The body is really gzip, labelled br: must be refused for the label alone.
    let body = common::gzip(&pb_request(vec![good_span(&n)]));
    let r = h.post(&mut l, PB, Some("br"), body);
    expect_status(&mut l, &r, 415);

    l.begin("http_content_encoding_unknown_415");
    let n = l.marker("rej", false);
    let r = h.post(
        &mut l,
        PB,
        Some("x-snappy-framed"),
        pb_request(vec![good_span(&n)]),
    );
    expect_status(&mut l, &r, 415);

    // --- malformed protobuf / JSON -------------------------------------------------------------
    l.begin("http_pb_truncated_400");
    let n1 = l.marker("rej-a", false);
    let n2 = l.marker("rej-b", false);
    let full = pb_request(vec![good_span(&n1), good_span(&n2)]);
    let r = h.pb(&mut l, full[..full.len() - 7].to_vec());
    expect_pb_invalid(&mut l, &r);

    l.begin("http_pb_garbage_400");
    let r = h.pb(&mut l, vec![0xff; 64]);
    expect_pb_invalid(&mut l, &r);

    l.begin("http_pb_garbage_gzip_400");
    let r = h.post(&mut l, PB, Some("gzip"), common::gzip(&[0xff; 4096]));
    expect_pb_invalid(&mut l, &r);

    l.begin("http_json_invalid_400");
    let n = l.marker("rej", false);
    let mut body = json_request(&[json_good_span(&n)]);
    body.truncate(body.len() - 5);
    let r = h.json(&mut l, body);
    expect_json_invalid(&mut l, &r);

    l.begin("http_json_not_json_400");
    let r = h.json(&mut l, b"\x00\x01 this is not json".to_vec());
    expect_json_invalid(&mut l, &r);

    l.begin("http_json_base64_ids_400");
    let n_ok = l.marker("rej-hex-sibling", false);
    let n_b64 = l.marker("rej-b64", false);
    let (t, s) = fresh_ids();
    let b64 = base64::engine::general_purpose::STANDARD;
    let spans = [
        json_good_span(&n_ok),
        json_span(&n_b64, &b64.encode(&t), &b64.encode(&s), ""),
    ];
    let r = h.json(&mut l, json_request(&spans));
    expect_json_invalid(&mut l, &r);

    // --- invalid ids: partial success, valid sibling stored ------------------------------------
    let bad_ids: [(&str, usize, usize); 6] = [
        ("http_pb_trace_id_15_bytes_partial", 15, 8),
        ("http_pb_trace_id_17_bytes_partial", 17, 8),
        ("http_pb_span_id_7_bytes_partial", 16, 7),
        ("http_pb_span_id_9_bytes_partial", 16, 9),
        ("http_pb_trace_id_zero_partial", 0, 8),
        ("http_pb_span_id_zero_partial", 16, 0),
    ];
    for (case, tlen, slen) in bad_ids {
        l.begin(case);
        let ok = l.marker("ok", true);
        let bad = l.marker("rej", false);
        let (mut t, mut s) = fresh_ids();
        match tlen {
            0 => t = vec![0; 16],
            16 => {}
            n => {
                t = (0..n as u8)
                    .map(|i| i.wrapping_mul(37).wrapping_add(1))
                    .collect()
            }
        }
        match slen {
            0 => s = vec![0; 8],
            8 => {}
            n => {
                s = (0..n as u8)
                    .map(|i| i.wrapping_mul(53).wrapping_add(3))
                    .collect()
            }
        }
        let r = h.pb(
            &mut l,
            pb_request(vec![good_span(&ok), span_with_ids(&bad, t, s)]),
        );
        if !expect_pb_partial(&mut l, &r, 1) && r.as_ref().is_none_or(|r| r.0 != 200) {
            l.unexpect_stored(&[ok]);
        }
    }

    l.begin("http_json_trace_id_zero_partial");
    let ok = l.marker("ok", true);
    let bad = l.marker("rej", false);
    let (_, s) = fresh_ids();
    let spans = [
        json_good_span(&ok),
        json_span(&bad, &"0".repeat(32), &hex::encode(s), ""),
    ];
    let r = h.json(&mut l, json_request(&spans));
    if !expect_json_partial(&mut l, &r, 1) && r.as_ref().is_none_or(|r| r.0 != 200) {
        l.unexpect_stored(&[ok]);
    }

    l.begin("http_json_trace_id_15_bytes_partial");
    let ok = l.marker("ok", true);
    let bad = l.marker("rej", false);
    let (t, s) = fresh_ids();
    let spans = [
        json_good_span(&ok),
        json_span(&bad, &hex::encode(&t[..15]), &hex::encode(s), ""),
    ];
    let r = h.json(&mut l, json_request(&spans));
    if !expect_json_partial(&mut l, &r, 1) && r.as_ref().is_none_or(|r| r.0 != 200) {
        l.unexpect_stored(&[ok]);
    }

    // --- AnyValue nesting ----------------------------------------------------------------------
    l.begin("http_pb_depth_40_partial");
    let ok = l.marker("ok", true);
    let bad = l.marker("rej", false);
    let raw = span_with_raw_attr(&good_span(&bad), "deep", &deep_any_value_pb(40));
    let r = h.pb(&mut l, pb_request_raw(vec![good_span(&ok)], &[raw]));
    if !expect_pb_partial(&mut l, &r, 1) && r.as_ref().is_none_or(|r| r.0 != 200) {
        l.unexpect_stored(&[ok]);
    }

    l.begin("http_json_depth_40_partial");
    let ok = l.marker("ok", true);
    let bad = l.marker("rej", false);
    let spans = [json_good_span(&ok), json_deep_span(&bad, 40)];
    let r = h.json(&mut l, json_request(&spans));
    if !expect_json_partial(&mut l, &r, 1) && r.as_ref().is_none_or(|r| r.0 != 200) {
        l.unexpect_stored(&[ok]);
    }

    // Deeper than prost can decode: the deep span alone is rejected, its sibling is kept.
    l.begin("http_pb_depth_200_partial");
    let ok = l.marker("ok", true);
    let bad = l.marker("rej", false);
    let raw = span_with_raw_attr(&good_span(&bad), "deep", &deep_any_value_pb(200));
    let r = h.pb(&mut l, pb_request_raw(vec![good_span(&ok)], &[raw]));
    if !expect_pb_partial(&mut l, &r, 1) && r.as_ref().is_none_or(|r| r.0 != 200) {
        l.unexpect_stored(&[ok]);
    }

    l.begin("http_json_depth_200_400");
    let sib = l.marker("rej-sibling", false);
    let bad = l.marker("rej", false);
    let spans = [json_good_span(&sib), json_deep_span(&bad, 200)];
    let r = h.json(&mut l, json_request(&spans));
    expect_json_invalid(&mut l, &r);

    l.begin("http_pb_depth_100000_partial");
    let ok = l.marker("ok", true);
    let bad = l.marker("rej", false);
    let raw = span_with_raw_attr(&good_span(&bad), "deep", &deep_any_value_pb(100_000));
    let r = h.pb(&mut l, pb_request_raw(vec![good_span(&ok)], &[raw]));
    if !expect_pb_partial(&mut l, &r, 1) && r.as_ref().is_none_or(|r| r.0 != 200) {
        l.unexpect_stored(&[ok]);
    }
    check_alive(&mut l, &mut gw, &h, "pb-depth-100000");

    l.begin("http_json_depth_100000_400");
    let sib = l.marker("rej-sibling", false);
    let bad = l.marker("rej", false);
    let spans = [json_good_span(&sib), json_deep_span(&bad, 100_000)];
    let r = h.json(&mut l, json_request(&spans));
    expect_json_invalid(&mut l, &r);
    check_alive(&mut l, &mut gw, &h, "json-depth-100000");

    // --- too many attributes -------------------------------------------------------------------
    l.begin("http_pb_10000_attributes_partial");
    let ok = l.marker("ok", true);
    let bad = l.marker("rej", false);
    let mut big = good_span(&bad);
    big.attributes = (0..10_000)
        .map(|i| common::kv_str(&format!("attr.{i}"), "v"))
        .collect();
    let r = h.pb(&mut l, pb_request(vec![good_span(&ok), big]));
    if !expect_pb_partial(&mut l, &r, 1) && r.as_ref().is_none_or(|r| r.0 != 200) {
        l.unexpect_stored(&[ok]);
    }

    // --- auth ----------------------------------------------------------------------------------
    l.begin("http_missing_key_401");
    let n = l.marker("rej", false);
    let r = h.post_raw(
        &mut l,
        &[("content-type", PB)],
        pb_request(vec![good_span(&n)]),
    );
    expect_status(&mut l, &r, 401);

    l.begin("http_unknown_key_401");
    let n = l.marker("rej", false);
    let auth = format!("Bearer {foreign_key}");
    let r = h.post_raw(
        &mut l,
        &[("content-type", PB), ("authorization", &auth)],
        pb_request(vec![good_span(&n)]),
    );
    expect_status(&mut l, &r, 401);

    l.begin("http_unknown_key_x_api_key_401");
    let n = l.marker("rej", false);
    let r = h.post_raw(
        &mut l,
        &[("content-type", PB), ("x-api-key", &foreign_key)],
        pb_request(vec![good_span(&n)]),
    );
    expect_status(&mut l, &r, 401);

    l.begin("http_garbage_key_401");
    let n = l.marker("rej", false);
    let r = h.post_raw(
        &mut l,
        &[
            ("content-type", PB),
            ("authorization", "Bearer !!not-a-key%%"),
        ],
        pb_request(vec![good_span(&n)]),
    );
    expect_status(&mut l, &r, 401);

    l.begin("http_garbage_x_api_key_401");
    let n = l.marker("rej", false);
    let r = h.post_raw(
        &mut l,
        &[("content-type", JSON), ("x-api-key", "x")],
        json_request(&[json_good_span(&n)]),
    );
    expect_status(&mut l, &r, 401);

    l.begin("http_basic_auth_scheme_401");
    let n = l.marker("rej", false);
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("user:{key}"))
    );
    let r = h.post_raw(
        &mut l,
        &[("content-type", PB), ("authorization", &basic)],
        pb_request(vec![good_span(&n)]),
    );
    expect_status(&mut l, &r, 401);

    l.begin("http_empty_bearer_401");
    let n = l.marker("rej", false);
    let r = h.post_raw(
        &mut l,
        &[("content-type", PB), ("authorization", "Bearer ")],
        pb_request(vec![good_span(&n)]),
    );
    expect_status(&mut l, &r, 401);

    // --- project spoofing ----------------------------------------------------------------------
    let spoof_attrs = || {
        vec![
            common::kv_str("service.name", "spoofer"),
            common::kv_str("tracegate.project_id", "beta"),
            common::kv_str("tracegate.project", "beta"),
            common::kv_str("project", "beta"),
            common::kv_str("project_id", "beta"),
        ]
    };
    let spoof_request = |names: &[&String]| {
        let mut req: ExportTraceServiceRequest =
            common::request_with_spans(names.iter().map(|n| good_span(n)).collect());
        req.resource_spans[0].resource = Some(Resource {
            attributes: spoof_attrs(),
            ..Default::default()
        });
        for s in &mut req.resource_spans[0].scope_spans[0].spans {
            s.attributes
                .push(common::kv_str("tracegate.project_id", "beta"));
        }
        req
    };
    let mut spoofed: Vec<String> = Vec::new();
    l.begin("http_spoof_project_attrs_pb");
    let n1 = l.marker("spoof-a", true);
    let n2 = l.marker("spoof-b", true);
    let r = h.pb(&mut l, spoof_request(&[&n1, &n2]).encode_to_vec());
    if expect_pb_ok(&mut l, &r) {
        spoofed.extend([n1, n2]);
    } else {
        l.unexpect_stored(&[n1, n2]);
    }

    l.begin("http_spoof_project_attrs_json");
    let n1 = l.marker("spoof", true);
    let r = h.json(&mut l, common::encode_json(&spoof_request(&[&n1])));
    if expect_json_ok(&mut l, &r) {
        spoofed.push(n1);
    } else {
        l.unexpect_stored(&[n1]);
    }

    // --- empty requests ------------------------------------------------------------------------
    l.begin("http_empty_pb_200");
    let r = h.pb(&mut l, Vec::new());
    expect_pb_ok(&mut l, &r);

    l.begin("http_empty_json_object_200");
    let r = h.json(&mut l, b"{}".to_vec());
    expect_json_ok(&mut l, &r);

    // --- method / path -------------------------------------------------------------------------
    l.begin("http_get_traces_405");
    match h
        .client
        .get(&h.traces)
        .header("authorization", h.bearer())
        .send()
    {
        Ok(resp) => {
            let st = resp.status().as_u16();
            l.check(st == 405, || {
                format!("GET /v1/traces: expected 405, got {st}")
            });
        }
        Err(e) => l.fail(format!("GET /v1/traces: transport error {e:?}")),
    }

    l.begin("http_put_traces_405");
    let n = l.marker("rej", false);
    match h
        .client
        .put(&h.traces)
        .header("authorization", h.bearer())
        .header("content-type", PB)
        .body(pb_request(vec![good_span(&n)]))
        .send()
    {
        Ok(resp) => {
            let st = resp.status().as_u16();
            l.check(st == 405, || {
                format!("PUT /v1/traces: expected 405, got {st}")
            });
        }
        Err(e) => l.fail(format!("PUT /v1/traces: transport error {e:?}")),
    }

    for (case, path) in [
        ("http_post_v1_profiles_404", "/v1development/profiles"),
        ("http_post_foo_404", "/foo"),
    ] {
        l.begin(case);
        let n = l.marker("rej", false);
        let auth = h.bearer();
        let url = format!("{}{path}", h.base);
        let r = h.post_url(
            &mut l,
            &url,
            &[("content-type", PB), ("authorization", &auth)],
            pb_request(vec![good_span(&n)]),
        );
        expect_status(&mut l, &r, 404);
    }

    // --- gRPC ----------------------------------------------------------------------------------
    l.begin("grpc_valid");
    let n = l.marker("ok", true);
    let r = g.export(&mut l, &pb_request(vec![good_span(&n)]), None);
    if !expect_grpc_ok(&mut l, &r, None) {
        l.unexpect_stored(&[n]);
    }

    l.begin("grpc_valid_gzip");
    let n = l.marker("ok", true);
    let r = g.export(
        &mut l,
        &common::gzip(&pb_request(vec![good_span(&n)])),
        Some("gzip"),
    );
    if !expect_grpc_ok(&mut l, &r, None) {
        l.unexpect_stored(&[n]);
    }

    l.begin("grpc_missing_key_16");
    let n = l.marker("rej", false);
    let r = g.call_raw(
        &mut l,
        EXPORT_PATH,
        &[],
        grpc_frame(false, &pb_request(vec![good_span(&n)])),
    );
    expect_grpc(&mut l, &r, 16);

    l.begin("grpc_unknown_key_16");
    let n = l.marker("rej", false);
    let auth = format!("Bearer {foreign_key}");
    let r = g.call_raw(
        &mut l,
        EXPORT_PATH,
        &[("authorization", &auth)],
        grpc_frame(false, &pb_request(vec![good_span(&n)])),
    );
    expect_grpc(&mut l, &r, 16);

    l.begin("grpc_garbage_key_16");
    let n = l.marker("rej", false);
    let r = g.call_raw(
        &mut l,
        EXPORT_PATH,
        &[("x-api-key", "garbage!")],
        grpc_frame(false, &pb_request(vec![good_span(&n)])),
    );
    expect_grpc(&mut l, &r, 16);

    l.begin("grpc_truncated_message_3");
    let n1 = l.marker("rej-a", false);
    let n2 = l.marker("rej-b", false);
    let full = pb_request(vec![good_span(&n1), good_span(&n2)]);
    let r = g.export(&mut l, &full[..full.len() - 7], None);
    expect_grpc(&mut l, &r, 3);

    l.begin("grpc_garbage_message_3");
    let r = g.export(&mut l, &[0xff; 64], None);
    expect_grpc(&mut l, &r, 3);

    l.begin("grpc_depth_200_partial");
    let ok = l.marker("ok", true);
    let bad = l.marker("rej", false);
    let raw = span_with_raw_attr(&good_span(&bad), "deep", &deep_any_value_pb(200));
    let r = g.export(&mut l, &pb_request_raw(vec![good_span(&ok)], &[raw]), None);
    if !expect_grpc_ok(&mut l, &r, Some(1)) {
        l.unexpect_stored(&[ok]);
    }

    l.begin("grpc_trace_id_15_bytes_partial");
    let ok = l.marker("ok", true);
    let bad = l.marker("rej", false);
    let (t, s) = fresh_ids();
    let req = pb_request(vec![
        good_span(&ok),
        span_with_ids(&bad, t[..15].to_vec(), s),
    ]);
    let r = g.export(&mut l, &req, None);
    if !expect_grpc_ok(&mut l, &r, Some(1)) && r.as_ref().is_none_or(|r| r.grpc_status != Some(0)) {
        l.unexpect_stored(&[ok]);
    }

    l.begin("grpc_span_id_zero_partial");
    let ok = l.marker("ok", true);
    let bad = l.marker("rej", false);
    let (t, _) = fresh_ids();
    let req = pb_request(vec![good_span(&ok), span_with_ids(&bad, t, vec![0; 8])]);
    let r = g.export(&mut l, &req, None);
    if !expect_grpc_ok(&mut l, &r, Some(1)) && r.as_ref().is_none_or(|r| r.grpc_status != Some(0)) {
        l.unexpect_stored(&[ok]);
    }

    l.begin("grpc_spoof_project_attrs");
    let n1 = l.marker("spoof", true);
    let r = g.export(&mut l, &spoof_request(&[&n1]).encode_to_vec(), None);
    if expect_grpc_ok(&mut l, &r, None) {
        spoofed.push(n1);
    } else {
        l.unexpect_stored(&[n1]);
    }

    for (case, path) in [
        (
            "grpc_unknown_method_12",
            "/opentelemetry.proto.collector.trace.v1.TraceService/NoSuchMethod",
        ),
        (
            "grpc_unknown_service_12",
            "/opentelemetry.proto.collector.profiles.v1development.ProfilesService/Export",
        ),
    ] {
        l.begin(case);
        let n = l.marker("rej", false);
        let auth = format!("Bearer {key}");
        let r = g.call_raw(
            &mut l,
            path,
            &[("authorization", &auth)],
            grpc_frame(false, &pb_request(vec![good_span(&n)])),
        );
        expect_grpc(&mut l, &r, 12);
    }

    check_alive(&mut l, &mut gw, &h, "all-cases");

    // --- archive -------------------------------------------------------------------------------
    let records = verify_archive(&mut l, &gw);
    l.begin("spoofed_spans_stored_under_key_project");
    let project_of = |name: &str| -> Vec<String> {
        records
            .iter()
            .filter(|r| r["span"]["name"].as_str() == Some(name))
            .map(|r| r["project_id"].as_str().unwrap_or("<none>").to_string())
            .collect()
    };
    let alpha = project_of(&baseline);
    if l.check(alpha.len() == 1, || {
        format!(
            "baseline span {baseline} archived {} times: {alpha:?}",
            alpha.len()
        )
    }) {
        let alpha = alpha[0].clone();
        l.check(alpha != "beta", || {
            format!("baseline span of key alpha archived under {alpha:?}")
        });
        for n in &spoofed {
            let p = project_of(n);
            l.check(!p.is_empty() && p.iter().all(|p| *p == alpha), || {
                format!(
                    "spoofed span {n} archived under {p:?}, want only the key's project {alpha:?}"
                )
            });
        }
    }
    let beta: Vec<String> = common::span_names(&gw.archive_spans(Some("beta")));
    let leaked: Vec<&String> = spoofed.iter().filter(|n| beta.contains(n)).collect();
    l.check(leaked.is_empty(), || {
        format!("spoofed spans listed by `archive cat --project beta`: {leaked:?}")
    });
    let alpha_names: Vec<String> = common::span_names(&gw.archive_spans(Some("alpha")));
    let missing: Vec<&String> = spoofed
        .iter()
        .filter(|n| !alpha_names.contains(n))
        .collect();
    l.check(missing.is_empty(), || {
        format!("spoofed spans missing from `archive cat --project alpha`: {missing:?}")
    });

    l.finish();
}

// ---------------------------------------------------------------------------------------------
// Test 2: max_request_bytes = 4 MiB — oversize bodies and compression bombs
// ---------------------------------------------------------------------------------------------

#[test]
fn oversize_and_bombs() {
    const LIMIT: usize = 4 << 20;
    let t0 = Instant::now();
    let gzip_1g = gzip_bomb(128);
    let zstd_1g = zstd_bomb();
    eprintln!(
        "[bad_input oversize_and_bombs] bombs: gzip {} bytes, zstd {} bytes, built in {:?}",
        gzip_1g.len(),
        zstd_1g.len(),
        t0.elapsed()
    );

    let limit = LIMIT.to_string();
    let mut gw = Gateway::start(&[
        ("TRACEGATE_LIMITS__MAX_REQUEST_BYTES", limit.as_str()),
        ("TRACEGATE_WRITER__MAX_WAIT_MS", "10"),
    ]);
    let key = gw.create_key("alpha");
    let h = Http::new(&gw, &key);
    let g = Grpc::new(&gw, &key);
    let mut l = Ledger::new("oversize_and_bombs");
    let pid = gw.pid();

    l.begin("http_valid_gzip_200");
    let n = l.marker("ok", true);
    let r = h.post(
        &mut l,
        PB,
        Some("gzip"),
        common::gzip(&pb_request(vec![good_span(&n)])),
    );
    if !expect_pb_ok(&mut l, &r) {
        l.unexpect_stored(&[n]);
    }

    l.begin("http_gzip_bomb_1GiB_413");
    let r = h.post(&mut l, PB, Some("gzip"), gzip_1g.clone());
    expect_status(&mut l, &r, 413);

    l.begin("http_zstd_bomb_1GiB_413");
    let r = h.post(&mut l, PB, Some("zstd"), zstd_1g.clone());
    expect_status(&mut l, &r, 413);

    // A real request whose decompressed size (5 MiB) is over the limit, gzip'd to a few KiB.
    l.begin("http_gzip_real_request_over_limit_413");
    let n = l.marker("rej", false);
    let big = pb_request_of_size(&n, LIMIT + (1 << 20));
    let r = h.post(&mut l, PB, Some("gzip"), gzip_fast(&big));
    expect_status(&mut l, &r, 413);

    l.begin("http_json_gzip_bomb_413");
    let r = h.post(&mut l, JSON, Some("gzip"), gzip_1g.clone());
    expect_status(&mut l, &r, 413);

    for (case, chunked) in [
        ("http_oversize_plain_413", false),
        ("http_oversize_chunked_413", true),
    ] {
        l.begin(case);
        let n = l.marker("rej", false);
        match raw_post(gw.http, &key, pb_request_of_size(&n, LIMIT + 1024), chunked) {
            Ok((st, head)) => {
                l.check(st == 413, || {
                    format!("oversize body: expected 413, got {head:?}")
                });
            }
            Err(e) => l.fail(format!("oversize body: no HTTP response: {e}")),
        }
    }

    // The same through an ordinary HTTP client: the 413 must reach it (not a broken pipe or a
    // reset while it is still uploading the body). Up to 20 tries, as this depends on timing.
    l.begin("http_oversize_413_reaches_reqwest_client");
    for attempt in 0..20 {
        let n = l.marker(&format!("rej-{attempt}"), false);
        let r = h.pb(&mut l, pb_request_of_size(&n, LIMIT + 1024));
        if !expect_status(&mut l, &r, 413) {
            l.fail(format!("attempt {} of 20", attempt + 1));
            break;
        }
    }

    l.begin("grpc_oversize_8_no_retry_info");
    let n = l.marker("rej", false);
    let r = g.export(&mut l, &pb_request_of_size(&n, LIMIT + 1024), None);
    if expect_grpc(&mut l, &r, 8) {
        let r = r.as_ref().unwrap();
        l.check(!r.has_retry_info(), || {
            format!(
                "RESOURCE_EXHAUSTED for oversize carries RetryInfo: {:?}",
                r.details
            )
        });
    }

    l.begin("grpc_gzip_bomb_8");
    let r = g.export(&mut l, &gzip_1g, Some("gzip"));
    if expect_grpc(&mut l, &r, 8) {
        let r = r.as_ref().unwrap();
        l.check(!r.has_retry_info(), || {
            format!(
                "RESOURCE_EXHAUSTED for a bomb carries RetryInfo: {:?}",
                r.details
            )
        });
    }

    l.begin("grpc_zstd_bomb_8");
    let r = g.export(&mut l, &zstd_1g, Some("zstd"));
    expect_grpc(&mut l, &r, 8);

    l.begin("grpc_valid_after_bombs");
    let n = l.marker("ok", true);
    let r = g.export(
        &mut l,
        &common::gzip(&pb_request(vec![good_span(&n)])),
        Some("gzip"),
    );
    if !expect_grpc_ok(&mut l, &r, None) {
        l.unexpect_stored(&[n]);
    }

    l.begin("peak_rss_under_200MiB");
    let hwm = rss_kib(pid, "VmHWM:");
    eprintln!(
        "[bad_input oversize_and_bombs] gateway pid {pid}: VmHWM {hwm:?} KiB, VmRSS {:?} KiB",
        rss_kib(pid, "VmRSS:")
    );
    match hwm {
        Some(kib) => {
            l.check(kib < MAX_RSS_KIB, || {
                format!("gateway peak RSS (VmHWM) {kib} KiB >= {MAX_RSS_KIB} KiB after the bombs")
            });
        }
        None => l.fail(format!("could not read VmHWM from /proc/{pid}/status")),
    }

    check_alive(&mut l, &mut gw, &h, "bombs");
    verify_archive(&mut l, &gw);
    l.finish();
}

// ---------------------------------------------------------------------------------------------
// Test 3: in-flight overload — 503 + Retry-After / UNAVAILABLE + RetryInfo
// ---------------------------------------------------------------------------------------------

/// Current value of the `tracegate_inflight_bytes` gauge, if exported.
fn inflight_bytes(gw: &Gateway) -> Option<u64> {
    gw.metrics()
        .lines()
        .find(|l| l.starts_with("tracegate_inflight_bytes "))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
}

/// POSTs `body` to /v1/traces over a raw connection, with `Content-Length` or (`chunked`) with
/// `Transfer-Encoding: chunked`, writing from a second thread while the response head is read:
/// an early answer from the server is seen even if it never reads the body (a client such as
/// reqwest may instead fail on the write). Returns (status, head).
fn raw_post(
    addr: SocketAddr,
    key: &str,
    body: Vec<u8>,
    chunked: bool,
) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(REQ_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(REQ_TIMEOUT)).unwrap();
    let framing = if chunked {
        "Transfer-Encoding: chunked".to_string()
    } else {
        format!("Content-Length: {}", body.len())
    };
    let head = format!(
        "POST /v1/traces HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {PB}\r\n\
         Authorization: Bearer {key}\r\n{framing}\r\n\r\n"
    );
    s.write_all(head.as_bytes())
        .map_err(|e| format!("write head: {e}"))?;
    let mut w = s.try_clone().map_err(|e| format!("clone socket: {e}"))?;
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        if !chunked {
            return w.write_all(&body);
        }
        for chunk in body.chunks(64 * 1024) {
            w.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())?;
            w.write_all(chunk)?;
            w.write_all(b"\r\n")?;
        }
        w.write_all(b"0\r\n\r\n")
    });
    let r = read_response_head(&mut s);
    let _ = s.shutdown(std::net::Shutdown::Both);
    let _ = writer.join();
    r
}

/// Reads an HTTP/1.1 response head from `s`; returns (status, head text).
fn read_response_head(s: &mut TcpStream) -> Result<(u16, String), String> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(0) => return Err(format!("connection closed after {} bytes", buf.len())),
            Ok(n) => buf.extend_from_slice(&byte[..n]),
            Err(e) => return Err(format!("read: {e}")),
        }
        if buf.len() > 64 * 1024 {
            return Err("response head too long".into());
        }
    }
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line: {text:?}"))?;
    Ok((status, text))
}

#[test]
fn inflight_overload() {
    const LIMIT: usize = 64 * 1024;
    const HELD: usize = 60_000;
    let limit = LIMIT.to_string();
    let gw = Gateway::start(&[
        ("TRACEGATE_LIMITS__MAX_REQUEST_BYTES", limit.as_str()),
        ("TRACEGATE_LIMITS__MAX_INFLIGHT_BYTES", limit.as_str()),
        ("TRACEGATE_WRITER__MAX_WAIT_MS", "10"),
    ]);
    let key = gw.create_key("alpha");
    let other = gw.create_key("beta");
    let h = Http::new(&gw, &key);
    let h_other = Http::new(&gw, &other);
    let g_other = Grpc::new(&gw, &other);
    let g = Grpc::new(&gw, &key);
    let mut l = Ledger::new("inflight_overload");

    // Request 1 (project alpha): Content-Length 60000, all but the last 1000 bytes sent. Bytes
    // are charged as they arrive, so it holds the budget only once they have arrived.
    l.begin("held_request_completes_200");
    let held_name = l.marker("held", true);
    let held_body = pb_request_of_size(&held_name, HELD);
    let mut s = TcpStream::connect(gw.http).expect("connect");
    s.set_read_timeout(Some(REQ_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(REQ_TIMEOUT)).unwrap();
    let head = format!(
        "POST /v1/traces HTTP/1.1\r\nHost: {}\r\nContent-Type: {PB}\r\nAuthorization: Bearer {key}\r\nContent-Length: {HELD}\r\n\r\n",
        gw.http
    );
    s.write_all(head.as_bytes()).expect("write head");
    s.write_all(&held_body[..HELD - 1000])
        .expect("write most body bytes");
    s.flush().unwrap();
    // Wait until the server has read request 1's bytes and reserved them (the gauge is the only
    // outside view of that), so request 2 cannot race ahead of it.
    let reserved = common::wait_until(Duration::from_secs(5), || {
        inflight_bytes(&gw).is_some_and(|b| b >= (HELD - 1000) as u64)
    });
    if !reserved {
        eprintln!(
            "[bad_input inflight_overload] tracegate_inflight_bytes never reached {} \
             (gauge: {:?}); going on after the wait",
            HELD - 1000,
            inflight_bytes(&gw)
        );
    }
    s.set_nonblocking(true).unwrap();
    let mut early = [0u8; 512];
    match s.read(&mut early) {
        Ok(n) if n > 0 => l.fail(format!(
            "request 1 (Content-Length {HELD}, body still being sent) was answered early: {:?}",
            String::from_utf8_lossy(&early[..n])
        )),
        _ => {}
    }
    s.set_nonblocking(false).unwrap();

    // Request 2 (10 KB, project beta) while request 1 is in flight: 503 + Retry-After (the
    // gateway's capacity). The server may take a moment to read request 1's bytes, so poll
    // briefly; every attempt has its own marker.
    l.begin("http_overload_503_retry_after");
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut got_503 = false;
    let mut attempt = 0;
    while Instant::now() < deadline {
        attempt += 1;
        let name = l.marker(&format!("small-{attempt}"), false);
        let r = h_other.pb(&mut l, pb_request_of_size(&name, 10_000));
        let Some(r) = r else { break };
        if r.0 == 503 {
            got_503 = true;
            let ra =
                r.1.get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
            l.check(
                ra.as_deref()
                    .is_some_and(|v| v.trim().parse::<u64>().is_ok()),
                || format!("503 without a valid Retry-After header (got {ra:?})"),
            );
            break;
        }
        if r.0 == 200 {
            // Accepted (server had not yet counted request 1): legitimately stored.
            l.rejected.retain(|n| *n != name);
            l.stored.push(name);
        } else {
            l.fail(format!(
                "request during overload: expected 503, got {} ({})",
                r.0,
                body_preview(&r.2)
            ));
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if !got_503 && !l.failed_cases.contains(&l.current) {
        l.fail(format!(
            "no 503 within 5 s while a {HELD}-byte request (limit {LIMIT}) was in flight; \
             {attempt} 10 KB requests were accepted"
        ));
    }

    l.begin("grpc_overload_14_retry_info");
    let n = l.marker("rej", false);
    let r = g_other.export(&mut l, &pb_request_of_size(&n, 10_000), None);
    if expect_grpc(&mut l, &r, 14) {
        let r = r.as_ref().unwrap();
        l.check(r.has_retry_info(), || {
            format!(
                "UNAVAILABLE without RetryInfo in grpc-status-details-bin: details {:?}, error {:?}",
                r.details, r.details_error
            )
        });
    } else if r.as_ref().is_some_and(|r| r.grpc_status == Some(0)) {
        l.rejected.retain(|x| *x != n);
        l.stored.push(n);
    }

    // Finish request 1.
    l.current = "held_request_completes_200".to_string();
    match s
        .write_all(&held_body[HELD - 1000..])
        .and_then(|_| s.flush())
    {
        Ok(()) => match read_response_head(&mut s) {
            Ok((st, head)) => {
                if !l.check(st == 200, || {
                    format!("held request answered {st}: {head:?}")
                }) {
                    l.unexpect_stored(std::slice::from_ref(&held_name));
                }
            }
            Err(e) => {
                l.fail(format!("held request: {e}"));
                l.unexpect_stored(std::slice::from_ref(&held_name));
            }
        },
        Err(e) => {
            l.fail(format!(
                "held request: writing the rest of the body failed: {e}"
            ));
            l.unexpect_stored(std::slice::from_ref(&held_name));
        }
    }
    drop(s);

    l.begin("http_after_release_200");
    let n = l.marker("ok", true);
    // Released budget may be returned asynchronously: allow a short retry on 503.
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut last = None;
    while Instant::now() < deadline {
        last = h.pb(&mut l, pb_request_of_size(&n, 10_000));
        if last.as_ref().is_none_or(|r| r.0 != 503) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if !expect_pb_ok(&mut l, &last) {
        l.unexpect_stored(&[n]);
    }

    // One request of 60 000 bytes (< max_request_bytes = max_inflight_bytes = 64 KiB) with
    // nothing else in flight must be accepted: it is not "over max_inflight_bytes".
    l.begin("http_single_request_near_limit_200");
    let n = l.marker("ok", true);
    let r = h.pb(&mut l, pb_request_of_size(&n, HELD));
    if !expect_pb_ok(&mut l, &r) {
        l.unexpect_stored(&[n]);
    }

    l.begin("grpc_single_request_near_limit_ok");
    let n = l.marker("ok", true);
    let r = g.export(&mut l, &pb_request_of_size(&n, HELD), None);
    if !expect_grpc_ok(&mut l, &r, None) {
        l.unexpect_stored(&[n]);
    }

    verify_archive(&mut l, &gw);
    l.finish();
}
