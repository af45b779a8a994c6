//! Reading request bodies with a size cap, a deadline and an in-flight reservation that grows
//! with the bytes read — and draining what a refused request still sends. Closing a connection while the client is still writing makes it see a broken
//! pipe or reset instead of our 401/413/503 (RFC 9112 §9.6), so before answering early we read
//! and discard the rest of the body, bounded in bytes and time.

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

/// The reservation grows in steps of this many bytes, so a body of unknown length costs one
/// semaphore operation per step rather than one per frame.
const RESERVE_STEP: usize = 256 * 1024;

/// Reads the whole body, refusing (413) past `cap` bytes and (400) past `timeout`.
///
/// Every byte held is covered by the returned reservation: `permit` (taken from the declared
/// length) when there is one, else a reservation that grows while the body arrives. A body of
/// unknown length (chunked HTTP/1.1, every gRPC message) is therefore refused with a retryable
/// 503 / UNAVAILABLE as soon as it would exceed the in-flight bound, instead of being buffered
/// whole first: with N clients that would be N × `cap` bytes outside the bound.
pub async fn read_capped(
    mut body: Incoming,
    cap: usize,
    timeout: Duration,
    size_hint: Option<usize>,
    admission: &Admission,
    permit: Option<BytesPermit>,
) -> Result<(Bytes, BytesPermit), ApiError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut permit = match permit {
        Some(p) => p,
        None => admission.try_reserve(size_hint.unwrap_or(0).min(cap))?,
    };
    let mut buf = BytesMut::with_capacity(size_hint.unwrap_or(0).min(cap));
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
                // A whole step when there is room for it, else exactly what is held: a request
                // that alone fits the bound is never refused for the rounding.
                let step = want.next_multiple_of(RESERVE_STEP).min(cap);
                if let Err(e) = permit.grow_to(step).or_else(|_| permit.grow_to(want)) {
                    drop(buf);
                    drop(permit);
                    drain(body).await;
                    return Err(e);
                }
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
