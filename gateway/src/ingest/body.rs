//! Reading request bodies with a size cap, a deadline and an in-flight reservation that grows
//! with the bytes read — and draining what an authenticated request refused mid-body as too
//! large (413) still sends: closing a connection while the client is still writing makes it
//! see a reset instead of our answer (RFC 9112 §9.6), so we read and discard the rest, bounded
//! in bytes and time; so is an authenticated upload whose declared length is over the cap and
//! that did not send `Expect: 100-continue` (server/http.rs). A request refused before its body
//! is touched (route, type, key, admission) is never drained and never gets `100 Continue`.

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

/// Free bytes kept before a body joined from several frames (`Body::room`): enough for the
/// `tracegate.v1.Batch` fields the Kafka producer writes in front of it (~150-300 bytes with
/// typical ids; a longer head falls back to a copy).
pub const ROOM: usize = 512;

/// A request body, and the buffer it was joined into when it came in several frames.
pub struct Body {
    pub bytes: Bytes,
    /// The whole buffer `bytes` lies in, [`ROOM`] free bytes before it: the Kafka producer
    /// writes the envelope there instead of copying the body into it, so a body is copied once
    /// in user space between the socket and the broker (issue 21, goal 2;
    /// `kafka::split::message_in_room`). `None` for a body of one frame (a slice of hyper's read
    /// buffer, not ours to write around).
    pub room: Option<Bytes>,
}

/// The reservation grows ahead of the bytes by at most this much, so a large body costs one
/// semaphore operation per step rather than one per frame.
const RESERVE_STEP: usize = 256 * 1024;

/// How long a body may take: in all, and at what rate at least once the grace period is over.
#[derive(Debug, Clone, Copy)]
pub struct BodyPace {
    /// The whole body (`server.body_timeout_ms`).
    pub timeout: Duration,
    /// Bytes per second the body must average after `MIN_RATE_GRACE`
    /// (`server.min_body_bytes_per_sec`; 0 = no minimum).
    pub min_bytes_per_sec: u64,
}

/// A body is never cut for its rate in its first seconds (connection ramp-up, a stalled first
/// window on a lossy link).
pub const MIN_RATE_GRACE: Duration = Duration::from_secs(5);

impl BodyPace {
    /// The instant by which more than `read` bytes must have arrived.
    fn next_deadline(&self, started: tokio::time::Instant, read: usize) -> tokio::time::Instant {
        let total = started + self.timeout;
        if self.min_bytes_per_sec == 0 {
            return total;
        }
        let earned = Duration::from_secs_f64(read as f64 / self.min_bytes_per_sec as f64);
        total.min(started + MIN_RATE_GRACE + earned)
    }
}

/// Reads the whole body, refusing (413) past `cap` bytes and (400) past the pace's timeout or
/// below its minimum rate: a client that trickles a body is cut off after the grace period
/// instead of holding its connection for the whole timeout.
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
    pace: BodyPace,
    admission: &Admission,
    project: &str,
) -> Result<(Body, BytesPermit), ApiError> {
    let started = tokio::time::Instant::now();
    // Nothing is charged for what the client only declares (one byte marks the request).
    let mut permit = admission.try_reserve_for(project, 0)?;
    let mut frames = Frames::default();
    let mut read = 0usize;
    loop {
        let deadline = pace.next_deadline(started, read);
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => {
                return Err(ApiError::invalid(
                    "timed out reading the request body (too slow)",
                ))
            }
            Ok(None) => return Ok((frames.join(read), permit)),
            Ok(Some(Err(e))) => {
                return Err(ApiError::invalid(format!(
                    "error reading the request body: {e}"
                )))
            }
            Ok(Some(Ok(f))) => f,
        };
        if let Ok(data) = frame.into_data() {
            let want = read + data.len();
            if want > cap {
                drop(frames);
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
            read = want;
            frames.push(data);
        }
    }
}

/// Frames under this size are copied together rather than kept one by one, so a body trickled
/// in tiny frames does not cost a list entry (32 bytes) per byte.
const SMALL_FRAME: usize = 4096;

/// A body's frames as they arrive, joined once at the end. Large frames are kept as they come
/// (slices of hyper's read buffers, not copied): growing one buffer as they arrived copied a
/// 600 KB body about 2.3 times (8 % of the async worker's CPU under the overload bench,
/// docs/benchmarks.md).
#[derive(Default)]
struct Frames {
    large: Vec<Bytes>,
    small: BytesMut,
}

impl Frames {
    fn push(&mut self, data: Bytes) {
        if data.len() < SMALL_FRAME {
            self.small.extend_from_slice(&data);
            return;
        }
        if !self.small.is_empty() {
            self.large.push(self.small.split().freeze());
        }
        self.large.push(data);
    }

    /// One contiguous body of `len` bytes: the frame itself when there is one, else one copy,
    /// into a buffer with [`ROOM`] free bytes before the body.
    fn join(mut self, len: usize) -> Body {
        if !self.small.is_empty() {
            self.large.push(self.small.split().freeze());
        }
        if self.large.len() <= 1 {
            let bytes = self.large.pop().unwrap_or_default();
            return Body { bytes, room: None };
        }
        let mut buf = Vec::with_capacity(ROOM + len);
        buf.resize(ROOM, 0);
        for f in &self.large {
            buf.extend_from_slice(f);
        }
        let room = Bytes::from(buf);
        Body {
            bytes: room.slice(ROOM..),
            room: Some(room),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_joined_in_order_and_a_single_large_frame_is_not_copied() {
        let big = Bytes::from(vec![7u8; SMALL_FRAME]);
        let mut one = Frames::default();
        one.push(big.clone());
        let joined = one.join(SMALL_FRAME);
        assert_eq!(joined.bytes.as_ptr(), big.as_ptr());
        assert!(
            joined.room.is_none(),
            "hyper's buffer is not ours to write around"
        );
        let mut mixed = Frames::default();
        let mut want = Vec::new();
        for part in [&b"ab"[..], b"c", &big, b"d", b"e", &big, b"f"] {
            mixed.push(Bytes::copy_from_slice(part));
            want.extend_from_slice(part);
        }
        // Small frames are gathered: one list entry per run of them, not one per frame.
        assert_eq!(mixed.large.len(), 4);
        let joined = mixed.join(want.len());
        assert_eq!(joined.bytes, want);
        // The body is the end of its room, `ROOM` bytes in.
        let room = joined.room.expect("a joined body has room before it");
        assert_eq!(room.len(), ROOM + want.len());
        assert_eq!(joined.bytes.as_ptr(), room[ROOM..].as_ptr());
        assert!(Frames::default().join(0).bytes.is_empty());
    }

    #[test]
    fn the_rate_deadline_moves_with_the_bytes_and_never_passes_the_timeout() {
        let pace = BodyPace {
            timeout: Duration::from_secs(30),
            min_bytes_per_sec: 1000,
        };
        let t0 = tokio::time::Instant::now();
        assert_eq!(pace.next_deadline(t0, 0), t0 + MIN_RATE_GRACE);
        assert_eq!(
            pace.next_deadline(t0, 2000),
            t0 + MIN_RATE_GRACE + Duration::from_secs(2)
        );
        assert_eq!(
            pace.next_deadline(t0, 10_000_000),
            t0 + Duration::from_secs(30)
        );
        let off = BodyPace {
            min_bytes_per_sec: 0,
            ..pace
        };
        assert_eq!(off.next_deadline(t0, 0), t0 + Duration::from_secs(30));
    }
}
