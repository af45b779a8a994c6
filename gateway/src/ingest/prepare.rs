//! The CPU-heavy step of a request, run on a thread of its CPU class: decompress (capped),
//! scan-validate the protobuf bytes (the fast path) or decode, validate and stamp with prost
//! (the slow path), and choose the envelope's payload (the client's compressed body forwarded,
//! or plain bytes, or zstd by the gateway).

use bytes::Bytes;
use prost::Message;
use tracegate_otlp::codec::{self as decode, Compression, Format};
use tracegate_otlp::envelope;
use tracegate_otlp::prune;
use tracegate_otlp::scan::{self, Claim};
use tracegate_otlp::stamp::stamp_tenant;
use tracegate_otlp::validate;
use tracegate_pipeline::dedup;
use tracegate_proto::otlp::collector::trace::v1::ExportTraceServiceRequest;
use tracegate_proto::v1::{Batch, PayloadEncoding};

use crate::admission::BytesPermit;
use crate::auth::authenticator::Principal;
use crate::config::LimitsConfig;
use crate::error::ApiError;
use crate::metrics as m;

/// Result of the CPU-heavy step.
pub struct Prepared {
    /// The envelope payload, encoded as `encoding` says.
    pub otlp_request: Bytes,
    /// Identity, or the client's zstd / gzip body forwarded as it is (`otlp_request` is then
    /// the body as received), or zstd by the gateway (`compress_plain`).
    pub encoding: PayloadEncoding,
    /// Size of the payload once decompressed (`otlp_request_plain_len`). Not always
    /// `decompressed_len`: a request with spans removed or a tenant stamped is re-encoded.
    pub plain_len: usize,
    pub outcome: validate::Outcome,
    /// Size of the request as received, decompressed (metrics, quota).
    pub decompressed_len: usize,
    /// `tracegate_pipeline::dedup::digest` of the request as received, decompressed: the same
    /// for the same request sent again, whatever its compression or transport.
    pub digest: u128,
}

impl Prepared {
    /// The `Prepared` of a request decoded with prost (any signal): the client's plain bytes
    /// when nothing was removed or stamped from a protobuf body (no re-encode), else the
    /// request re-`encode`d.
    pub fn decoded(
        plain: &Bytes,
        format: Format,
        encode: impl FnOnce() -> Vec<u8>,
        outcome: validate::Outcome,
        digest: u128,
    ) -> Prepared {
        let otlp_request = if !outcome.modified && format == Format::Protobuf {
            plain.clone()
        } else {
            Bytes::from(encode())
        };
        Prepared {
            plain_len: otlp_request.len(),
            otlp_request,
            encoding: PayloadEncoding::Identity,
            outcome,
            decompressed_len: plain.len(),
            digest,
        }
    }

    /// Compresses a plain payload with zstd at `level`: one shot over contiguous bytes, with a
    /// context kept per thread, on the blocking pool next to the scan (so on every core, not in
    /// librdkafka's broker threads), and once: the writer decompresses it once and nothing in
    /// between compresses it again. Measured per gateway CPU-second on loadtest's realistic
    /// body: 603 K spans at level 1 vs 511 K with librdkafka's zstd level 1 (docs/kafka.md).
    /// The reservation shrinks to what is still held. Forwarded and tiny payloads are left
    /// alone.
    pub fn compress_plain(&mut self, level: i32, permit: &mut BytesPermit) {
        const MIN_BYTES: usize = 4096;
        if self.encoding != PayloadEncoding::Identity
            || self.otlp_request.len() < MIN_BYTES
            || self.otlp_request.len() > envelope::MAX_PLAIN_BYTES
        {
            return;
        }
        match tracegate_pipeline::zstd_once::compress_exact(&self.otlp_request, level, false) {
            Ok(z) => {
                self.otlp_request = Bytes::from(z);
                self.encoding = PayloadEncoding::Zstd;
                permit.shrink_to(self.otlp_request.len());
            }
            // Not expected (bounded input, valid level); the payload then goes out plain.
            Err(e) => {
                tracing::warn!(error = %e, "payload zstd compression failed; sending it plain")
            }
        }
    }

    /// Sets `batch`'s payload fields, and the schema version they need (traces: 1 for identity,
    /// so such envelopes are what older builds wrote, 2 for a compressed payload; other
    /// signals 3). Set `batch.signal` first.
    pub fn set_payload(&self, batch: &mut Batch) {
        batch.schema_version = tracegate_proto::schema_version_of(batch.signal(), self.encoding);
        batch.otlp_request = self.otlp_request.clone();
        batch.otlp_request_encoding = self.encoding as i32;
        batch.otlp_request_plain_len = match self.encoding {
            PayloadEncoding::Identity => 0,
            _ => self.plain_len as u64,
        };
    }
}

/// The envelope encoding under which a clean body in `compression` is forwarded as it is.
/// Deflate is not forwarded (two wire forms, rarely used): it goes out plain.
pub(super) fn forwarded_encoding(compression: Compression) -> Option<PayloadEncoding> {
    match compression {
        Compression::Zstd => Some(PayloadEncoding::Zstd),
        Compression::Gzip => Some(PayloadEncoding::Gzip),
        Compression::Identity | Compression::Deflate => None,
    }
}

/// Which tenant value a claiming attribute gets: by its name (`…org…`, `…workspace…`, else the
/// project).
pub(crate) fn tenant_value<'a>(key: &str, p: &'a Principal) -> &'a str {
    if key.contains("org") {
        &p.org_id
    } else if key.contains("workspace") {
        &p.workspace_id
    } else {
        &p.project_id
    }
}

/// The tenant claims of `keys` (`auth.tenant_attribute_keys`) for principal `p`: what the scan
/// checks and the prost path stamps.
pub fn tenant_claims<'a>(keys: &'a [String], p: &'a Principal) -> Vec<Claim<'a>> {
    keys.iter()
        .map(|k| Claim {
            key: k,
            want: tenant_value(k, p),
        })
        .collect()
}

/// `prepare`'s fast path alone, for a plain protobuf body that `Ingest::export` decodes on the
/// async worker: `Ok` when the scan proves the request clean (the same `Prepared` as `prepare`
/// gives), else the body and permit back, for `prepare` on a decode thread. So the work done
/// inline is bounded by a scan; the slow path (prost decode, validation, re-encode), which an
/// adversarial body can make ms long, never runs there.
pub fn prepare_if_clean(
    body: Bytes,
    limits: &LimitsConfig,
    permit: BytesPermit,
    tenant: Option<(&[String], &Principal)>,
) -> Result<(Prepared, BytesPermit), (Bytes, BytesPermit)> {
    if body.len() > limits.max_request_bytes {
        // `prepare` gives the answer (413).
        return Err((body, permit));
    }
    let claims = tenant.map_or_else(Vec::new, |(keys, p)| tenant_claims(keys, p));
    match scan::scan(&body, &limits.span_limits(), &claims) {
        Ok(spans) => {
            metrics::counter!(m::VALIDATION_PATH, "path" => "scan").increment(1);
            let (n, digest) = (body.len(), dedup::digest(&body));
            Ok((
                clean(body, PayloadEncoding::Identity, spans, n, digest),
                permit,
            ))
        }
        Err(_) => Err((body, permit)),
    }
}

/// The `Prepared` of a request the scan proved clean: `spans` accepted, `otlp_request` forwarded
/// as `encoding`, `decompressed_len` plain bytes.
fn clean(
    otlp_request: Bytes,
    encoding: PayloadEncoding,
    spans: usize,
    decompressed_len: usize,
    digest: u128,
) -> Prepared {
    Prepared {
        digest,
        otlp_request,
        encoding,
        plain_len: decompressed_len,
        outcome: validate::Outcome {
            accepted: spans,
            ..Default::default()
        },
        decompressed_len,
    }
}

/// The `Prepared` of a request the scan proved clean, `items` accepted: the client's compressed
/// body (`original`, with its envelope encoding) when it may be forwarded, the plain bytes
/// otherwise. Forwarding drops the plain buffer and shrinks the reservation back to the body.
pub(super) fn forward_clean(
    plain: Bytes,
    original: Option<(PayloadEncoding, Bytes)>,
    items: usize,
    digest: u128,
    permit: &mut BytesPermit,
) -> Prepared {
    let decompressed_len = plain.len();
    let (otlp_request, encoding) = match original {
        Some((enc, body)) if decompressed_len <= envelope::MAX_PLAIN_BYTES => {
            drop(plain);
            permit.shrink_to(body.len());
            (body, enc)
        }
        _ => (plain, PayloadEncoding::Identity),
    };
    clean(otlp_request, encoding, items, decompressed_len, digest)
}

/// Decodes `plain` as `T` (any signal's request). A value nested too deep for prost fails the
/// whole decode: then `prune` cuts the items holding one out of the protobuf bytes and the
/// rest is decoded; returns the request and how many items were cut (for `partial_success`).
pub(super) fn decode_pruning<T>(
    format: Format,
    plain: &[u8],
    max_depth: usize,
    prune: fn(&[u8], usize) -> Option<prune::Pruned>,
) -> Result<(T, usize), ApiError>
where
    T: Message + Default + serde::de::DeserializeOwned,
{
    match decode::decode_as(format, plain) {
        Ok(req) => Ok((req, 0)),
        Err(e) if format == Format::Protobuf => match prune(plain, max_depth) {
            Some(p) => Ok((decode::decode_as(format, &p.request)?, p.rejected)),
            None => Err(e.into()),
        },
        Err(e) => Err(e.into()),
    }
}

/// Decompress (capped), then scan-validate (protobuf) or decode, validate and stamp. Blocking:
/// run it on the blocking pool.
///
/// A zstd or gzip protobuf body that the scan proves clean (nothing to remove or stamp) is
/// forwarded as the client sent it (`Prepared::encoding`), so the gateway's compression work is
/// the client's: the Kafka producer and the archive then compress compressed bytes, and the
/// plain buffer is dropped here (the reservation shrinks back to the body).
pub fn prepare(
    format: Format,
    compression: Compression,
    body: Bytes,
    limits: &LimitsConfig,
    mut permit: BytesPermit,
    tenant: Option<(&[String], &Principal)>,
) -> Result<(Prepared, BytesPermit), ApiError> {
    let span_limits = limits.span_limits();
    let claims = tenant.map_or_else(Vec::new, |(keys, p)| tenant_claims(keys, p));
    let forward = forwarded_encoding(compression);
    // Keep the body only when it may be forwarded (a refcount, no copy).
    let original = forward.map(|_| body.clone());
    let plain = decode::decompress(compression, body, limits.max_request_bytes)?;
    // Over the bytes as the client encoded them, before anything is removed or stamped, so a
    // request sent again has the same digest (~0.03 ns/byte: xxh3 at ~30 GB/s).
    let digest = dedup::digest(&plain);
    // Account the decompressed bytes before materialising anything from them. The reservation
    // grows to cover them (it already covers the raw body), so nothing is counted twice.
    permit.grow_to(plain.len())?;
    if format == Format::Protobuf {
        // Fast path: a scan proves the request clean (all spans valid, nothing to stamp), so the
        // client's bytes go on as they are and no span is ever materialised.
        if let Ok(spans) = scan::scan(&plain, &span_limits, &claims) {
            metrics::counter!(m::VALIDATION_PATH, "path" => "scan").increment(1);
            let prepared = forward_clean(plain, forward.zip(original), spans, digest, &mut permit);
            return Ok((prepared, permit));
        }
    }
    // Slow path (JSON, or anything the scan could not prove clean): prost gives the answer,
    // the per-span rejections and their messages.
    metrics::counter!(m::VALIDATION_PATH, "path" => "prost").increment(1);
    drop(original);
    let (mut req, deep_spans): (ExportTraceServiceRequest, usize) = decode_pruning(
        format,
        &plain,
        limits.max_attribute_depth,
        prune::prune_deep_spans,
    )?;
    let mut outcome = validate::validate(&mut req, &span_limits);
    outcome.reject_too_deep(
        deep_spans,
        limits.max_attribute_depth.min(prune::DECODER_DEPTH_LIMIT),
    );
    outcome.modified |= stamp_tenant(&mut req, &claims);
    let prepared = Prepared::decoded(&plain, format, || req.encode_to_vec(), outcome, digest);
    Ok((prepared, permit))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracegate_proto::otlp::collector::trace::v1::ExportTraceServiceRequest;
    use tracegate_proto::otlp::common::v1::KeyValue;
    use tracegate_proto::otlp::common::v1::{any_value::Value, AnyValue};
    use tracegate_proto::otlp::resource::v1::Resource;
    use tracegate_proto::otlp::trace::v1::ResourceSpans;

    #[test]
    fn claiming_attributes_are_overwritten() {
        let kv = |k: &str, v: &str| KeyValue {
            key: k.into(),
            value: Some(AnyValue {
                value: Some(Value::StringValue(v.into())),
            }),
            ..Default::default()
        };
        let mut req = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![
                        kv("tracegate.project_id", "victim"),
                        kv("tracegate.org_id", "evil-org"),
                        kv("service.name", "s"),
                    ],
                    ..Default::default()
                }),
                ..Default::default()
            }],
        };
        let p = Principal {
            org_id: "o".into(),
            project_id: "mine".into(),
            ..Default::default()
        };
        let keys = crate::config::AuthConfig::default().tenant_attribute_keys;
        assert!(stamp_tenant(&mut req, &tenant_claims(&keys, &p)));
        let attrs = &req.resource_spans[0].resource.as_ref().unwrap().attributes;
        assert_eq!(attrs[0], kv("tracegate.project_id", "mine"));
        assert_eq!(attrs[1], kv("tracegate.org_id", "o"));
        assert_eq!(attrs[2], kv("service.name", "s"));
        assert!(!stamp_tenant(&mut req, &tenant_claims(&keys, &p)));
    }
}

#[cfg(test)]
pub(super) mod forward_tests {
    use super::*;
    use std::io::Write;
    use tracegate_proto::otlp::collector::trace::v1::ExportTraceServiceRequest;
    use tracegate_proto::otlp::common::v1::KeyValue;
    use tracegate_proto::otlp::common::v1::{any_value::Value, AnyValue};
    use tracegate_proto::otlp::resource::v1::Resource;
    use tracegate_proto::otlp::trace::v1::{ResourceSpans, ScopeSpans, Span};

    use crate::admission::Admission;
    use tracegate_otlp::envelope::{plain_request, MAX_PLAIN_BYTES};

    fn request(claim: Option<&str>, bad_span: bool) -> ExportTraceServiceRequest {
        let mut spans: Vec<Span> = (0..50u64)
            .map(|i| Span {
                trace_id: vec![7; 16],
                span_id: (i + 1).to_be_bytes().to_vec(),
                name: format!("span-{i}"),
                ..Default::default()
            })
            .collect();
        if bad_span {
            spans[3].trace_id = vec![1, 2, 3];
        }
        let attributes = claim
            .map(|v| {
                vec![KeyValue {
                    key: "tracegate.project_id".into(),
                    value: Some(AnyValue {
                        value: Some(Value::StringValue(v.into())),
                    }),
                    ..Default::default()
                }]
            })
            .unwrap_or_default();
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes,
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    /// A clean request of `n` spans (as `request(None, false)`, more spans).
    fn request_with_spans_n(n: u64) -> ExportTraceServiceRequest {
        let mut r = request(None, false);
        let spans = &mut r.resource_spans[0].scope_spans[0].spans;
        spans.truncate(1);
        let one = spans[0].clone();
        for i in 1..n {
            let mut s = one.clone();
            s.span_id = (i + 1).to_be_bytes().to_vec();
            s.name = format!("span-{i}");
            spans.push(s);
        }
        r
    }

    fn compress(c: Compression, data: &[u8]) -> Bytes {
        match c {
            Compression::Identity => Bytes::copy_from_slice(data),
            Compression::Zstd => zstd::encode_all(data, 3).unwrap().into(),
            Compression::Gzip => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(data).unwrap();
                e.finish().unwrap().into()
            }
            Compression::Deflate => {
                let mut e =
                    flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(data).unwrap();
                e.finish().unwrap().into()
            }
        }
    }

    /// What a prepare step of a `len`-byte body needs in these tests: default limits, the
    /// body's reservation, project "mine" of org "o", the default tenant attribute keys.
    pub(in crate::ingest) fn fixture(
        len: usize,
    ) -> (LimitsConfig, BytesPermit, Principal, Vec<String>) {
        let permit = Admission::new(1 << 30).try_reserve(len).unwrap();
        let p = Principal {
            org_id: "o".into(),
            project_id: "mine".into(),
            ..Default::default()
        };
        let keys = crate::config::AuthConfig::default().tenant_attribute_keys;
        (LimitsConfig::default(), permit, p, keys)
    }

    /// `prepare` as `Ingest::export` runs it, then the envelope it would publish.
    fn run(format: Format, c: Compression, body: Bytes) -> (Prepared, Batch, BytesPermit) {
        let (limits, permit, p, keys) = fixture(body.len());
        let (prepared, permit) =
            prepare(format, c, body, &limits, permit, Some((&keys, &p))).unwrap();
        let mut batch = Batch::default();
        prepared.set_payload(&mut batch);
        (prepared, batch, permit)
    }

    #[test]
    fn the_inline_fast_path_matches_prepare_and_hands_back_what_it_cannot_prove_clean() {
        let admission = Admission::new(1 << 30);
        let p = Principal {
            org_id: "o".into(),
            project_id: "mine".into(),
            ..Default::default()
        };
        let keys = crate::config::AuthConfig::default().tenant_attribute_keys;
        let limits = LimitsConfig::default();
        let fast = |body: Bytes, limits: &LimitsConfig| {
            let permit = admission.try_reserve(body.len()).unwrap();
            prepare_if_clean(body, limits, permit, Some((&keys, &p)))
        };
        // Clean: the same answer and payload as `prepare`, the client's bytes uncopied.
        let clean = Bytes::from(request(Some("mine"), false).encode_to_vec());
        let (got, _) = fast(clean.clone(), &limits).ok().unwrap();
        let (want, _, _) = run(Format::Protobuf, Compression::Identity, clean.clone());
        assert_eq!(got.otlp_request.as_ptr(), clean.as_ptr());
        assert_eq!(
            (got.outcome.accepted, got.decompressed_len, got.plain_len),
            (want.outcome.accepted, want.decompressed_len, want.plain_len)
        );
        assert_eq!(got.encoding, PayloadEncoding::Identity);
        // An invalid span, a tenant claim to stamp, a body over the cap: handed back as they
        // came, for `prepare` on a decode thread.
        let bad = Bytes::from(request(Some("mine"), true).encode_to_vec());
        let claim = Bytes::from(request(Some("theirs"), false).encode_to_vec());
        let small = LimitsConfig {
            max_request_bytes: clean.len() - 1,
            ..LimitsConfig::default()
        };
        for (body, limits) in [(bad, &limits), (claim, &limits), (clean, &small)] {
            let (back, permit) = fast(body.clone(), limits).err().unwrap();
            assert_eq!(back.as_ptr(), body.as_ptr());
            assert_eq!(permit.bytes(), body.len());
        }
    }

    #[test]
    fn clean_zstd_and_gzip_bodies_are_forwarded_as_sent() {
        let plain = request(Some("mine"), false).encode_to_vec();
        for (c, enc) in [
            (Compression::Zstd, PayloadEncoding::Zstd),
            (Compression::Gzip, PayloadEncoding::Gzip),
        ] {
            let body = compress(c, &plain);
            assert!(body.len() < plain.len());
            let (prepared, batch, permit) = run(Format::Protobuf, c, body.clone());
            assert_eq!(prepared.outcome.accepted, 50);
            assert_eq!(prepared.decompressed_len, plain.len());
            // The very bytes the client sent, not a copy.
            assert_eq!(batch.otlp_request, body);
            assert_eq!(batch.otlp_request.as_ptr(), body.as_ptr());
            assert_eq!(batch.otlp_request_encoding, enc as i32);
            assert_eq!(batch.otlp_request_plain_len, plain.len() as u64);
            assert_eq!(batch.schema_version, 2);
            // The plain buffer is gone: the reservation is back to the body.
            assert_eq!(permit.bytes(), body.len());
            // Through the encoded envelope, as a reader sees it.
            let read = Batch::decode(Bytes::from(batch.encode_to_vec())).unwrap();
            assert_eq!(plain_request(&read, MAX_PLAIN_BYTES).unwrap(), plain);
            assert!(matches!(
                plain_request(&read, 1000),
                Err(tracegate_otlp::envelope::PayloadError::TooLarge { .. })
            ));
        }
    }

    /// `kafka.compression = "payload_zstd"`: a plain payload is compressed once here and reads
    /// back exactly; forwarded and tiny payloads are left as they are.
    #[test]
    fn plain_payloads_are_compressed_once_when_asked() {
        let plain = request_with_spans_n(500).encode_to_vec();
        assert!(plain.len() > 4096);
        let (mut prepared, _, mut permit) = run(
            Format::Protobuf,
            Compression::Identity,
            plain.clone().into(),
        );
        let held = permit.bytes();
        prepared.compress_plain(1, &mut permit);
        assert_eq!(prepared.encoding, PayloadEncoding::Zstd);
        assert_eq!(prepared.decompressed_len, plain.len());
        assert!(prepared.otlp_request.len() < plain.len() / 2);
        assert!(
            permit.bytes() < held,
            "the reservation shrinks to the compressed bytes"
        );
        let mut batch = Batch::default();
        prepared.set_payload(&mut batch);
        assert_eq!(batch.schema_version, 2);
        let read = Batch::decode(Bytes::from(batch.encode_to_vec())).unwrap();
        assert_eq!(plain_request(&read, MAX_PLAIN_BYTES).unwrap(), plain);

        // Forwarded client bytes are not compressed again.
        let body = compress(Compression::Zstd, &plain);
        let (mut fwd, _, mut permit) = run(Format::Protobuf, Compression::Zstd, body.clone());
        fwd.compress_plain(1, &mut permit);
        assert_eq!(fwd.otlp_request.as_ptr(), body.as_ptr());
        // A tiny payload is not worth a frame.
        let tiny = request_with_spans_n(1).encode_to_vec();
        assert!(tiny.len() < 4096);
        let (mut small, _, mut permit) =
            run(Format::Protobuf, Compression::Identity, tiny.clone().into());
        small.compress_plain(1, &mut permit);
        assert_eq!(small.encoding, PayloadEncoding::Identity);
        assert_eq!(small.otlp_request, tiny);
    }

    #[test]
    fn everything_else_goes_out_plain() {
        let clean = request(None, false);
        let plain = clean.encode_to_vec();
        let json = serde_json::to_vec(&clean).unwrap();
        let cases: Vec<(Format, Compression, Vec<u8>, &str)> = vec![
            (
                Format::Protobuf,
                Compression::Identity,
                plain.clone(),
                "identity",
            ),
            (
                Format::Protobuf,
                Compression::Deflate,
                plain.clone(),
                "deflate",
            ),
            (Format::Json, Compression::Zstd, json.clone(), "json zstd"),
            (Format::Json, Compression::Gzip, json, "json gzip"),
            (
                Format::Protobuf,
                Compression::Zstd,
                request(Some("victim"), false).encode_to_vec(),
                "needs stamping",
            ),
            (
                Format::Protobuf,
                Compression::Gzip,
                request(None, true).encode_to_vec(),
                "an invalid span",
            ),
        ];
        for (format, c, data, what) in cases {
            let body = compress(c, &data);
            let (prepared, batch, _) = run(format, c, body);
            assert_eq!(prepared.encoding, PayloadEncoding::Identity, "{what}");
            assert_eq!(batch.otlp_request_encoding, 0, "{what}");
            assert_eq!(batch.otlp_request_plain_len, 0, "{what}");
            assert_eq!(batch.schema_version, 1, "{what}");
            let out = plain_request(&batch, 0).unwrap();
            let req = ExportTraceServiceRequest::decode(out).unwrap();
            let spans: usize = req.resource_spans[0].scope_spans[0].spans.len();
            match what {
                "an invalid span" => assert_eq!(spans, 49),
                "needs stamping" => {
                    assert_eq!(spans, 50);
                    assert_eq!(req, request(Some("mine"), false), "{what}");
                }
                _ => assert_eq!(req, clean, "{what}"),
            }
        }
    }
}
