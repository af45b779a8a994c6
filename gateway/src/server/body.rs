//! Reading request bodies with a size cap, a deadline and an in-flight reservation that grows
//! with the bytes read — and draining what an authenticated request refused mid-body as too
//! large (413) still sends: closing a connection while the client is still writing makes it
//! see a reset instead of our answer (RFC 9112 §9.6), so we read and discard the rest, bounded
//! in bytes and time. A request refused before its body is touched (route, type, auth,
//! declared size) is never drained and never gets `100 Continue`: it is answered and closed.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::admission::{Admission, BytesPermit};
use crate::error::ApiError;

/// Most bytes we discard for a refused request before giving up and closing.
pub const DRAIN_MAX_BYTES: usize = 64 * 1024 * 1024;
/// Longest we keep draining a refused request.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The reservation grows ahead of the bytes by at most this much, so a large body costs one
/// semaphore operation per step rather than one per frame.
const RESERVE_STEP: usize = 256 * 1024;

/// Reads the whole body, refusing (413) past `cap` bytes and (400) past `timeout`.
///
/// Every byte held is covered by the returned reservation, charged to `project` as the body
/// arrives (at most twice what arrived), never as a client declares it: a client that declares
/// a large `Content-Length` and trickles bytes holds only about what it has sent.
/// A body is therefore refused with a retryable 503 / UNAVAILABLE (global bound) or 429 /
/// RESOURCE_EXHAUSTED (the project's share) as soon as it would exceed a bound, instead of
/// being buffered whole first.
pub async fn read_capped(
    mut body: Incoming,
    cap: usize,
    timeout: Duration,
    size_hint: Option<usize>,
    admission: &Admission,
    project: &str,
) -> Result<(Bytes, BytesPermit), ApiError> {
    let deadline = tokio::time::Instant::now() + timeout;
    // Nothing is charged for what the client only declares (one byte marks the request).
    let mut permit = admission.try_reserve_for(project, 0)?;
    let mut buf = BytesMut::with_capacity(size_hint.unwrap_or(0).min(cap).min(RESERVE_STEP));
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Err(ApiError::invalid("timed out reading the request body")),
            Ok(None) => return Ok((buf.freeze(), permit)),
            Ok(Some(Err(e))) => {
                return Err(ApiError::invalid(format!(
                    "error reading the request body: {e}"
                )))
            }
            Ok(Some(Ok(f))) => f,
        };
        if let Ok(data) = frame.into_data() {
            let want = buf.len() + data.len();
            if want > cap {
                drop(buf);
                drain(body).await;
                return Err(ApiError::too_large(cap));
            }
            if want > permit.bytes() {
                // Ahead of the bytes by at most as much as was read and at most one step (few
                // semaphore operations, never more than twice what arrived); else exactly what
                // is held: a request that alone fits the bound is never refused for rounding.
                let step = want.saturating_mul(2).min(want + RESERVE_STEP).min(cap);
                // Over a bound: nothing more is read (the HTTP/1.1 answer closes the
                // connection), so the bytes of the refusal are not spent on draining it.
                permit.grow_to(step).or_else(|_| permit.grow_to(want))?;
            }
            buf.extend_from_slice(&data);
        }
    }
}

/// Reads and discards the rest of a body, within `DRAIN_MAX_BYTES` and `DRAIN_TIMEOUT`.
pub async fn drain(mut body: Incoming) {
    let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
    let mut seen = 0usize;
    while seen <= DRAIN_MAX_BYTES {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(f))) => seen += f.data_ref().map(|d| d.len()).unwrap_or(0),
            _ => return,
        }
    }
}
