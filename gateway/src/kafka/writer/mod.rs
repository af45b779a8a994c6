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
mod serve;
mod write;

use commit::*;
use cut::*;
pub use serve::serve;
use write::*;

const INTENT_PREFIX: &str = "tg1 end=";
const COMMITTED_FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// An async commit without an answer after this long is sent again.
const COMMIT_RESEND: Duration = Duration::from_secs(60);

pub fn intent_metadata(last: i64) -> String {
    format!("{INTENT_PREFIX}{last}")
}

pub fn parse_intent(metadata: &str) -> Option<i64> {
    metadata.strip_prefix(INTENT_PREFIX)?.trim().parse().ok()
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

/// One consumed message: its batch (None when it was quarantined), size and span count.
struct Msg {
    offset: i64,
    batch: Option<Batch>,
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intent_round_trip() {
        assert_eq!(parse_intent(&intent_metadata(42)), Some(42));
        assert_eq!(parse_intent(""), None);
        assert_eq!(parse_intent("something else"), None);
        assert_eq!(group_id("t", 3, 10, 19), "t:3:10-19");
    }
}
