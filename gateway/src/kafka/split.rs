//! One accepted batch → one or more Kafka messages (docs/kafka.md).
//!
//! The message value is an encoded `tracegate.v1.Batch`. A batch whose envelope does not fit
//! in `kafka.message_max_bytes` is split by resource / scope / span into several batches that
//! share its `batch_id` (`part_index` / `part_count` say which part is which). Nothing is
//! dropped: a single span that cannot fit even alone makes the whole request fail with a
//! non-retryable "too large" answer naming the limit, so the client is told.

use bytes::Bytes;
use prost::Message as _;
use tracegate_proto::otlp::collector::trace::v1::ExportTraceServiceRequest;
use tracegate_proto::otlp::trace::v1::{ResourceSpans, ScopeSpans};
use tracegate_proto::v1::Batch;

use super::config::PartitionKey;

/// Bytes kept free in every message for the Kafka record framing, the key and the headers.
pub const RECORD_OVERHEAD: usize = 512;
/// Worst-case protobuf field overhead: one tag byte plus a 10-byte length varint.
const FIELD_OVERHEAD: usize = 11;

/// One Kafka record to produce.
#[derive(Debug, Clone)]
pub struct KafkaMessage {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub spans: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SplitError {
    #[error(
        "a span of {span_bytes} bytes does not fit in one Kafka message \
         (kafka.message_max_bytes = {limit}); raise kafka.message_max_bytes and the topic's \
         max.message.bytes"
    )]
    SpanTooLarge { span_bytes: usize, limit: usize },
    #[error("the batch's OTLP payload does not decode: {0}")]
    Decode(String),
}

/// The record key for `batch` (docs/kafka.md, "Keys and partitions").
pub fn key(batch: &Batch, strategy: PartitionKey) -> Vec<u8> {
    match strategy {
        PartitionKey::Project => {
            let mut k = Vec::with_capacity(batch.org_id.len() + 1 + batch.project_id.len());
            k.extend_from_slice(batch.org_id.as_bytes());
            k.push(b'/');
            k.extend_from_slice(batch.project_id.as_bytes());
            k
        }
        PartitionKey::Batch => batch.batch_id.to_vec(),
    }
}

/// True when `batch` must be split (decode + re-encode: run that on the blocking pool).
pub fn needs_split(batch: &Batch, key_len: usize, max_message_bytes: usize) -> bool {
    batch.encoded_len() + key_len + RECORD_OVERHEAD > max_message_bytes
}

/// Encodes `batch` as one or more messages of at most `max_message_bytes` (value + key +
/// [`RECORD_OVERHEAD`]).
pub fn to_messages(
    batch: Batch,
    strategy: PartitionKey,
    max_message_bytes: usize,
) -> Result<Vec<KafkaMessage>, SplitError> {
    let key = key(&batch, strategy);
    if !needs_split(&batch, key.len(), max_message_bytes) {
        let spans = batch.span_count;
        return Ok(vec![KafkaMessage {
            key,
            value: batch.encode_to_vec(),
            spans,
        }]);
    }
    // A compressed payload is decompressed to be split; the parts are plain (identity,
    // schema version 1).
    let plain =
        tracegate_otlp::envelope::plain_request(&batch, tracegate_otlp::envelope::MAX_PLAIN_BYTES)
            .map_err(|e| SplitError::Decode(e.to_string()))?;
    let req =
        ExportTraceServiceRequest::decode(plain).map_err(|e| SplitError::Decode(e.to_string()))?;
    let mut head = batch;
    tracegate_otlp::envelope::set_plain(&mut head, Bytes::new());
    head.span_count = 0;
    // Envelope fields other than the payload, plus the payload's own tag/length and the part
    // fields (each at most 1 tag byte + 5-byte varint).
    let envelope = head.encoded_len() + FIELD_OVERHEAD + 2 * 6 + 2 * 6;
    let budget = max_message_bytes
        .saturating_sub(key.len() + RECORD_OVERHEAD + envelope)
        .max(1);
    let chunks = chunk(req, budget).map_err(|span_bytes| SplitError::SpanTooLarge {
        span_bytes,
        limit: max_message_bytes,
    })?;
    let count = chunks.len() as u32;
    Ok(chunks
        .into_iter()
        .enumerate()
        .map(|(i, (req, spans))| {
            let mut b = head.clone();
            tracegate_otlp::envelope::set_plain(&mut b, Bytes::from(req.encode_to_vec()));
            b.span_count = spans;
            b.part_index = i as u32;
            b.part_count = count;
            KafkaMessage {
                key: key.clone(),
                value: b.encode_to_vec(),
                spans,
            }
        })
        .collect())
}

fn len_field(len: usize) -> usize {
    if len == 0 {
        0
    } else {
        len + FIELD_OVERHEAD
    }
}

/// Packs the spans of `req` greedily, in order, into requests whose encoding is at most
/// `budget` bytes; each keeps its spans' resource and scope. Sizes are over-estimated (every
/// length varint counted at its maximum), so the real encodings are never larger. Err(size)
/// when one span cannot fit alone.
fn chunk(
    req: ExportTraceServiceRequest,
    budget: usize,
) -> Result<Vec<(ExportTraceServiceRequest, u32)>, usize> {
    let mut out = Vec::new();
    let mut cur = ExportTraceServiceRequest::default();
    let mut cur_size = 0usize;
    let mut cur_spans = 0u32;
    for rs in req.resource_spans {
        let rs_head = FIELD_OVERHEAD
            + rs.resource
                .as_ref()
                .map_or(0, |r| len_field(r.encoded_len()).max(FIELD_OVERHEAD))
            + len_field(rs.schema_url.len());
        let mut rs_open = false;
        for ss in rs.scope_spans {
            let ss_head = FIELD_OVERHEAD
                + ss.scope
                    .as_ref()
                    .map_or(0, |s| len_field(s.encoded_len()).max(FIELD_OVERHEAD))
                + len_field(ss.schema_url.len());
            let mut ss_open = false;
            for span in ss.spans {
                let cost = span.encoded_len() + FIELD_OVERHEAD;
                let mut need =
                    cost + if ss_open { 0 } else { ss_head } + if rs_open { 0 } else { rs_head };
                if cur_size + need > budget && cur_spans > 0 {
                    out.push((std::mem::take(&mut cur), cur_spans));
                    cur_size = 0;
                    cur_spans = 0;
                    rs_open = false;
                    ss_open = false;
                    need = cost + ss_head + rs_head;
                }
                if need > budget {
                    return Err(cost);
                }
                if !rs_open {
                    cur.resource_spans.push(ResourceSpans {
                        resource: rs.resource.clone(),
                        scope_spans: Vec::new(),
                        schema_url: rs.schema_url.clone(),
                    });
                    rs_open = true;
                    cur_size += rs_head;
                }
                let rs_cur = cur.resource_spans.last_mut().expect("just pushed");
                if !ss_open {
                    rs_cur.scope_spans.push(ScopeSpans {
                        scope: ss.scope.clone(),
                        spans: Vec::new(),
                        schema_url: ss.schema_url.clone(),
                    });
                    ss_open = true;
                    cur_size += ss_head;
                }
                rs_cur
                    .scope_spans
                    .last_mut()
                    .expect("just pushed")
                    .spans
                    .push(span);
                cur_size += cost;
                cur_spans += 1;
            }
        }
    }
    if cur_spans > 0 {
        out.push((cur, cur_spans));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracegate_proto::otlp::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
    use tracegate_proto::otlp::resource::v1::Resource;
    use tracegate_proto::otlp::trace::v1::Span;

    fn span(i: u64, attr_bytes: usize) -> Span {
        Span {
            trace_id: vec![1; 16],
            span_id: (i + 1).to_be_bytes().to_vec(),
            name: format!("s{i}"),
            attributes: vec![KeyValue {
                key: "gen_ai.prompt".into(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::StringValue("x".repeat(attr_bytes))),
                }),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn request(
        resources: u64,
        scopes: u64,
        spans: u64,
        attr_bytes: usize,
    ) -> ExportTraceServiceRequest {
        let mut n = 0;
        ExportTraceServiceRequest {
            resource_spans: (0..resources)
                .map(|r| ResourceSpans {
                    resource: Some(Resource {
                        attributes: vec![KeyValue {
                            key: "service.name".into(),
                            value: Some(AnyValue {
                                value: Some(any_value::Value::StringValue(format!("svc{r}"))),
                            }),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }),
                    scope_spans: (0..scopes)
                        .map(|s| ScopeSpans {
                            scope: Some(InstrumentationScope {
                                name: format!("scope{s}"),
                                ..Default::default()
                            }),
                            spans: (0..spans)
                                .map(|_| {
                                    n += 1;
                                    span(n, attr_bytes)
                                })
                                .collect(),
                            schema_url: "https://opentelemetry.io/schemas/1.0".into(),
                        })
                        .collect(),
                    schema_url: String::new(),
                })
                .collect(),
        }
    }

    fn batch(req: &ExportTraceServiceRequest) -> Batch {
        Batch {
            schema_version: 1,
            batch_id: Bytes::from_static(&[7; 16]),
            org_id: "org".into(),
            project_id: "proj".into(),
            span_count: req
                .resource_spans
                .iter()
                .flat_map(|r| &r.scope_spans)
                .map(|s| s.spans.len() as u32)
                .sum(),
            otlp_request: Bytes::from(req.encode_to_vec()),
            ..Default::default()
        }
    }

    /// (resource service name, scope name, span name) of every span, in order.
    fn flatten(req: &ExportTraceServiceRequest) -> Vec<(String, String, String)> {
        let mut v = vec![];
        for rs in &req.resource_spans {
            let r = format!("{:?}", rs.resource);
            for ss in &rs.scope_spans {
                let s = format!("{:?}{}", ss.scope, ss.schema_url);
                for sp in &ss.spans {
                    v.push((r.clone(), s.clone(), sp.name.clone()));
                }
            }
        }
        v
    }

    #[test]
    fn small_batch_is_one_unsplit_message() {
        let req = request(1, 1, 10, 100);
        let b = batch(&req);
        let m = to_messages(b.clone(), PartitionKey::Project, 1_000_000).unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].key, b"org/proj");
        assert_eq!(Batch::decode(&m[0].value[..]).unwrap(), b);
        let m = to_messages(b.clone(), PartitionKey::Batch, 1_000_000).unwrap();
        assert_eq!(m[0].key, vec![7; 16]);
    }

    #[test]
    fn large_batch_is_split_in_order_without_loss_and_every_part_fits() {
        let req = request(3, 2, 40, 3_000); // ~720 KB
        let b = batch(&req);
        let limit = 64 * 1024;
        let msgs = to_messages(b.clone(), PartitionKey::Project, limit).unwrap();
        assert!(msgs.len() > 5, "{}", msgs.len());
        let mut all = vec![];
        for (i, m) in msgs.iter().enumerate() {
            assert!(
                m.value.len() + m.key.len() + RECORD_OVERHEAD <= limit,
                "part {i}"
            );
            let p = Batch::decode(&m.value[..]).unwrap();
            assert_eq!(p.batch_id, b.batch_id);
            assert_eq!(p.project_id, "proj");
            assert_eq!(p.part_index, i as u32);
            assert_eq!(p.part_count, msgs.len() as u32);
            let r = ExportTraceServiceRequest::decode(p.otlp_request).unwrap();
            assert_eq!(p.span_count as usize, flatten(&r).len());
            assert_eq!(m.spans, p.span_count);
            all.extend(flatten(&r));
        }
        assert_eq!(all, flatten(&req));
    }

    #[test]
    fn a_span_larger_than_the_limit_is_refused_not_dropped() {
        let req = request(1, 1, 3, 40_000);
        let e = to_messages(batch(&req), PartitionKey::Project, 20_000).unwrap_err();
        assert!(
            matches!(e, SplitError::SpanTooLarge { limit: 20_000, .. }),
            "{e:?}"
        );
        assert!(e.to_string().contains("kafka.message_max_bytes"));
    }

    /// `req` with every attribute value replaced by incompressible text of the same length.
    fn noisy(mut req: ExportTraceServiceRequest) -> ExportTraceServiceRequest {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for sp in req
            .resource_spans
            .iter_mut()
            .flat_map(|r| &mut r.scope_spans)
            .flat_map(|s| &mut s.spans)
        {
            for kv in &mut sp.attributes {
                if let Some(AnyValue {
                    value: Some(any_value::Value::StringValue(v)),
                }) = &mut kv.value
                {
                    *v = (0..v.len())
                        .map(|_| {
                            x ^= x << 13;
                            x ^= x >> 7;
                            x ^= x << 17;
                            char::from(b'a' + (x % 26) as u8)
                        })
                        .collect();
                }
            }
        }
        req
    }

    fn zstd_batch(req: &ExportTraceServiceRequest) -> Batch {
        let plain = req.encode_to_vec();
        let mut b = batch(req);
        b.schema_version = 2;
        b.otlp_request = zstd::encode_all(&plain[..], 3).unwrap().into();
        b.otlp_request_encoding = tracegate_proto::v1::PayloadEncoding::Zstd as i32;
        b.otlp_request_plain_len = plain.len() as u64;
        b
    }

    #[test]
    fn a_compressed_batch_that_fits_goes_as_it_is() {
        // ~720 KB plain, a few KB compressed: one message, the compressed bytes unchanged.
        let req = request(3, 2, 40, 3_000);
        let b = zstd_batch(&req);
        assert!(b.otlp_request.len() < 20_000);
        let m = to_messages(b.clone(), PartitionKey::Project, 64 * 1024).unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(Batch::decode(&m[0].value[..]).unwrap(), b);
    }

    #[test]
    fn a_compressed_batch_too_large_is_split_into_plain_parts() {
        let req = noisy(request(3, 2, 40, 3_000));
        let b = zstd_batch(&req);
        let limit = 64 * 1024;
        assert!(b.otlp_request.len() > limit);
        let msgs = to_messages(b.clone(), PartitionKey::Project, limit).unwrap();
        assert!(msgs.len() > 5, "{}", msgs.len());
        let mut all = vec![];
        for (i, m) in msgs.iter().enumerate() {
            assert!(m.value.len() + m.key.len() + RECORD_OVERHEAD <= limit);
            let p = Batch::decode(&m.value[..]).unwrap();
            assert_eq!((p.schema_version, p.otlp_request_encoding), (1, 0));
            assert_eq!(p.otlp_request_plain_len, 0);
            assert_eq!(
                (p.part_index, p.batch_id.clone()),
                (i as u32, b.batch_id.clone())
            );
            let r = ExportTraceServiceRequest::decode(p.otlp_request).unwrap();
            assert_eq!(p.span_count as usize, flatten(&r).len());
            all.extend(flatten(&r));
        }
        assert_eq!(all, flatten(&req));
        // A corrupt compressed payload is an error, never parts of garbage.
        let mut bad = b;
        bad.otlp_request_plain_len += 1;
        assert!(matches!(
            to_messages(bad, PartitionKey::Project, limit),
            Err(SplitError::Decode(_))
        ));
    }
}
