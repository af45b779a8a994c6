//! `tracegate write`: the consumer-group writer (docs/kafka.md, "Writer").
//!
//! One thread drives a librdkafka consumer (offsets are never auto-committed nor auto-stored)
//! and a small state machine per assigned partition:
//!
//! ```text
//! Idle ──cut──▶ IntentCommit ──ok──▶ Writing ──sinks ok──▶ DoneCommit ──ok──▶ Idle
//!               (offset=first,                 (sinks fail:   (offset=last+1,   (or Writing the
//!                meta "tg1 end=last")           retry same     meta: next cut's  next cut)
//!                                               batch)         intent or "")
//! ```
//!
//! A batch is an offset range `first..=last` of one partition, cut at `kafka.batch_max_spans`
//! / `batch_max_bytes` / `batch_max_age_ms`. Before any sink sees it, its range is recorded as
//! commit metadata on the group's committed offset (the *intent*). Whoever owns the partition
//! next (this process after a crash, or another writer after a rebalance) reads that intent
//! and cuts exactly the same range again, so a re-read batch has the same id
//! (`topic:partition:first-last`) and the sinks drop the rewrite. Offsets move past a batch
//! only after every sink succeeded. Revoked partitions are abandoned without committing.
//! While sinks are slow, partitions whose next batch is already waiting are paused.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use prost::Message as _;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::Message as _;
use rdkafka::statistics::Statistics;
use rdkafka::{Offset, TopicPartitionList};
use tokio::net::TcpListener;
use tracegate_proto::v1::Batch;

use super::config::KafkaConfig;
use super::msk_iam;
use super::stats::{self, StatsContext};
use crate::config::Config;
use crate::metrics as m;
use tracegate_archive::fsutil::{create_dir_all_durable, sync_dir};
use tracegate_pipeline::{Sink, WriteGroup};

/// Commit metadata that records a cut batch: `tg1 end=<last offset>`.
mod commit;
mod context;
mod cut;
mod driver;
mod replay;
mod serve;
mod write;

use commit::*;
use cut::*;
use replay::*;
pub use serve::serve;
use write::*;

const METADATA_PREFIX: &str = "tg1";
const COMMITTED_FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// An async commit without an answer after this long is sent again.
const COMMIT_RESEND: Duration = Duration::from_secs(60);

/// Commit metadata: `tg1 end=<last offset of the cut batch>` (the intent, when a batch is cut
/// and not yet committed) and `from=<offset>` (where the partition's dedup window starts); ""
/// when there is neither.
pub fn commit_metadata(end: Option<i64>, from: Option<i64>) -> String {
    let mut m = String::new();
    if let Some(last) = end {
        m.push_str(&format!(" end={last}"));
    }
    if let Some(f) = from {
        m.push_str(&format!(" from={f}"));
    }
    if m.is_empty() {
        m
    } else {
        format!("{METADATA_PREFIX}{m}")
    }
}

/// `(end, from)` of commit metadata; anything else reads as neither.
pub fn parse_metadata(metadata: &str) -> (Option<i64>, Option<i64>) {
    let Some(rest) = metadata.strip_prefix(METADATA_PREFIX) else {
        return (None, None);
    };
    let (mut end, mut from) = (None, None);
    for word in rest.split_whitespace() {
        if let Some(v) = word.strip_prefix("end=") {
            end = v.parse().ok();
        } else if let Some(v) = word.strip_prefix("from=") {
            from = v.parse().ok();
        }
    }
    (end, from)
}

/// The group id of a batch (also the archive object name).
pub fn group_id(topic: &str, partition: i32, first: i64, last: i64) -> String {
    format!("{topic}:{partition}:{first}-{last}")
}

fn backoff(attempt: u32) -> Duration {
    tracegate_pipeline::Backoff::DEFAULT.delay(attempt)
}

type Tp = (String, i32);

/// What librdkafka's callbacks report to the driver loop (they run inside `poll`, on the
/// driver's thread; the loop applies them right after `poll` returns).
enum Event {
    Assign(Vec<Tp>),
    Revoke(Vec<Tp>),
}

/// An offset commit for the committer thread. librdkafka reports the result of an async
/// commit only to a native `offset_commit_cb` (which rdkafka does not set), so commits are
/// made synchronously on a thread of their own and their results come back on a channel.
struct CommitReq {
    tp: Tp,
    epoch: u64,
    offset: i64,
    metadata: String,
}

struct CommitDone {
    tp: Tp,
    epoch: u64,
    offset: i64,
    error: Option<String>,
}

struct WriterContext {
    stats: StatsContext,
    events: Mutex<Vec<Event>>,
    /// Partitions this member owns, with the driver's epoch for each. The revoke callback
    /// removes entries at once (inside `poll`), so the committer never commits for a partition
    /// after it was revoked, even with commit requests still queued.
    owned: Arc<Mutex<HashMap<Tp, u64>>>,
}

/// One consumed message: its batch (None when it was quarantined), size and span count, and
/// whether it repeats a request stored before (then it is not written).
struct Msg {
    offset: i64,
    batch: Option<Batch>,
    repeat: bool,
    bytes: usize,
    spans: u64,
    arrived: Instant,
}

/// A cut batch: an offset range and the group handed to the sinks.
struct Cut {
    first: i64,
    last: i64,
    messages: usize,
    spans: u64,
    group: Arc<WriteGroup>,
    cut_at: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Intent {
    /// The committed offset (and its metadata) has not been read yet: do not cut.
    Unknown,
    /// No batch is pending: cut by the limits.
    Free,
    /// A batch `committed..=end` was cut before (by us or an earlier owner): cut it again.
    End(i64),
}

enum Stage {
    Idle,
    IntentCommit {
        cut: Arc<Cut>,
        sent_at: Option<Instant>,
        retry_at: Instant,
        attempt: u32,
    },
    Writing {
        cut: Arc<Cut>,
        attempt: u32,
    },
    SinkRetry {
        cut: Arc<Cut>,
        at: Instant,
        attempt: u32,
    },
    DoneCommit {
        cut: Arc<Cut>,
        next: Option<Arc<Cut>>,
        sent_at: Option<Instant>,
        retry_at: Instant,
        attempt: u32,
    },
}

struct Part {
    tp: Tp,
    epoch: u64,
    intent: Intent,
    intent_retry_at: Instant,
    buf: VecDeque<Msg>,
    buf_bytes: usize,
    buf_spans: u64,
    last_offset: Option<i64>,
    stage: Stage,
    paused: bool,
    /// Offset of an unreadable message whose quarantine file could not be written (only
    /// possible while stopping): nothing from it on is buffered, so no commit passes it.
    stalled_at: Option<i64>,
    /// Retry-safe ingest: the requests seen (None when `dedup.window_secs` is 0)…
    window: Option<tracegate_pipeline::dedup::Window>,
    /// …and whether it is still being rebuilt.
    replay: Replay,
    /// Highest offset read back into the window (a re-fetch is not read twice).
    replayed_to: Option<i64>,
}

impl Part {
    fn settled(&self) -> bool {
        matches!(self.stage, Stage::Idle)
            && (self.buf.is_empty() || !matches!(self.intent, Intent::Free))
    }
}

struct SinkDone {
    tp: Tp,
    epoch: u64,
    first: i64,
    result: Result<(), String>,
}

/// State shared between the driver thread and the async side (admin, signals).
#[derive(Default)]
pub struct Shared {
    shutdown: AtomicBool,
    sinks_healthy: AtomicBool,
    finished: AtomicBool,
}

struct Limits {
    max_spans: u64,
    max_bytes: usize,
    max_age: Duration,
    max_buffered: usize,
}

struct Driver {
    consumer: Arc<BaseConsumer<WriterContext>>,
    commit_tx: Option<mpsc::Sender<CommitReq>>,
    commit_rx: mpsc::Receiver<CommitDone>,
    committer: Option<std::thread::JoinHandle<()>>,
    limits: Limits,
    sinks: Vec<Arc<dyn Sink>>,
    rt: tokio::runtime::Handle,
    parts: HashMap<Tp, Part>,
    done_tx: mpsc::Sender<SinkDone>,
    done_rx: mpsc::Receiver<SinkDone>,
    next_epoch: u64,
    buffered: usize,
    shared: Arc<Shared>,
    quarantine: PathBuf,
    shutdown_timeout: Duration,
    dedup: Option<Dedup>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intent_round_trip() {
        assert_eq!(
            parse_metadata(&commit_metadata(Some(42), None)),
            (Some(42), None)
        );
        assert_eq!(commit_metadata(Some(42), None), "tg1 end=42");
        assert_eq!(
            parse_metadata("tg1 end=42"),
            (Some(42), None),
            "older writers' form"
        );
        assert_eq!(
            parse_metadata(&commit_metadata(Some(42), Some(7))),
            (Some(42), Some(7))
        );
        assert_eq!(
            parse_metadata(&commit_metadata(None, Some(7))),
            (None, Some(7))
        );
        assert_eq!(commit_metadata(None, None), "");
        assert_eq!(parse_metadata(""), (None, None));
        assert_eq!(parse_metadata("something else"), (None, None));
        assert_eq!(group_id("t", 3, 10, 19), "t:3:10-19");
    }
}
