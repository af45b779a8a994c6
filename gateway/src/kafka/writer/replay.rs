//! Retry-safe ingest in the Kafka writer (docs/kafka.md, "Repeated requests"): each
//! partition's dedup window (`tracegate_pipeline::dedup`), decided in offset order before a
//! message is buffered, and rebuilt by a new owner before it decides anything.
//!
//! A request sent again lands on the partition of its first copy (both are keyed by the
//! request's key or by its project), so the owner of that partition sees both. The owner
//! records in every commit's metadata where its window starts (`from=`); whoever owns the
//! partition next seeks there, reads `from..committed` into a fresh window without buffering
//! it, and from the committed offset on decides as the previous owner would have.

use super::*;
use tracegate_pipeline::dedup::{self, Seen, Window};

/// How long a seek to the replay start may take before it is retried.
const SEEK_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) struct Dedup {
    pub window: Duration,
    /// Requests all partitions' windows may hold together.
    pub max_entries: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Replay {
    /// Assigned; the committed offset is not known yet, so nothing can be decided: messages
    /// are ignored (a seek sets the position once it is known).
    Pending,
    /// Reading the messages before this offset into the window only.
    Until(i64),
    Ready,
}

impl Driver {
    /// A new partition's window (None with retry-safe ingest off) and its starting state.
    pub(super) fn new_window(&self) -> (Option<Window>, Replay) {
        match &self.dedup {
            Some(d) => (Some(Window::new(d.window)), Replay::Pending),
            None => (None, Replay::Ready),
        }
    }

    /// Each partition's share of the memory bound.
    pub(super) fn window_share(&self) -> usize {
        self.dedup
            .as_ref()
            .map_or(usize::MAX, |d| d.max_entries / self.parts.len().max(1))
    }
}

/// Reads one message of the replay range into the window. Undecodable messages were
/// quarantined by the previous owner and are nothing to remember.
pub(super) fn replay_one(part: &mut Part, offset: i64, payload: Option<&[u8]>, share: usize) {
    metrics::counter!(m::DEDUP_REPLAYED).increment(1);
    let Some(batch) = payload.and_then(|p| Batch::decode(p).ok()) else {
        return;
    };
    check(part, &batch, offset, share);
}

/// Whether `batch` at `offset` repeats a request in the partition's window (recording it
/// either way).
pub(super) fn check(part: &mut Part, batch: &Batch, offset: i64, share: usize) -> bool {
    let (Some(w), Some(key)) = (part.window.as_mut(), dedup::key_u128(&batch.dedup_key)) else {
        return false;
    };
    let early = w.evicted_early;
    let e = dedup::Envelope {
        key,
        copy: dedup::key_u128(&batch.batch_id).unwrap_or(0),
        parts: batch.part_count,
        at: batch.received_at_unix_nano,
        position: offset,
        tenant: dedup::tenant_id(&batch.org_id, &batch.project_id),
    };
    let seen = w.check(e, share);
    if w.evicted_early > early {
        metrics::counter!(m::DEDUP_EVICTED_EARLY).increment(w.evicted_early - early);
    }
    seen == Seen::Repeat
}

/// Positions a newly assigned partition once its committed offset is known: at `from`
/// (the oldest message the previous owner's window held) to rebuild the window, else at the
/// committed offset. None when the seek failed (the caller retries).
pub(super) fn start_replay(
    consumer: &BaseConsumer<WriterContext>,
    tp: &Tp,
    committed: Offset,
    from: Option<i64>,
) -> Option<Replay> {
    let (start, replay) = match (committed, from) {
        (Offset::Offset(c), Some(f)) if f < c => (Offset::Offset(f), Replay::Until(c)),
        (Offset::Offset(c), _) => (Offset::Offset(c), Replay::Ready),
        // Nothing committed: the group starts at the beginning (`auto.offset.reset`), and
        // there is nothing before it to remember.
        _ => (Offset::Beginning, Replay::Ready),
    };
    match consumer.seek(&tp.0, tp.1, start, SEEK_TIMEOUT) {
        Ok(()) => {
            if let Replay::Until(end) = replay {
                tracing::info!(topic = %tp.0, partition = tp.1, from = ?start, until = end, "rebuilding the dedup window");
            }
            Some(replay)
        }
        Err(e) => {
            tracing::warn!(topic = %tp.0, partition = tp.1, error = %e, "seeking a newly assigned partition failed; retrying");
            None
        }
    }
}
