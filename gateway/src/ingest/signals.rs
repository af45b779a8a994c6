//! The CPU-heavy step and the export of the signals other than traces: logs (`/v1/logs`,
//! `LogsService/Export`) and metrics (`/v1/metrics`, `MetricsService/Export`). Decompress
//! (capped), decode (protobuf or JSON), validate each record or data point
//! (`tracegate_otlp::{logs, metrics}`), stamp the tenant, and hand the result to the shared
//! `accept` (quota, envelope with the signal, queue). These have no scan fast path: a clean
//! protobuf request still keeps the client's bytes (no re-encode), but it is decoded once.
//!
//! A value nested deeper than prost's limit (100) fails the whole request (400); spans have a
//! pruning pass for that, these signals do not yet.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use prost::Message;
use tracegate_otlp::codec::{self as decode, Compression, Format};
use tracegate_otlp::logs;
use tracegate_otlp::metrics as otlp_metrics;
use tracegate_otlp::prune;
use tracegate_otlp::scan::Claim;
use tracegate_otlp::validate::{Outcome, SpanLimits};
use tracegate_pipeline::dedup;
use tracegate_proto::otlp::collector::logs::v1::ExportLogsServiceRequest;
use tracegate_proto::otlp::collector::metrics::v1::ExportMetricsServiceRequest;
use tracegate_proto::v1::Signal;

use super::prepare::{decode_pruning, forward_clean, forwarded_encoding, tenant_claims, Prepared};
use super::{Ingest, RawRequest, SignalKind};
use crate::admission::BytesPermit;
use crate::auth::authenticator::Principal;
use crate::config::LimitsConfig;
use crate::error::ApiError;
use crate::metrics as m;

/// An export request of a signal decoded whole (not scanned), with its checks.
pub trait Decoded: Message + Default + serde::de::DeserializeOwned + Send + 'static {
    const KIND: SignalKind;
    /// What `partial_success.error_message` counts.
    const NOUN: &'static str;
    type Response: Message;
    fn validate(&mut self, l: &SpanLimits) -> Outcome;
    fn stamp(&mut self, claims: &[Claim<'_>]) -> bool;
    fn response(rejected: usize, error_message: String) -> Self::Response;
    /// The success body in the request's format.
    fn encode_response(format: Format, r: &Self::Response) -> Bytes;
    /// The signal's scan fast path over protobuf bytes, if it has one: `Some(items)` only when
    /// decode + validate + stamp would accept every item and change nothing.
    fn scan(_buf: &[u8], _l: &SpanLimits, _claims: &[Claim<'_>]) -> Option<usize> {
        None
    }
    /// The request with its items holding a value nested too deep for prost cut out (so the
    /// rest decodes, and they are rejected one by one), if the signal can do that.
    fn prune_deep(_buf: &[u8], _max_depth: usize) -> Option<prune::Pruned> {
        None
    }
}

impl Decoded for ExportLogsServiceRequest {
    const KIND: SignalKind = SignalKind {
        signal: Signal::Logs,
        items: "log records",
        accepted_metric: m::LOG_RECORDS_ACCEPTED,
        rejected_metric: m::LOG_RECORDS_REJECTED,
        // "logs" in ASCII: the same bytes sent as another signal are another request.
        dedup_salt: 0x6c6f_6773,
    };
    const NOUN: &'static str = logs::NOUN;
    type Response = tracegate_proto::otlp::collector::logs::v1::ExportLogsServiceResponse;
    fn validate(&mut self, l: &SpanLimits) -> Outcome {
        logs::validate(self, l)
    }
    fn stamp(&mut self, claims: &[Claim<'_>]) -> bool {
        logs::stamp_tenant(self, claims)
    }
    fn response(rejected: usize, error_message: String) -> Self::Response {
        logs::export_response(rejected, error_message)
    }
    fn encode_response(format: Format, r: &Self::Response) -> Bytes {
        logs::encode_export_response(format, r)
    }
    fn scan(buf: &[u8], l: &SpanLimits, claims: &[Claim<'_>]) -> Option<usize> {
        tracegate_otlp::scan_logs::scan_logs(buf, l, claims).ok()
    }
    fn prune_deep(buf: &[u8], max_depth: usize) -> Option<prune::Pruned> {
        prune::prune_deep_log_records(buf, max_depth)
    }
}

impl Decoded for ExportMetricsServiceRequest {
    const KIND: SignalKind = SignalKind {
        signal: Signal::Metrics,
        items: "data points",
        accepted_metric: m::DATA_POINTS_ACCEPTED,
        rejected_metric: m::DATA_POINTS_REJECTED,
        // "metrics" in ASCII.
        dedup_salt: 0x006d_6574_7269_6373,
    };
    const NOUN: &'static str = otlp_metrics::NOUN;
    type Response = tracegate_proto::otlp::collector::metrics::v1::ExportMetricsServiceResponse;
    fn validate(&mut self, l: &SpanLimits) -> Outcome {
        otlp_metrics::validate(self, l)
    }
    fn stamp(&mut self, claims: &[Claim<'_>]) -> bool {
        otlp_metrics::stamp_tenant(self, claims)
    }
    fn response(rejected: usize, error_message: String) -> Self::Response {
        otlp_metrics::export_response(rejected, error_message)
    }
    fn encode_response(format: Format, r: &Self::Response) -> Bytes {
        otlp_metrics::encode_export_response(format, r)
    }
    fn prune_deep(buf: &[u8], max_depth: usize) -> Option<prune::Pruned> {
        prune::prune_deep_data_points(buf, max_depth)
    }
}

/// Decompress, decode, validate and stamp a `T` request. Blocking: run it on the blocking pool.
pub fn prepare_decoded<T: Decoded>(
    format: Format,
    compression: Compression,
    body: Bytes,
    limits: &LimitsConfig,
    mut permit: BytesPermit,
    tenant: (&[String], &Principal),
) -> Result<(Prepared, BytesPermit), ApiError> {
    // Kept (a refcount) while the body may yet be forwarded as the client compressed it.
    let original = forwarded_encoding(compression).map(|enc| (enc, body.clone()));
    let plain = decode::decompress(compression, body, limits.max_request_bytes)?;
    let digest = dedup::digest(&plain);
    permit.grow_to(plain.len())?;
    let claims = tenant_claims(tenant.0, tenant.1);
    if format == Format::Protobuf {
        // A clean request is forwarded as its bytes (compressed as the client sent them, as for
        // spans), never decoded (`T::scan`).
        if let Some(accepted) = T::scan(&plain, &limits.span_limits(), &claims) {
            let prepared = forward_clean(plain, original, accepted, digest, &mut permit);
            return Ok((prepared, permit));
        }
    }
    drop(original);
    let (mut req, deep): (T, usize) =
        decode_pruning(format, &plain, limits.max_attribute_depth, T::prune_deep)?;
    let mut outcome = req.validate(&limits.span_limits());
    let depth = limits.max_attribute_depth.min(prune::DECODER_DEPTH_LIMIT);
    outcome.reject_too_deep_items(deep, depth, T::NOUN);
    outcome.modified |= req.stamp(&claims);
    let prepared = Prepared::decoded(&plain, format, || req.encode_to_vec(), outcome, digest);
    Ok((prepared, permit))
}

impl Ingest {
    /// Export of a request of `signal`, answered in its format: the transports' one call.
    pub async fn export_signal(
        &self,
        signal: Signal,
        principal: &Arc<Principal>,
        raw: RawRequest,
    ) -> Result<Bytes, ApiError> {
        match signal {
            Signal::Traces => {
                let format = raw.format;
                let resp = self.export(principal, raw).await?;
                Ok(tracegate_otlp::response::encode_export_response(
                    format, &resp,
                ))
            }
            Signal::Logs => {
                self.export_decoded::<ExportLogsServiceRequest>(principal, raw)
                    .await
            }
            Signal::Metrics => {
                self.export_decoded::<ExportMetricsServiceRequest>(principal, raw)
                    .await
            }
        }
    }

    /// Export of a decoded signal (`T`: logs or metrics), answered in the request's format.
    pub async fn export_decoded<T: Decoded>(
        &self,
        principal: &Arc<Principal>,
        raw: RawRequest,
    ) -> Result<Bytes, ApiError> {
        let decoding = Instant::now();
        let (class, slot) = self.decode_slot(principal).await;
        drop(raw.queued);
        let (limits, keys, p) = (
            self.limits.clone(),
            self.tenant_attribute_keys.clone(),
            principal.clone(),
        );
        let (format, compression, body, permit) =
            (raw.format, raw.compression, raw.body, raw.permit);
        let zstd_level = self.payload_zstd_level;
        let (prepared, permit) = tracegate_pipeline::cpu::run(class, move || {
            let _slot = slot;
            let (mut prepared, mut permit) =
                prepare_decoded::<T>(format, compression, body, &limits, permit, (&keys, &p))?;
            // `kafka.compression = "payload_zstd"`: as for spans (`Ingest::prepare`).
            if let Some(level) = zstd_level {
                prepared.compress_plain(level, &mut permit);
            }
            Ok::<_, ApiError>((prepared, permit))
        })
        .await
        .map_err(|e| ApiError::internal(format!("decode task failed: {e}")))??;
        metrics::histogram!(m::REQUEST_DECODE_DURATION).record(decoding.elapsed().as_secs_f64());
        let meta = (raw.transport, raw.origin, class);
        let o = self
            .accept(principal, (prepared, raw.room), permit, meta, &T::KIND)
            .await?;
        let resp = T::response(o.rejected, o.error_message_for(T::NOUN));
        Ok(T::encode_response(format, &resp))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use tracegate_proto::v1::{Batch, PayloadEncoding};

    /// `prepare_decoded` for a logs body in `c`: (prepared, the envelope it would publish).
    fn run(c: Compression, body: Bytes) -> (Prepared, Batch, BytesPermit) {
        let (limits, permit, p, keys) = crate::ingest::prepare::forward_tests::fixture(body.len());
        let (prepared, permit) = prepare_decoded::<ExportLogsServiceRequest>(
            Format::Protobuf,
            c,
            body,
            &limits,
            permit,
            (&keys, &p),
        )
        .unwrap();
        let mut batch = Batch::default();
        prepared.set_payload(&mut batch);
        (prepared, batch, permit)
    }

    /// A clean compressed logs request goes on as the client compressed it (the scan proved it
    /// clean); one with a record to reject is decoded and goes on plain, without that record.
    #[test]
    fn clean_compressed_logs_are_forwarded_as_sent() {
        let mut req = tracegate_spangen::realistic_logs(40, 0, 3);
        let plain = req.encode_to_vec();
        let gzip = |data: &[u8]| -> Bytes {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(data).unwrap();
            e.finish().unwrap().into()
        };
        for (c, body, enc) in [
            (
                Compression::Zstd,
                Bytes::from(zstd::encode_all(&plain[..], 3).unwrap()),
                PayloadEncoding::Zstd,
            ),
            (Compression::Gzip, gzip(&plain), PayloadEncoding::Gzip),
        ] {
            let (prepared, batch, permit) = run(c, body.clone());
            assert_eq!(prepared.outcome.accepted, 40);
            assert_eq!(
                batch.otlp_request.as_ptr(),
                body.as_ptr(),
                "the client's bytes"
            );
            assert_eq!(batch.otlp_request_encoding, enc as i32);
            assert_eq!(batch.otlp_request_plain_len, plain.len() as u64);
            assert_eq!(permit.bytes(), body.len(), "the plain buffer is gone");
        }
        req.resource_logs[0].scope_logs[0].log_records[5].severity_number = 99;
        let dirty = req.encode_to_vec();
        let (prepared, batch, _) = run(Compression::Gzip, gzip(&dirty));
        assert_eq!(
            (prepared.outcome.accepted, prepared.outcome.rejected),
            (39, 1)
        );
        assert_eq!(
            batch.otlp_request_encoding,
            PayloadEncoding::Identity as i32
        );
        assert!(batch.otlp_request.len() < dirty.len());
    }
}
