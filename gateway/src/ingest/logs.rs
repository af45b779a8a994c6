//! The logs signal's CPU-heavy step and its export (OTLP `/v1/logs`, `LogsService/Export`):
//! decompress (capped), decode (protobuf or JSON), validate each log record
//! (`tracegate_otlp::logs`), stamp the tenant, and hand the result to the shared `accept`
//! (quota, envelope with `signal = LOGS`, queue). Log records have no scan fast path: a clean
//! protobuf request still keeps the client's bytes (no re-encode), but it is decoded once.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use prost::Message;
use tracegate_otlp::codec::{self as decode, Compression, Format};
use tracegate_otlp::logs;
use tracegate_pipeline::dedup;
use tracegate_proto::otlp::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use tracegate_proto::v1::{PayloadEncoding, Signal};

use super::prepare::{tenant_claims, Prepared};
use super::{Ingest, RawRequest, SignalKind};
use crate::admission::BytesPermit;
use crate::auth::authenticator::Principal;
use crate::config::LimitsConfig;
use crate::error::ApiError;
use crate::metrics as m;

pub const LOGS: SignalKind = SignalKind {
    signal: Signal::Logs,
    items: "log records",
    accepted_metric: m::LOG_RECORDS_ACCEPTED,
    rejected_metric: m::LOG_RECORDS_REJECTED,
    // "logs" in ASCII: the same bytes sent as traces are another request.
    dedup_salt: 0x6c6f_6773,
};

/// Decompress, decode, validate and stamp a logs request. Blocking: run it on the blocking
/// pool. A value nested deeper than prost's limit (100) fails the whole request (400); spans
/// have a pruning pass for that, log records do not yet.
pub fn prepare_logs(
    format: Format,
    compression: Compression,
    body: Bytes,
    limits: &LimitsConfig,
    mut permit: BytesPermit,
    tenant: (&[String], &Principal),
) -> Result<(Prepared, BytesPermit), ApiError> {
    let plain = decode::decompress(compression, body, limits.max_request_bytes)?;
    let digest = dedup::digest(&plain);
    permit.grow_to(plain.len())?;
    let mut req: ExportLogsServiceRequest = decode::decode_as(format, &plain)?;
    let mut outcome = logs::validate(&mut req, &limits.span_limits());
    let claims = tenant_claims(tenant.0, tenant.1);
    outcome.modified |= logs::stamp_tenant(&mut req, &claims);
    let otlp_request = if !outcome.modified && format == Format::Protobuf {
        // Nothing removed or stamped: the client's bytes, no re-encode.
        plain.clone()
    } else {
        Bytes::from(req.encode_to_vec())
    };
    Ok((
        Prepared {
            plain_len: otlp_request.len(),
            otlp_request,
            encoding: PayloadEncoding::Identity,
            outcome,
            decompressed_len: plain.len(),
            digest,
        },
        permit,
    ))
}

impl Ingest {
    pub async fn export_logs(
        &self,
        principal: &Arc<Principal>,
        raw: RawRequest,
    ) -> Result<ExportLogsServiceResponse, ApiError> {
        let decoding = Instant::now();
        let (class, slot) = self.decode_slot(principal).await;
        let (limits, keys, p) = (
            self.limits.clone(),
            self.tenant_attribute_keys.clone(),
            principal.clone(),
        );
        let (format, compression, body, permit) =
            (raw.format, raw.compression, raw.body, raw.permit);
        let (prepared, permit) = tracegate_pipeline::cpu::run(class, move || {
            let _slot = slot;
            prepare_logs(format, compression, body, &limits, permit, (&keys, &p))
        })
        .await
        .map_err(|e| ApiError::internal(format!("decode task failed: {e}")))??;
        metrics::histogram!(m::REQUEST_DECODE_DURATION).record(decoding.elapsed().as_secs_f64());
        let meta = (raw.transport, raw.origin, class);
        let o = self
            .accept(principal, prepared, permit, meta, &LOGS)
            .await?;
        Ok(logs::export_response(
            o.rejected,
            o.error_message_for(logs::NOUN),
        ))
    }
}
