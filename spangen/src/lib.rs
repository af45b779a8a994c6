//! The OTLP request generator shared by the tests, the benches and the load tool, so the
//! requests they measure and check have one shape and one definition:
//! - `Shape::Small`: a name, kind, timestamps and 2 attributes (~100 B/span encoded);
//! - `Shape::Realistic`: 20 string attributes with random values + 1 int, status, parent
//!   (~1.2 KB/span), the field notes' reference request and the benches' (`realistic_request`);
//! - `Shape::Llm`: GenAI attributes (provider, model, token counts) plus a prompt
//!   (`gen_ai.input.messages`) and a completion (`gen_ai.output.messages`) whose sizes are drawn
//!   log-uniformly from `llm_min_bytes ..= llm_max_bytes`;
//! - any shape with `attr_bytes > 0`: plus one prompt attribute of exactly that size per span.
//!
//! `models` gives a request's spans without ids; `request` puts them, with the ids the caller
//! chooses (`SpanIds`), under one resource and scope. The load tool encodes a template once and
//! patches ids in place; the benches and tests build whole requests. `logs_request` and
//! `metrics_request` make the same models into the other two signals (`signals.rs`).

mod signals;
pub use signals::{log_record, logs_request, metrics_request, POINT_ATTRIBUTES};

use tracegate_proto::otlp::collector::trace::v1::ExportTraceServiceRequest;
use tracegate_proto::otlp::common::v1::{
    any_value::Value, AnyValue, InstrumentationScope, KeyValue,
};
use tracegate_proto::otlp::resource::v1::Resource;
use tracegate_proto::otlp::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};

/// Spans per trace: span `i` is a root when `i % SPANS_PER_TRACE == 0`, else the child of
/// span `i - 1`.
pub const SPANS_PER_TRACE: u64 = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    Small,
    Realistic,
    Llm,
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

/// An attribute value of a generated span.
#[derive(Clone, Debug, PartialEq)]
pub enum Attr {
    Str(String),
    Int(i64),
}

/// One span's content (everything but its ids).
#[derive(Clone, Debug)]
pub struct SpanModel {
    pub name: String,
    pub kind: i32,
    pub start: u64,
    pub end: u64,
    /// The first span of its trace (no parent).
    pub root: bool,
    pub attrs: Vec<(String, Attr)>,
    pub status_ok: bool,
}

/// What to generate: `spans` spans of `shape`, values drawn from `seed`.
pub struct ShapeParams {
    pub shape: Shape,
    pub spans: usize,
    pub llm_min_bytes: usize,
    pub llm_max_bytes: usize,
    /// When > 0, every span also carries one prompt attribute (`gen_ai.prompt`) of exactly this
    /// many bytes of text, whatever the shape: the fixed-size large values of issue 21's
    /// measurements (8 KiB, 64 KiB) next to the same spans without them.
    pub attr_bytes: usize,
    pub seed: u64,
    /// Span start times are this plus a few µs per span (ClickHouse partitions and TTLs by
    /// span time, so runs use the current time).
    pub start_unix_nano: u64,
}

/// The spans of a request of shape `p.shape`: every `SPANS_PER_TRACE`-th span starts a trace.
pub fn models(p: &ShapeParams) -> Vec<SpanModel> {
    let mut rng = Rng::new(p.seed ^ 0x005e_ed0f_5ba5);
    let mut out = shape_models(p, &mut rng);
    if p.attr_bytes > 0 {
        for m in &mut out {
            let prompt = text(&mut rng, p.attr_bytes);
            m.attrs.push(("gen_ai.prompt".into(), Attr::Str(prompt)));
        }
    }
    out
}

fn shape_models(p: &ShapeParams, rng: &mut Rng) -> Vec<SpanModel> {
    (0..p.spans as u64)
        .map(|i| {
            let start = p.start_unix_nano + i * 1000;
            let root = i % SPANS_PER_TRACE == 0;
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
                        Attr::Str(text(rng, prompt_len)),
                    ));
                    attrs.push((
                        "gen_ai.output.messages".into(),
                        Attr::Str(text(rng, completion_len)),
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

/// The ids of one span.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpanIds {
    pub trace: [u8; 16],
    pub span: [u8; 8],
    /// `None` for a root span.
    pub parent: Option<[u8; 8]>,
}

/// Who sent a request: its resource's attributes and its instrumentation scope.
#[derive(Clone, Copy, Debug)]
pub struct Sender<'a> {
    pub resource: &'a [(&'a str, &'a str)],
    pub scope: &'a str,
    pub scope_version: &'a str,
}

/// The resource of the generated traffic: a checkout service in production.
pub const SERVICE: &[(&str, &str)] = &[
    ("service.name", "checkout"),
    ("service.version", "1.4.2"),
    ("deployment.environment", "production"),
];

/// A string attribute.
pub fn kv_str(key: &str, value: &str) -> KeyValue {
    kv(key, &Attr::Str(value.into()))
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

/// One span of `m` with `ids`.
pub fn span(m: &SpanModel, ids: SpanIds) -> Span {
    Span {
        trace_id: ids.trace.to_vec(),
        span_id: ids.span.to_vec(),
        parent_span_id: ids.parent.map(|p| p.to_vec()).unwrap_or_default(),
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
    }
}

/// `spans` under one resource and one scope of `from`.
pub fn request_with_spans(spans: Vec<Span>, from: &Sender<'_>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: from.resource.iter().map(|(k, v)| kv_str(k, v)).collect(),
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: from.scope.into(),
                    version: from.scope_version.into(),
                    ..Default::default()
                }),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// The spans of `models`, span `i` with `ids(i)`, under one resource and scope of `from`.
pub fn request(
    models: &[SpanModel],
    ids: impl Fn(u64) -> SpanIds,
    from: &Sender<'_>,
) -> ExportTraceServiceRequest {
    let spans = models
        .iter()
        .enumerate()
        .map(|(i, m)| span(m, ids(i as u64)))
        .collect();
    request_with_spans(spans, from)
}

/// The benches' request: `n` realistic spans starting at 2023-11-14 22:13:20 UTC; `seed` makes
/// the ids (and the attribute values) differ between requests.
pub fn realistic_request(n: usize, seed: u64) -> ExportTraceServiceRequest {
    realistic_with_prompts(n, 0, seed)
}

/// [`realistic_request`] with one prompt attribute of exactly `attr_bytes` bytes per span (0:
/// none): the large-value shapes of the benches (issue 21).
pub fn realistic_with_prompts(n: usize, attr_bytes: usize, seed: u64) -> ExportTraceServiceRequest {
    let models = bench_models(n, attr_bytes, seed);
    request(&models, bench_ids(&models, seed), &BENCH_FROM)
}

/// The benches' models: `n` realistic spans from 2023-11-14 22:13:20 UTC.
fn bench_models(n: usize, attr_bytes: usize, seed: u64) -> Vec<SpanModel> {
    models(&ShapeParams {
        shape: Shape::Realistic,
        spans: n,
        llm_min_bytes: 0,
        llm_max_bytes: 0,
        attr_bytes,
        seed,
        start_unix_nano: 1_700_000_000_000_000_000,
    })
}

/// The benches' ids: per seed, traces of `SPANS_PER_TRACE` spans.
fn bench_ids(models: &[SpanModel], seed: u64) -> impl Fn(u64) -> SpanIds + '_ {
    move |i: u64| {
        let id = seed.wrapping_mul(1_000_003).wrapping_add(i + 1);
        let mut trace = [0u8; 16];
        trace[..8].copy_from_slice(&seed.wrapping_add(1).to_be_bytes());
        trace[8..].copy_from_slice(&(i / SPANS_PER_TRACE + 1).to_be_bytes());
        SpanIds {
            trace,
            span: id.to_be_bytes(),
            parent: (!models[i as usize].root).then(|| (id - 1).to_be_bytes()),
        }
    }
}

const BENCH_FROM: Sender<'static> = Sender {
    resource: SERVICE,
    scope: "tracegate-bench",
    scope_version: "1",
};

/// The log records of [`realistic_with_prompts`]'s spans (same models, same ids).
pub fn realistic_logs(
    n: usize,
    attr_bytes: usize,
    seed: u64,
) -> tracegate_proto::otlp::collector::logs::v1::ExportLogsServiceRequest {
    let models = bench_models(n, attr_bytes, seed);
    logs_request(&models, bench_ids(&models, seed), &BENCH_FROM)
}

/// The data points of [`realistic_request`]'s spans (same models, ids in the exemplars).
pub fn realistic_metrics(
    n: usize,
    seed: u64,
) -> tracegate_proto::otlp::collector::metrics::v1::ExportMetricsServiceRequest {
    let models = bench_models(n, 0, seed);
    metrics_request(&models, bench_ids(&models, seed), &BENCH_FROM)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn params(shape: Shape, spans: usize, seed: u64) -> ShapeParams {
        ShapeParams {
            shape,
            spans,
            llm_min_bytes: 1000,
            llm_max_bytes: 5000,
            attr_bytes: 0,
            seed,
            start_unix_nano: 1_800_000_000_000_000_000,
        }
    }

    #[test]
    fn shapes_have_their_sizes_and_traces() {
        let size = |shape| {
            let r = request(
                &models(&params(shape, 64, 7)),
                |i| SpanIds {
                    trace: [1; 16],
                    span: (i + 1).to_be_bytes(),
                    parent: None,
                },
                &Sender {
                    resource: SERVICE,
                    scope: "t",
                    scope_version: "1",
                },
            );
            r.encoded_len() / 64
        };
        assert!(
            (60..200).contains(&size(Shape::Small)),
            "{}",
            size(Shape::Small)
        );
        assert!(
            (1000..1500).contains(&size(Shape::Realistic)),
            "{}",
            size(Shape::Realistic)
        );
        // Two values of 1000..=5000 bytes each.
        assert!(
            (2000..12_000).contains(&size(Shape::Llm)),
            "{}",
            size(Shape::Llm)
        );
        let m = models(&params(Shape::Realistic, 17, 7));
        let roots: Vec<usize> = (0..17).filter(|&i| m[i].root).collect();
        assert_eq!(roots, vec![0, 8, 16]);
    }

    #[test]
    fn seeds_change_values_not_shape() {
        let a = realistic_request(20, 1);
        let b = realistic_request(20, 2);
        assert_eq!(a.encoded_len(), b.encoded_len());
        let first =
            |r: &ExportTraceServiceRequest| r.resource_spans[0].scope_spans[0].spans[0].clone();
        assert_ne!(first(&a).attributes[0], first(&b).attributes[0]);
        assert_ne!(first(&a).span_id, first(&b).span_id);
        assert_eq!(realistic_request(20, 1), a, "deterministic");
        let s = &a.resource_spans[0].scope_spans[0].spans;
        assert!(s[0].parent_span_id.is_empty());
        assert_eq!(s[1].parent_span_id, s[0].span_id);
    }

    #[test]
    fn attr_bytes_adds_one_prompt_of_exactly_that_size() {
        for shape in [Shape::Small, Shape::Realistic, Shape::Llm] {
            let plain = models(&params(shape, 9, 3));
            let mut p = params(shape, 9, 3);
            p.attr_bytes = 8192;
            let with = models(&p);
            for (a, b) in plain.iter().zip(&with) {
                assert_eq!(b.attrs.len(), a.attrs.len() + 1);
                assert_eq!(
                    &b.attrs[..a.attrs.len()],
                    &a.attrs[..],
                    "the rest unchanged"
                );
                match b.attrs.last() {
                    Some((k, Attr::Str(v))) => {
                        assert_eq!(k, "gen_ai.prompt");
                        assert_eq!(v.len(), 8192);
                    }
                    other => panic!("{other:?}"),
                }
            }
        }
    }
}
