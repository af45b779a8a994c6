//! The one ingest entry both transports (server/http.rs, server/grpc.rs) call, in two steps:
//! - `receive`: credential → auth (cached) → the declared length → the project's turn to read
//!   while its bodies wait for decode (`readahead`, HTTP/1.1) → the body, read with a cap and a
//!   pace and charged to admission (global bound, the project's share) as it arrives (`body`).
//!   Nothing is read before the credential passed.
//! - `export`: decompress, scan-validate (or decode, validate, stamp) on a thread of the
//!   request's CPU class (`prepare`) → the project's quota → the tenant stamped on a
//!   `tracegate.v1.Batch` envelope → the queue (`tracegate_pipeline::BatchQueue`) → the answer,
//!   once the batch is durable.
//!
//! Traces and logs share both steps; only the CPU-heavy one differs (`prepare` for spans,
//! `logs` for log records).
//!
//! It calls nothing in `server`: the transports call it, and it answers with `ApiError`, which
//! they map to HTTP or gRPC.

pub mod body;
pub mod prepare;
pub mod readahead;
pub mod signals;

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hyper::body::Incoming;
use rand::RngCore;
use tracegate_otlp::codec::{Compression, Format};
use tracegate_otlp::response::export_response;
use tracegate_otlp::validate::Reason;
use tracegate_pipeline::queue::offset_in;
use tracegate_pipeline::BatchQueue;
use tracegate_proto::otlp::collector::trace::v1::ExportTraceServiceResponse;
use tracegate_proto::v1::{Batch, Signal, Source, Transport};

use crate::admission::{Admission, BytesPermit};
use crate::auth::authenticator::{Authenticator, Origin, Principal};
use crate::auth::ratelimit::RateLimits;
use crate::config::LimitsConfig;
use crate::error::ApiError;
use crate::metrics as m;
pub use body::BodyPace;
pub use prepare::{prepare, prepare_if_clean, tenant_claims, Prepared};

pub struct Ingest {
    pub auth: Arc<Authenticator>,
    pub admission: Admission,
    pub rate_limits: RateLimits,
    pub queue: Arc<dyn BatchQueue>,
    pub limits: LimitsConfig,
    /// Resource attribute keys that claim a tenant (`auth.tenant_attribute_keys`).
    pub tenant_attribute_keys: Arc<Vec<String>>,
    /// zstd level at which a plain payload is compressed here, on the blocking pool, before it
    /// is queued (`kafka.compression = "payload_zstd"`); `None`: payloads stay as prepared.
    pub payload_zstd_level: Option<i32>,
    /// Decode slots (`limits.decode_concurrency`, FIFO). Decoding is CPU-bound: with more
    /// requests decoding than cores, the kernel shares the cores among all of them, so every
    /// request in a burst finishes late, and the async workers (reading bodies, answering) and
    /// librdkafka's threads get a thinner share too. One per core keeps the others moving and
    /// serves a burst oldest first.
    pub decode_slots: crate::fair::DecodeSlots,
    /// How long a body may take, and at what rate at least (`server.body_timeout_ms`,
    /// `server.min_body_bytes_per_sec`).
    pub body_pace: BodyPace,
    /// Each project's bodies read and waiting for a decode slot, bounded
    /// (`limits.read_ahead_bytes_per_project`, readahead.rs).
    pub read_ahead: Arc<readahead::ReadAhead>,
}

/// A request as a transport hands it to the entry: its head, and its body not yet read.
pub struct Arrival<'a> {
    pub headers: &'a http::HeaderMap,
    /// Client address and VPC endpoint id (from the PROXY header when the listener uses one).
    pub origin: Origin,
    /// Taken, and read, only once the credential and the declared length passed: a request
    /// refused before leaves it here, unread (the transport then closes or resets).
    pub body: &'a mut Option<Incoming>,
    /// Bytes of framing around the request (gRPC's 5-byte prefix): up to the cap plus this
    /// many are read.
    pub framing: usize,
    /// The scope the request's signal needs (`traces:write`, `logs:write`).
    pub scope: &'static str,
    /// Whether the body may wait, unread, for its project's decode backlog (readahead.rs):
    /// HTTP/1.1 only, where an unread body holds nothing but its own connection.
    pub read_ahead: bool,
}

/// A request whose body has been read: who sent it, its bytes, and their reservation.
pub struct Received {
    pub principal: Arc<Principal>,
    pub body: Bytes,
    /// The buffer `body` was joined into, with room before it (`body::Body::room`).
    pub room: Option<Bytes>,
    pub permit: BytesPermit,
    pub origin: Origin,
    /// `body` on its project's read-ahead backlog until its decode starts.
    pub queued: readahead::Queued,
}

/// A body as received, with what the receiver learned about it.
pub struct RawRequest {
    pub transport: Transport,
    pub format: Format,
    pub compression: Compression,
    pub body: Bytes,
    /// The buffer `body` lies in, with room before it (`body::Body::room`): handed to the queue
    /// with the batch when the payload is still those bytes.
    pub room: Option<Bytes>,
    /// Reservation covering `body`; swapped for one covering the decompressed bytes.
    pub permit: BytesPermit,
    pub origin: Origin,
    /// Dropped when the decode starts (`Received::queued`).
    pub queued: readahead::Queued,
}

impl Ingest {
    /// Credential → auth → declared length → body (see the module header).
    pub async fn receive(&self, a: Arrival<'_>) -> Result<Received, ApiError> {
        let credential = Authenticator::key_from_headers(a.headers);
        let principal = self
            .auth
            .authenticate_for(credential, &a.origin, a.scope)
            .await?;
        let cap = self.limits.max_request_bytes + a.framing;
        let declared = a
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        // A body larger than the cap is refused before reading (compressed bodies too: a
        // compressed body larger than the decompressed cap is not a plausible OTLP request).
        if declared.is_some_and(|len| len > cap as u64) {
            return Err(ApiError::too_large(self.limits.max_request_bytes));
        }
        let Some(incoming) = a.body.take() else {
            return Err(ApiError::internal("request body already taken"));
        };
        let tenant = principal.tenant_key();
        // The wait for the project's read-ahead is part of getting the body.
        let reading = Instant::now();
        let turn = match a.read_ahead {
            true => self.read_ahead_turn(&tenant).await?,
            false => None,
        };
        // Bytes are charged to the project as they arrive, not as declared.
        let (body, permit) =
            body::read_capped(incoming, cap, self.body_pace, &self.admission, &tenant).await?;
        metrics::histogram!(m::REQUEST_BODY_READ_DURATION).record(reading.elapsed().as_secs_f64());
        let queued = match turn {
            Some(turn) => turn.read(body.bytes.len()),
            None => readahead::Queued::none(),
        };
        Ok(Received {
            principal,
            body: body.bytes,
            room: body.room,
            permit,
            origin: a.origin,
            queued,
        })
    }

    /// The project's turn to read a body (readahead.rs), waited for at most as long as a body
    /// may take to arrive; then 429, the project's own backlog.
    async fn read_ahead_turn(&self, tenant: &str) -> Result<Option<readahead::Turn>, ApiError> {
        let turn = self.read_ahead.turn_within(tenant, self.body_pace.timeout);
        match turn.await {
            Some(turn) => Ok(Some(turn)),
            None => {
                metrics::counter!(m::ADMISSION_REFUSED, "limit" => "read_ahead").increment(1);
                Err(ApiError::rate_limited(
                    "project's requests are waiting for decode; retry later",
                    std::time::Duration::from_secs(1),
                ))
            }
        }
    }

    /// Decode + validate on the request's CPU class, holding its decode `slot` until done.
    async fn decode(
        &self,
        p: &Arc<Principal>,
        class: tracegate_pipeline::cpu::Class,
        slot: crate::fair::Slot,
        (format, compression): (Format, Compression),
        body: Bytes,
        permit: BytesPermit,
    ) -> Result<(Prepared, BytesPermit), ApiError> {
        let limits = self.limits.clone();
        let keys = self.tenant_attribute_keys.clone();
        let p = p.clone();
        let zstd_level = self.payload_zstd_level;
        // A quiet project's small plain protobuf body is scanned on this worker (see
        // `INLINE_DECODE_MAX`); anything the scan cannot prove clean goes to a decode thread.
        let inline = class == tracegate_pipeline::cpu::Class::Interactive
            && zstd_level.is_none()
            && format == Format::Protobuf
            && compression == Compression::Identity
            && body.len() <= INLINE_DECODE_MAX;
        let scanned = if inline {
            // As on the blocking pool, a panic fails this request only.
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                prepare_if_clean(body, &limits, permit, Some((&keys, &p)))
            }))
            .map_err(|_| ApiError::internal("decode task failed: panicked"))?
        } else {
            Err((body, permit))
        };
        match scanned {
            Ok(done) => {
                drop(slot);
                Ok(done)
            }
            Err((body, permit)) => tracegate_pipeline::cpu::run(class, move || {
                let _slot = slot;
                let (mut prepared, mut permit) = prepare(
                    format,
                    compression,
                    body,
                    &limits,
                    permit,
                    Some((&keys, &p)),
                )?;
                if let Some(level) = zstd_level {
                    prepared.compress_plain(level, &mut permit);
                }
                Ok::<_, ApiError>((prepared, permit))
            })
            .await
            .map_err(|e| ApiError::internal(format!("decode task failed: {e}")))?,
        }
    }

    /// The request's CPU class and a decode slot of it. A busy project's decode runs as bulk
    /// work, in slots of its own, so a quiet project's request neither waits for it nor shares
    /// the CPU with it evenly (`tracegate_pipeline::cpu`); slots are shared round robin between
    /// projects (fair.rs), so a noisy project's backlog does not queue a quiet one behind it.
    async fn decode_slot(
        &self,
        p: &Principal,
    ) -> (tracegate_pipeline::cpu::Class, crate::fair::Slot) {
        let tenant = p.tenant_key();
        let class = if self.admission.is_busy(&tenant) {
            tracegate_pipeline::cpu::Class::Bulk
        } else {
            tracegate_pipeline::cpu::Class::Interactive
        };
        let slots = match class {
            tracegate_pipeline::cpu::Class::Bulk => &self.decode_slots.bulk,
            tracegate_pipeline::cpu::Class::Interactive => &self.decode_slots.interactive,
        };
        (class, slots.acquire(&tenant).await)
    }

    pub async fn export(
        &self,
        principal: &Arc<Principal>,
        raw: RawRequest,
    ) -> Result<ExportTraceServiceResponse, ApiError> {
        let p = principal.clone();
        let decoding = Instant::now();
        let (class, slot) = self.decode_slot(&p).await;
        // Off the project's read-ahead backlog: its next body may be read.
        drop(raw.queued);
        let (format, compression) = (raw.format, raw.compression);
        let (prepared, permit) = self
            .decode(&p, class, slot, (format, compression), raw.body, raw.permit)
            .await?;
        metrics::histogram!(m::REQUEST_DECODE_DURATION).record(decoding.elapsed().as_secs_f64());
        let meta = (raw.transport, raw.origin, class);
        let o = self
            .accept(principal, (prepared, raw.room), permit, meta, &TRACES)
            .await?;
        Ok(export_response(o.rejected, o.error_message()))
    }

    /// After decode, for every signal: count, the project's quota for the signal, the tenant
    /// stamped on a `tracegate.v1.Batch` envelope, the queue; returns once the batch is durable.
    /// `room`, the buffer the body was read into, goes to the queue with the batch when the
    /// payload still lies in it (the body forwarded as read).
    async fn accept(
        &self,
        principal: &Arc<Principal>,
        (mut prepared, room): (Prepared, Option<Bytes>),
        permit: BytesPermit,
        (transport, origin, class): (Transport, Origin, tracegate_pipeline::cpu::Class),
        kind: &SignalKind,
    ) -> Result<tracegate_otlp::validate::Outcome, ApiError> {
        // Held until the batch is durable: its bytes are still in memory until then.
        let _permit = permit;
        metrics::counter!(m::REQUEST_BYTES).increment(prepared.decompressed_len as u64);
        let o = &prepared.outcome;
        for (i, r) in Reason::ALL.iter().enumerate() {
            if o.by_reason[i] > 0 {
                metrics::counter!(kind.rejected_metric, "reason" => r.label())
                    .increment(o.by_reason[i] as u64);
            }
        }
        if let Err(e) = self.rate_limits.check_items(
            &principal.project_id,
            kind.items,
            principal.quota,
            o.accepted as u64,
            prepared.decompressed_len as u64,
        ) {
            metrics::counter!(m::RATE_LIMITED).increment(1);
            return Err(e);
        }
        if o.accepted > 0 {
            let mut id = [0u8; 16];
            rand::rng().fill_bytes(&mut id);
            let mut batch = Batch {
                batch_id: Bytes::copy_from_slice(&id),
                org_id: principal.org_id.clone(),
                workspace_id: principal.workspace_id.clone(),
                project_id: principal.project_id.clone(),
                region: principal.region.clone(),
                received_at_unix_nano: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(0),
                transport: transport as i32,
                source: Some(Source {
                    client_addr: origin.client_addr,
                    vpc_endpoint_id: origin.vpc_endpoint_id.unwrap_or_default(),
                }),
                span_count: o.accepted as u32,
                key_id: principal.key_id.clone(),
                // The same bytes sent as another signal are another request.
                dedup_key: Bytes::copy_from_slice(&tracegate_pipeline::dedup::request_key(
                    &principal.org_id,
                    &principal.project_id,
                    prepared.digest ^ kind.dedup_salt,
                )),
                signal: kind.signal as i32,
                ..Default::default()
            };
            prepared.set_payload(&mut batch);
            // The batch holds the payload now; a second handle would keep the queue from
            // writing into its room.
            prepared.otlp_request = Bytes::new();
            match room.filter(|r| offset_in(&batch.otlp_request, r).is_some()) {
                Some(room) => self.queue.publish_in(batch, room, class).await?,
                None => self.queue.publish(batch, class).await?,
            }
            metrics::counter!(kind.accepted_metric).increment(o.accepted as u64);
        }
        Ok(prepared.outcome)
    }
}

/// What differs between signals after decode: the envelope's signal, what the quota counts,
/// the metrics.
pub struct SignalKind {
    pub signal: Signal,
    /// What a quota message counts ("spans", "log records"); also names the quota bucket.
    pub items: &'static str,
    pub accepted_metric: &'static str,
    pub rejected_metric: &'static str,
    /// Mixed into the dedup digest: 0 for traces (their keys stay what they were).
    pub dedup_salt: u128,
}

pub const TRACES: SignalKind = SignalKind {
    signal: Signal::Traces,
    items: "spans",
    accepted_metric: m::SPANS_ACCEPTED,
    rejected_metric: m::SPANS_REJECTED,
    dedup_salt: 0,
};

/// Plain protobuf bodies up to this size are scanned on the async worker that read them instead
/// of on the blocking pool: handing a small request to another thread and back (two wake-ups,
/// two context switches) cost more than its scan (docs/benchmarks.md, issue 21 goal 4). The scan
/// runs at ~1.7 GB/s on small spans, so this bounds an inline step to ~80 µs. Only the scan
/// runs inline (`prepare_if_clean`): compressed bodies, JSON, the slow path and the gateway's
/// payload compression stay on decode threads.
const INLINE_DECODE_MAX: usize = 128 * 1024;
