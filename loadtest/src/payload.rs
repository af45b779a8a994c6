//! Request payloads: one template request per run (protobuf or OTLP/JSON), built once, into
//! which each request's sequence-numbered ids are patched in place. A request then costs a
//! memcpy plus 3 small writes per span (and the compression, if any), so the load generator
//! stays cheap next to the gateway it measures.
//!
//! Shapes:
//! - `small`: a name, kind, timestamps and 2 attributes (~100 B/span encoded);
//! - `realistic`: 20 string attributes + 1 int, status, parent (~1.2 KB/span), the shape of the
//!   criterion benches (`benches/src/lib.rs`) and of the figures;
//! - `llm`: GenAI attributes (provider, model, token counts) plus a prompt
//!   (`gen_ai.input.messages`) and a completion (`gen_ai.output.messages`) whose sizes are drawn
//!   log-uniformly from `--llm-min-bytes ..= --llm-max-bytes` (default 10 KiB – 1 MiB).

use anyhow::{bail, Result};
use clap::ValueEnum;
use prost::Message;
use serde_json::{json, Value as Json};
use tracegate_proto::otlp::collector::trace::v1::ExportTraceServiceRequest;
use tracegate_proto::otlp::common::v1::{
    any_value::Value, AnyValue, InstrumentationScope, KeyValue,
};
use tracegate_proto::otlp::resource::v1::Resource;
use tracegate_proto::otlp::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};

use crate::ids;

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    Small,
    Realistic,
    Llm,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    Protobuf,
    Json,
}

/// splitmix64: small, seedable, good enough for payload text and sizes.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

const WORDS: &[&str] = &[
    "the",
    "model",
    "user",
    "assistant",
    "answer",
    "question",
    "please",
    "summarize",
    "following",
    "document",
    "about",
    "customer",
    "order",
    "shipping",
    "invoice",
    "refund",
    "policy",
    "within",
    "days",
    "thank",
    "you",
    "for",
    "your",
    "patience",
    "we",
    "have",
    "reviewed",
    "request",
    "and",
    "will",
    "process",
    "it",
    "shortly",
    "context",
    "retrieved",
    "passages",
    "tool",
    "call",
    "weather",
    "forecast",
    "tomorrow",
    "sunny",
    "with",
    "light",
    "winds",
    "from",
    "north",
    "west",
];

/// Text of exactly `len` bytes: words drawn from a small vocabulary (compresses like prose).
fn text(rng: &mut Rng, len: usize) -> String {
    let mut s = String::with_capacity(len + 16);
    while s.len() < len {
        if !s.is_empty() {
            s.push(' ');
        }
        s.push_str(WORDS[rng.below(WORDS.len() as u64) as usize]);
    }
    s.truncate(len);
    s
}

#[derive(Clone, Debug)]
enum Attr {
    Str(String),
    Int(i64),
}

struct SpanModel {
    name: String,
    kind: i32,
    start: u64,
    end: u64,
    root: bool,
    attrs: Vec<(String, Attr)>,
    status_ok: bool,
}

pub struct ShapeParams {
    pub shape: Shape,
    pub spans: usize,
    pub llm_min_bytes: usize,
    pub llm_max_bytes: usize,
    pub seed: u64,
    /// Span start times are this plus a few µs per span (ClickHouse partitions and TTLs by
    /// span time, so runs use the current time).
    pub start_unix_nano: u64,
}

fn models(p: &ShapeParams) -> Vec<SpanModel> {
    let mut rng = Rng::new(p.seed ^ 0x005e_ed0f_5ba5);
    (0..p.spans as u64)
        .map(|i| {
            let start = p.start_unix_nano + i * 1000;
            let root = i % ids::SPANS_PER_TRACE == 0;
            match p.shape {
                Shape::Small => SpanModel {
                    name: format!("op-{}", i % 10),
                    kind: 1,
                    start,
                    end: start + 250_000,
                    root,
                    attrs: vec![
                        ("component".into(), Attr::Str("loadtest".into())),
                        ("loop.index".into(), Attr::Int(i as i64)),
                    ],
                    status_ok: false,
                },
                Shape::Realistic => {
                    let mut attrs: Vec<(String, Attr)> = (0..20)
                        .map(|a| {
                            (
                                format!("app.attribute.number_{a}"),
                                Attr::Str(format!("value-{a}-{:016x}", rng.next_u64())),
                            )
                        })
                        .collect();
                    attrs.push(("http.response.status_code".into(), Attr::Int(200)));
                    SpanModel {
                        name: format!("GET /api/v1/items/{}", i % 100),
                        kind: 2,
                        start,
                        end: start + 500_000,
                        root,
                        attrs,
                        status_ok: true,
                    }
                }
                Shape::Llm => {
                    let lo = p.llm_min_bytes.max(1) as f64;
                    let hi = p.llm_max_bytes.max(p.llm_min_bytes.max(1)) as f64;
                    let mut size = || {
                        let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
                        (lo * (hi / lo).powf(u)).round() as usize
                    };
                    let (prompt_len, completion_len) = (size(), size());
                    let mut attrs: Vec<(String, Attr)> = vec![
                        ("gen_ai.operation.name".into(), Attr::Str("chat".into())),
                        ("gen_ai.provider.name".into(), Attr::Str("openai".into())),
                        ("gen_ai.request.model".into(), Attr::Str("gpt-4o".into())),
                        (
                            "gen_ai.response.model".into(),
                            Attr::Str("gpt-4o-2024-08-06".into()),
                        ),
                        (
                            "gen_ai.usage.input_tokens".into(),
                            Attr::Int((prompt_len / 4) as i64),
                        ),
                        (
                            "gen_ai.usage.output_tokens".into(),
                            Attr::Int((completion_len / 4) as i64),
                        ),
                    ];
                    for a in 0..8 {
                        attrs.push((
                            format!("app.attribute.number_{a}"),
                            Attr::Str(format!("value-{a}-{:016x}", rng.next_u64())),
                        ));
                    }
                    attrs.push((
                        "gen_ai.input.messages".into(),
                        Attr::Str(text(&mut rng, prompt_len)),
                    ));
                    attrs.push((
                        "gen_ai.output.messages".into(),
                        Attr::Str(text(&mut rng, completion_len)),
                    ));
                    SpanModel {
                        name: "chat gpt-4o".into(),
                        kind: 3,
                        start,
                        end: start + 1_500_000_000,
                        root,
                        attrs,
                        status_ok: true,
                    }
                }
            }
        })
        .collect()
}

/// Placeholder ids of span `i`: random 64-bit bases from the seed, so they do not occur in the
/// generated text (which is ASCII words and hex digits only in fixed-width values).
struct Placeholders {
    trace_hi: u64,
    trace_lo: u64,
    span: u64,
    parent: u64,
}

impl Placeholders {
    fn new(seed: u64) -> Self {
        let mut r = Rng::new(seed ^ 0x1d5_1d5_1d5);
        // Top bit set: never a printable-ASCII byte run.
        let mut v = || r.next_u64() | 0x8080_8080_8080_8080;
        Placeholders {
            trace_hi: v(),
            trace_lo: v(),
            span: v(),
            parent: v(),
        }
    }
    fn trace(&self, i: u64) -> [u8; 16] {
        let mut t = [0u8; 16];
        t[..8].copy_from_slice(&self.trace_hi.to_be_bytes());
        t[8..].copy_from_slice(&(self.trace_lo ^ i).to_be_bytes());
        t
    }
    fn span(&self, i: u64) -> [u8; 8] {
        (self.span ^ i).to_be_bytes()
    }
    fn parent(&self, i: u64) -> [u8; 8] {
        (self.parent ^ i).to_be_bytes()
    }
}

#[derive(Clone, Copy)]
struct SpanPatch {
    trace: usize,
    span: usize,
    parent: Option<usize>,
}

/// An encoded request with the byte offsets of every span's ids.
pub struct Template {
    bytes: Vec<u8>,
    patches: Vec<SpanPatch>,
    hex: bool,
}

fn kv(k: &str, v: &Attr) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(match v {
                Attr::Str(s) => Value::StringValue(s.clone()),
                Attr::Int(n) => Value::IntValue(*n),
            }),
        }),
        ..Default::default()
    }
}

fn json_attr(k: &str, v: &Attr) -> Json {
    match v {
        Attr::Str(s) => json!({"key": k, "value": {"stringValue": s}}),
        Attr::Int(n) => json!({"key": k, "value": {"intValue": n.to_string()}}),
    }
}

fn hex(b: &[u8]) -> String {
    const D: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push(D[(x >> 4) as usize] as char);
        s.push(D[(x & 15) as usize] as char);
    }
    s
}

fn write_hex(dst: &mut [u8], b: &[u8]) {
    const D: &[u8; 16] = b"0123456789abcdef";
    for (i, x) in b.iter().enumerate() {
        dst[2 * i] = D[(x >> 4) as usize];
        dst[2 * i + 1] = D[(x & 15) as usize];
    }
}

const RESOURCE: &[(&str, &str)] = &[
    ("service.name", "loadtest"),
    ("service.version", "1.4.2"),
    ("deployment.environment", "production"),
];

/// The template request in protobuf: the models' spans under one resource and scope.
fn protobuf_request(models: &[SpanModel], ph: &Placeholders) -> Vec<u8> {
    let spans = models
        .iter()
        .enumerate()
        .map(|(i, m)| Span {
            trace_id: ph.trace(i as u64).to_vec(),
            span_id: ph.span(i as u64).to_vec(),
            parent_span_id: if m.root {
                vec![]
            } else {
                ph.parent(i as u64).to_vec()
            },
            name: m.name.clone(),
            kind: m.kind,
            start_time_unix_nano: m.start,
            end_time_unix_nano: m.end,
            attributes: m.attrs.iter().map(|(k, v)| kv(k, v)).collect(),
            status: m.status_ok.then_some(Status {
                code: 1,
                message: String::new(),
            }),
            ..Default::default()
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: RESOURCE
                    .iter()
                    .map(|(k, v)| kv(k, &Attr::Str((*v).into())))
                    .collect(),
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "tracegate-loadtest".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

/// The same request in OTLP/JSON (hex ids, string nanoseconds).
fn json_request(models: &[SpanModel], ph: &Placeholders) -> Result<Vec<u8>> {
    let spans: Vec<Json> = models
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let mut s = serde_json::Map::new();
            s.insert("traceId".into(), hex(&ph.trace(i as u64)).into());
            s.insert("spanId".into(), hex(&ph.span(i as u64)).into());
            if !m.root {
                s.insert("parentSpanId".into(), hex(&ph.parent(i as u64)).into());
            }
            s.insert("name".into(), m.name.clone().into());
            s.insert("kind".into(), m.kind.into());
            s.insert("startTimeUnixNano".into(), m.start.to_string().into());
            s.insert("endTimeUnixNano".into(), m.end.to_string().into());
            s.insert(
                "attributes".into(),
                m.attrs.iter().map(|(k, v)| json_attr(k, v)).collect(),
            );
            if m.status_ok {
                s.insert("status".into(), json!({"code": 1}));
            }
            Json::Object(s)
        })
        .collect();
    let resource: Vec<Json> = RESOURCE
        .iter()
        .map(|(k, v)| json_attr(k, &Attr::Str((*v).into())))
        .collect();
    serde_json::to_vec(&json!({"resourceSpans": [{
        "resource": {"attributes": resource},
        "scopeSpans": [{
            "scope": {"name": "tracegate-loadtest", "version": env!("CARGO_PKG_VERSION")},
            "spans": spans,
        }],
    }]}))
    .map_err(Into::into)
}

impl Template {
    pub fn build(p: &ShapeParams, encoding: Encoding) -> Result<Template> {
        if p.spans == 0 {
            bail!("a request needs at least one span");
        }
        let ph = Placeholders::new(p.seed);
        let models = models(p);
        let bytes = match encoding {
            Encoding::Protobuf => protobuf_request(&models, &ph),
            Encoding::Json => json_request(&models, &ph)?,
        };
        let hexed = encoding == Encoding::Json;
        let pat = |b: &[u8]| -> Vec<u8> {
            if hexed {
                hex(b).into_bytes()
            } else {
                b.to_vec()
            }
        };
        // Spans are encoded in order, so each span's placeholders lie after the previous
        // span's (in any order within the span: serde_json sorts object keys): one forward
        // scan per span from where the last one ended.
        let mut pos = 0usize;
        let mut end = 0usize;
        let find = |needle: &[u8], from: usize, end: &mut usize| -> Result<usize> {
            match memchr::memmem::find(&bytes[from..], needle) {
                Some(o) => {
                    let at = from + o;
                    *end = (*end).max(at + needle.len());
                    Ok(at)
                }
                None => bail!("internal error: id placeholder not found in the template"),
            }
        };
        let mut patches = Vec::with_capacity(models.len());
        for (i, m) in models.iter().enumerate() {
            let i = i as u64;
            let trace = find(&pat(&ph.trace(i)), pos, &mut end)?;
            let span = find(&pat(&ph.span(i)), pos, &mut end)?;
            let parent = if m.root {
                None
            } else {
                Some(find(&pat(&ph.parent(i)), pos, &mut end)?)
            };
            pos = end;
            patches.push(SpanPatch {
                trace,
                span,
                parent,
            });
        }
        Ok(Template {
            bytes,
            patches,
            hex: hexed,
        })
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// The request whose first span has sequence number `first` (see `ids`).
    pub fn render(&self, run_id: u64, first: u64, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(&self.bytes);
        for (i, p) in self.patches.iter().enumerate() {
            let seq = first + i as u64;
            let t = ids::trace_id(run_id, ids::trace_root(seq, first));
            let s = ids::span_id(seq);
            if self.hex {
                write_hex(&mut out[p.trace..p.trace + 32], &t);
                write_hex(&mut out[p.span..p.span + 16], &s);
                if let Some(pp) = p.parent {
                    write_hex(&mut out[pp..pp + 16], &ids::span_id(seq - 1));
                }
            } else {
                out[p.trace..p.trace + 16].copy_from_slice(&t);
                out[p.span..p.span + 8].copy_from_slice(&s);
                if let Some(pp) = p.parent {
                    out[pp..pp + 8].copy_from_slice(&ids::span_id(seq - 1));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(shape: Shape, spans: usize) -> ShapeParams {
        ShapeParams {
            shape,
            spans,
            llm_min_bytes: 1000,
            llm_max_bytes: 5000,
            seed: 7,
            start_unix_nano: 1_800_000_000_000_000_000,
        }
    }

    #[test]
    fn protobuf_render_decodes_with_sequence_ids() {
        for shape in [Shape::Small, Shape::Realistic, Shape::Llm] {
            let t = Template::build(&params(shape, 20), Encoding::Protobuf).unwrap();
            let mut out = vec![];
            t.render(99, 41, &mut out);
            let req = ExportTraceServiceRequest::decode(out.as_slice()).unwrap();
            let spans = &req.resource_spans[0].scope_spans[0].spans;
            assert_eq!(spans.len(), 20);
            for (i, s) in spans.iter().enumerate() {
                let seq = 41 + i as u64;
                assert_eq!(
                    ids::decode(99, &s.trace_id, &s.span_id),
                    ids::Decoded::Ours(seq)
                );
                if i % 8 == 0 {
                    assert!(s.parent_span_id.is_empty());
                } else {
                    assert_eq!(s.parent_span_id, ids::span_id(seq - 1));
                }
            }
        }
    }

    #[test]
    fn templates_of_other_seeds_share_shape_not_values() {
        // `--templates`: requests rendered from different seeds have the same size and ids but
        // different attribute values, so no compressor can match one request against another.
        let mut p = params(Shape::Realistic, 20);
        let a = Template::build(&p, Encoding::Protobuf).unwrap();
        p.seed += 1;
        let b = Template::build(&p, Encoding::Protobuf).unwrap();
        let (mut ra, mut rb) = (vec![], vec![]);
        a.render(5, 1, &mut ra);
        b.render(5, 1, &mut rb);
        assert_eq!(ra.len(), rb.len());
        let value = |r: &[u8]| {
            let req = ExportTraceServiceRequest::decode(r).unwrap();
            let s = req.resource_spans[0].scope_spans[0].spans[0].clone();
            (s.span_id, s.attributes[0].value.clone())
        };
        let (ida, va) = value(&ra);
        let (idb, vb) = value(&rb);
        assert_eq!(ida, idb);
        assert_ne!(va, vb);
    }

    #[test]
    fn json_render_has_hex_ids() {
        let t = Template::build(&params(Shape::Realistic, 10), Encoding::Json).unwrap();
        let mut out = vec![];
        t.render(0xab, 11, &mut out);
        let v: Json = serde_json::from_slice(&out).unwrap();
        let s = &v["resourceSpans"][0]["scopeSpans"][0]["spans"][3];
        assert_eq!(s["traceId"], "00000000000000ab000000000000000b");
        assert_eq!(s["spanId"], "000000000000000e");
        assert_eq!(s["parentSpanId"], "000000000000000d");
    }

    #[test]
    fn llm_values_within_bounds() {
        let t = Template::build(&params(Shape::Llm, 16), Encoding::Protobuf).unwrap();
        // 16 spans x 2 values of 1000..=5000 bytes each.
        assert!(t.len() > 16 * 2 * 1000 && t.len() < 16 * (2 * 5000 + 2000));
    }
}
