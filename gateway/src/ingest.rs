//! The transport-independent ingest pipeline: (authenticated) body in → decompress, decode and
//! validate on the blocking pool → stamp the tenant → queue → answer once durable.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use prost::Message;
use rand::RngCore;
use tracegate_proto::otlp::collector::trace::v1::ExportTraceServiceResponse;
use tracegate_proto::v1::{Batch, Source, Transport};

use crate::admission::{Admission, BytesPermit};
use crate::auth::authenticator::{Authenticator, Principal};
use crate::config::LimitsConfig;
use crate::error::ApiError;
use crate::metrics as m;
use crate::otlp::decode::{self, Compression, Format};
use crate::otlp::response::export_response;
use crate::otlp::validate::{self, Reason};
use crate::queue::embedded::BatchQueue;

pub struct Ingest {
    pub auth: Authenticator,
    pub admission: Admission,
    pub queue: Arc<dyn BatchQueue>,
    pub limits: LimitsConfig,
}

/// A body as received, with what the receiver learned about it.
pub struct RawRequest {
    pub transport: Transport,
    pub format: Format,
    pub compression: Compression,
    pub body: Bytes,
    /// Reservation covering `body`; swapped for one covering the decompressed bytes.
    pub permit: BytesPermit,
    pub client_addr: String,
}

/// Result of the CPU-heavy step.
pub struct Prepared {
    pub otlp_request: Bytes,
    pub outcome: validate::Outcome,
    pub decompressed_len: usize,
}

/// Decompress (capped), decode and validate. Blocking: run it on the blocking pool.
pub fn prepare(
    format: Format,
    compression: Compression,
    body: Bytes,
    limits: &LimitsConfig,
    admission: &Admission,
) -> Result<(Prepared, BytesPermit), ApiError> {
    let plain = decode::decompress(compression, body, limits.max_request_bytes)?;
    // Account the decompressed bytes before materialising anything from them.
    let permit = admission.try_reserve(plain.len())?;
    let mut req = decode::decode(format, &plain)?;
    let outcome = validate::validate(&mut req, limits);
    let otlp_request = if !outcome.modified && format == Format::Protobuf {
        // Nothing removed: keep the client's bytes, no re-encode.
        plain.clone()
    } else {
        Bytes::from(req.encode_to_vec())
    };
    Ok((
        Prepared {
            otlp_request,
            outcome,
            decompressed_len: plain.len(),
        },
        permit,
    ))
}

impl Ingest {
    pub async fn authenticate(&self, key: Option<&str>) -> Result<Principal, ApiError> {
        self.auth.authenticate(key).await
    }

    pub async fn export(
        &self,
        principal: &Principal,
        raw: RawRequest,
    ) -> Result<ExportTraceServiceResponse, ApiError> {
        let limits = self.limits.clone();
        let admission = self.admission.clone();
        let RawRequest {
            transport,
            format,
            compression,
            body,
            permit,
            client_addr,
        } = raw;
        let (prepared, decompressed_permit) = tokio::task::spawn_blocking(move || {
            let r = prepare(format, compression, body, &limits, &admission);
            // The compressed body is gone now; release its reservation.
            drop(permit);
            r
        })
        .await
        .map_err(|e| ApiError::internal(format!("decode task failed: {e}")))??;
        let _permit = decompressed_permit;
        metrics::counter!(m::REQUEST_BYTES).increment(prepared.decompressed_len as u64);
        let o = &prepared.outcome;
        for (i, r) in Reason::ALL.iter().enumerate() {
            if o.by_reason[i] > 0 {
                metrics::counter!(m::SPANS_REJECTED, "reason" => r.label())
                    .increment(o.by_reason[i] as u64);
            }
        }
        if o.accepted > 0 {
            let mut id = [0u8; 16];
            rand::rng().fill_bytes(&mut id);
            let batch = Batch {
                schema_version: tracegate_proto::BATCH_SCHEMA_VERSION,
                batch_id: Bytes::copy_from_slice(&id),
                org_id: principal.org_id.clone(),
                workspace_id: String::new(),
                project_id: principal.project_id.clone(),
                region: String::new(),
                received_at_unix_nano: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(0),
                transport: transport as i32,
                source: Some(Source {
                    client_addr,
                    vpc_endpoint_id: String::new(),
                }),
                span_count: o.accepted as u32,
                otlp_request: prepared.otlp_request,
                key_id: principal.key_id.clone(),
            };
            self.queue.publish(batch).await?;
            metrics::counter!(m::SPANS_ACCEPTED).increment(o.accepted as u64);
        }
        Ok(export_response(o.rejected, o.error_message()))
    }
}
