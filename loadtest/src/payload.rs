//! Request payloads: one template request per run (protobuf or OTLP/JSON), built once, into
//! which each request's sequence-numbered ids are patched in place. A request then costs a
//! memcpy plus 3 small writes per span (and the compression, if any), so the load generator
//! stays cheap next to the gateway it measures.
//!
//! The spans (shapes `small`, `realistic`, `llm`; `--llm-min-bytes ..= --llm-max-bytes`, default
//! 10 KiB – 1 MiB) come from `tracegate_spangen`, the generator the tests and the benches use.

use anyhow::{bail, Result};
use clap::ValueEnum;
use prost::Message;
use serde_json::{json, Value as Json};
use tracegate_spangen::{Attr, Sender, SpanIds, SpanModel};
pub use tracegate_spangen::{Rng, Shape, ShapeParams};

use crate::ids;

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    Protobuf,
    Json,
}

/// The OTLP signal a run sends. Logs and metrics are the same models as spans
/// (`tracegate_spangen::logs_request` / `metrics_request`): a log record per span (its
/// attributes, prompts included), a data point per span (4 attributes, an exemplar with the
/// ids); the report's "spans" are then log records or data points.
#[derive(Clone, Copy, Debug, Default, ValueEnum, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Signal {
    #[default]
    Traces,
    Logs,
    Metrics,
}

impl Signal {
    /// The OTLP/HTTP path.
    pub fn http_path(self) -> &'static str {
        match self {
            Signal::Traces => "/v1/traces",
            Signal::Logs => "/v1/logs",
            Signal::Metrics => "/v1/metrics",
        }
    }

    /// The OTLP/gRPC method.
    pub fn grpc_path(self) -> &'static str {
        match self {
            Signal::Traces => "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            Signal::Logs => "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
            Signal::Metrics => "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
        }
    }
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

const FROM: Sender<'static> = Sender {
    resource: RESOURCE,
    scope: "tracegate-loadtest",
    scope_version: env!("CARGO_PKG_VERSION"),
};

/// The template request in protobuf: the models' spans under one resource and scope.
fn protobuf_request(models: &[SpanModel], ph: &Placeholders) -> Vec<u8> {
    let ids = |i: u64| SpanIds {
        trace: ph.trace(i),
        span: ph.span(i),
        parent: (!models[i as usize].root).then(|| ph.parent(i)),
    };
    tracegate_spangen::request(models, ids, &FROM).encode_to_vec()
}

/// A logs or metrics template (protobuf, or OTLP/JSON through the types' serde mapping, which
/// writes ids in hex as OTLP/JSON wants). Records and points carry trace and span ids only.
fn signal_request(
    signal: Signal,
    models: &[SpanModel],
    ph: &Placeholders,
    encoding: Encoding,
) -> Result<Vec<u8>> {
    let ids = |i: u64| SpanIds {
        trace: ph.trace(i),
        span: ph.span(i),
        parent: None,
    };
    Ok(match (signal, encoding) {
        (Signal::Logs, Encoding::Protobuf) => {
            tracegate_spangen::logs_request(models, ids, &FROM).encode_to_vec()
        }
        (Signal::Logs, Encoding::Json) => {
            serde_json::to_vec(&tracegate_spangen::logs_request(models, ids, &FROM))?
        }
        (_, Encoding::Protobuf) => {
            tracegate_spangen::metrics_request(models, ids, &FROM).encode_to_vec()
        }
        (_, Encoding::Json) => {
            serde_json::to_vec(&tracegate_spangen::metrics_request(models, ids, &FROM))?
        }
    })
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
    pub fn build(p: &ShapeParams, encoding: Encoding, signal: Signal) -> Result<Template> {
        if p.spans == 0 {
            bail!("a request needs at least one span");
        }
        let ph = Placeholders::new(p.seed);
        let mut models = tracegate_spangen::models(p);
        let bytes = match (signal, encoding) {
            (Signal::Traces, Encoding::Protobuf) => protobuf_request(&models, &ph),
            (Signal::Traces, Encoding::Json) => json_request(&models, &ph)?,
            _ => {
                // No parents in log records and data points: every model patched like a root.
                models.iter_mut().for_each(|m| m.root = true);
                signal_request(signal, &models, &ph, encoding)?
            }
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
    use tracegate_proto::otlp::collector::trace::v1::ExportTraceServiceRequest;

    fn params(shape: Shape, spans: usize) -> ShapeParams {
        ShapeParams {
            shape,
            spans,
            llm_min_bytes: 1000,
            llm_max_bytes: 5000,
            attr_bytes: 0,
            seed: 7,
            start_unix_nano: 1_800_000_000_000_000_000,
        }
    }

    #[test]
    fn protobuf_render_decodes_with_sequence_ids() {
        for shape in [Shape::Small, Shape::Realistic, Shape::Llm] {
            let t =
                Template::build(&params(shape, 20), Encoding::Protobuf, Signal::Traces).unwrap();
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

    /// Logs and metrics: every record / data point carries its sequence number's ids, in
    /// protobuf and in OTLP/JSON (hex), and the gateway's own decoder reads the JSON.
    #[test]
    fn log_and_metric_templates_carry_sequence_ids() {
        use tracegate_proto::otlp::collector::logs::v1::ExportLogsServiceRequest;
        use tracegate_proto::otlp::collector::metrics::v1::ExportMetricsServiceRequest;
        use tracegate_proto::otlp::metrics::v1::metric::Data;
        for encoding in [Encoding::Protobuf, Encoding::Json] {
            let format = || match encoding {
                Encoding::Protobuf => tracegate_otlp::codec::Format::Protobuf,
                Encoding::Json => tracegate_otlp::codec::Format::Json,
            };
            let mut out = vec![];
            let t = Template::build(&params(Shape::Llm, 9), encoding, Signal::Logs).unwrap();
            t.render(7, 100, &mut out);
            let req: ExportLogsServiceRequest =
                tracegate_otlp::codec::decode_as(format(), &out).unwrap();
            let records = &req.resource_logs[0].scope_logs[0].log_records;
            assert_eq!(records.len(), 9);
            for (i, r) in records.iter().enumerate() {
                let seq = 100 + i as u64;
                assert_eq!(
                    ids::decode(7, &r.trace_id, &r.span_id),
                    ids::Decoded::Ours(seq)
                );
                assert!(r.attributes.len() > 4, "the span's attributes");
            }
            let t =
                Template::build(&params(Shape::Realistic, 9), encoding, Signal::Metrics).unwrap();
            t.render(7, 100, &mut out);
            let req: ExportMetricsServiceRequest =
                tracegate_otlp::codec::decode_as(format(), &out).unwrap();
            let metrics = &req.resource_metrics[0].scope_metrics[0].metrics;
            assert_eq!(metrics.len(), 3, "sum, histogram, gauge");
            let mut seq = 100;
            for m in metrics {
                let exemplars: Vec<_> = match m.data.as_ref().unwrap() {
                    Data::Sum(s) => s.data_points.iter().map(|p| &p.exemplars[0]).collect(),
                    Data::Gauge(g) => g.data_points.iter().map(|p| &p.exemplars[0]).collect(),
                    Data::Histogram(h) => h.data_points.iter().map(|p| &p.exemplars[0]).collect(),
                    _ => unreachable!(),
                };
                assert_eq!(exemplars.len(), 3);
                for e in exemplars {
                    assert_eq!(
                        ids::decode(7, &e.trace_id, &e.span_id),
                        ids::Decoded::Ours(seq)
                    );
                    seq += 1;
                }
            }
        }
    }

    #[test]
    fn templates_of_other_seeds_share_shape_not_values() {
        // `--templates`: requests rendered from different seeds have the same size and ids but
        // different attribute values, so no compressor can match one request against another.
        let mut p = params(Shape::Realistic, 20);
        let a = Template::build(&p, Encoding::Protobuf, Signal::Traces).unwrap();
        p.seed += 1;
        let b = Template::build(&p, Encoding::Protobuf, Signal::Traces).unwrap();
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
        let t = Template::build(
            &params(Shape::Realistic, 10),
            Encoding::Json,
            Signal::Traces,
        )
        .unwrap();
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
        let t =
            Template::build(&params(Shape::Llm, 16), Encoding::Protobuf, Signal::Traces).unwrap();
        // 16 spans x 2 values of 1000..=5000 bytes each.
        assert!(t.len() > 16 * 2 * 1000 && t.len() < 16 * (2 * 5000 + 2000));
    }
}
