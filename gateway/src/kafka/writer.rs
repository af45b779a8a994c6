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
use futures_util::future::BoxFuture;
use prost::Message as _;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::Message as _;
use rdkafka::statistics::Statistics;
use rdkafka::{Offset, TopicPartitionList};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracegate_proto::v1::Batch;

use super::config::KafkaConfig;
use super::stats::{self, StatsContext};
use crate::archive::fsutil::{create_dir_all_durable, sync_dir};
use crate::config::Config;
use crate::error::ApiError;
use crate::metrics as m;
use crate::queue::embedded::BatchQueue;
use crate::queue::sink::{Sink, WriteGroup};
use crate::server::{admin::Admin, listener};

/// Commit metadata that records a cut batch: `tg1 end=<last offset>`.
const INTENT_PREFIX: &str = "tg1 end=";
const COMMITTED_FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// An async commit without an answer after this long is sent again.
const COMMIT_RESEND: Duration = Duration::from_secs(60);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

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
    let ms = 100u64.saturating_mul(1 << attempt.min(6));
    Duration::from_millis(ms).min(MAX_BACKOFF)
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

fn tps(tpl: &TopicPartitionList) -> Vec<Tp> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect()
}

impl ClientContext for WriterContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.stats.log(level, fac, log_message)
    }
    fn error(&self, error: KafkaError, reason: &str) {
        self.stats.error(error, reason)
    }
    fn stats(&self, statistics: Statistics) {
        self.stats.stats(statistics)
    }
}

impl ConsumerContext for WriterContext {
    fn pre_rebalance(&self, _c: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                let list = tps(tpl);
                {
                    let mut owned = self.owned.lock().unwrap_or_else(|p| p.into_inner());
                    for tp in &list {
                        owned.remove(tp);
                    }
                }
                self.push(Event::Revoke(list));
            }
            Rebalance::Assign(_) => {}
            Rebalance::Error(e) => tracing::warn!(error = %e, "kafka rebalance error"),
        }
    }
    fn post_rebalance(&self, _c: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            self.push(Event::Assign(tps(tpl)));
        }
    }
}

impl WriterContext {
    fn push(&self, e: Event) {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(e);
    }
    fn take(&self) -> Vec<Event> {
        std::mem::take(&mut *self.events.lock().unwrap_or_else(|p| p.into_inner()))
    }
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

impl Driver {
    fn run(mut self) {
        let mut deadline: Option<Instant> = None;
        let mut last_poll_error: Option<Instant> = None;
        loop {
            let busy = self
                .parts
                .values()
                .any(|p| !p.settled() || !p.buf.is_empty());
            let timeout = if busy {
                Duration::from_millis(5)
            } else {
                Duration::from_millis(100)
            };
            let mut polled = 0;
            let mut t = timeout;
            while polled < 1000 {
                match self.consumer.poll(t) {
                    Some(Ok(msg)) => {
                        polled += 1;
                        let tp = (msg.topic().to_string(), msg.partition());
                        let payload = msg.payload().map(bytes::Bytes::copy_from_slice);
                        let offset = msg.offset();
                        drop(msg);
                        self.apply_events();
                        self.on_message(tp, offset, payload);
                        t = Duration::ZERO;
                    }
                    Some(Err(e)) => {
                        if last_poll_error.is_none_or(|at| at.elapsed() > Duration::from_secs(5)) {
                            tracing::warn!(error = %e, "kafka consumer error");
                            last_poll_error = Some(Instant::now());
                        }
                        break;
                    }
                    None => break,
                }
            }
            self.apply_events();
            self.apply_commit_results();
            self.apply_sink_results();
            let shutting_down = self.shared.shutdown.load(Ordering::Relaxed);
            if shutting_down && deadline.is_none() {
                tracing::info!("writer draining: pausing partitions, flushing buffered batches");
                deadline = Some(Instant::now() + self.shutdown_timeout);
            }
            self.step_all(shutting_down);
            self.update_pauses(shutting_down);
            self.report();
            if shutting_down {
                let settled = self.parts.values().all(Part::settled);
                if settled {
                    tracing::info!("writer drained");
                    break;
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    tracing::warn!(
                        "writer shutdown timeout; leaving unfinished batches to the next owner"
                    );
                    break;
                }
            }
        }
        // Stop the committer (it finishes the commit it is making), then drop the last
        // reference to the consumer, which leaves the group.
        drop(self.commit_tx.take());
        if let Some(c) = self.committer.take() {
            let _ = c.join();
        }
        drop(self.consumer);
        self.shared.finished.store(true, Ordering::Relaxed);
    }

    fn apply_events(&mut self) {
        for ev in self.consumer.context().take() {
            match ev {
                Event::Assign(list) => {
                    metrics::counter!(m::KAFKA_WRITER_REBALANCES, "kind" => "assign").increment(1);
                    tracing::info!(partitions = ?list, "partitions assigned");
                    let mut resume = TopicPartitionList::new();
                    for tp in &list {
                        resume.add_partition(&tp.0, tp.1);
                    }
                    // A partition we paused before it was revoked must not stay paused.
                    if let Err(e) = self.consumer.resume(&resume) {
                        tracing::warn!(error = %e, "resuming newly assigned partitions failed");
                    }
                    for tp in list {
                        self.next_epoch += 1;
                        self.consumer
                            .context()
                            .owned
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(tp.clone(), self.next_epoch);
                        let part = Part {
                            tp: tp.clone(),
                            epoch: self.next_epoch,
                            intent: Intent::Unknown,
                            intent_retry_at: Instant::now(),
                            buf: VecDeque::new(),
                            buf_bytes: 0,
                            buf_spans: 0,
                            last_offset: None,
                            stage: Stage::Idle,
                            paused: false,
                            stalled_at: None,
                        };
                        if let Some(old) = self.parts.insert(tp, part) {
                            self.buffered -= old.buf_bytes;
                        }
                    }
                    self.fetch_intents();
                }
                Event::Revoke(list) => {
                    metrics::counter!(m::KAFKA_WRITER_REBALANCES, "kind" => "revoke").increment(1);
                    tracing::info!(partitions = ?list, "partitions revoked; abandoning their unfinished batches");
                    for tp in list {
                        if let Some(old) = self.parts.remove(&tp) {
                            self.buffered -= old.buf_bytes;
                        }
                    }
                }
            }
        }
    }

    /// Reads the committed offset and its metadata of every partition whose intent is unknown.
    fn fetch_intents(&mut self) {
        let now = Instant::now();
        let want: Vec<Tp> = self
            .parts
            .iter()
            .filter(|(_, p)| p.intent == Intent::Unknown && p.intent_retry_at <= now)
            .map(|(tp, _)| tp.clone())
            .collect();
        if want.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for (t, p) in &want {
            tpl.add_partition(t, *p);
        }
        match self
            .consumer
            .committed_offsets(tpl, COMMITTED_FETCH_TIMEOUT)
        {
            Ok(got) => {
                for e in got.elements() {
                    let tp = (e.topic().to_string(), e.partition());
                    let Some(part) = self.parts.get_mut(&tp) else {
                        continue;
                    };
                    if e.error().is_err() {
                        part.intent_retry_at = now + Duration::from_secs(1);
                        continue;
                    }
                    part.intent = match (e.offset(), parse_intent(e.metadata())) {
                        (Offset::Offset(c), Some(end)) if end >= c => {
                            tracing::info!(topic = %tp.0, partition = tp.1, first = c, last = end, "resuming a batch that was cut before");
                            Intent::End(end)
                        }
                        _ => Intent::Free,
                    };
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading committed offsets failed; retrying");
                for tp in want {
                    if let Some(p) = self.parts.get_mut(&tp) {
                        p.intent_retry_at = now + Duration::from_secs(1);
                    }
                }
            }
        }
    }

    fn on_message(&mut self, tp: Tp, offset: i64, payload: Option<bytes::Bytes>) {
        let Some(part) = self.parts.get_mut(&tp) else {
            tracing::debug!(topic = %tp.0, partition = tp.1, offset, "message for an unassigned partition ignored");
            return;
        };
        if part.last_offset.is_some_and(|l| offset <= l) {
            return; // already buffered (a re-fetch after pause/resume)
        }
        if part.stalled_at.is_some() {
            return; // left for the next owner of the partition (see `stalled_at`)
        }
        let bytes = payload.as_ref().map_or(0, bytes::Bytes::len);
        // Decoding from `Bytes` keeps `otlp_request` a slice of the payload (no second copy).
        let batch = match payload.clone().map(Batch::decode) {
            Some(Ok(b)) if b.schema_version <= tracegate_proto::BATCH_SCHEMA_VERSION => Some(b),
            other => {
                let reason = match other {
                    None => "empty",
                    Some(Ok(_)) => "schema_too_new",
                    Some(Err(_)) => "undecodable",
                };
                let kept = quarantine(
                    &self.quarantine,
                    &tp,
                    offset,
                    reason,
                    payload.as_deref().unwrap_or_default(),
                    &self.shared,
                );
                if !kept {
                    // Not kept anywhere: the offset must never move past it.
                    tracing::error!(topic = %tp.0, partition = tp.1, offset, "unreadable message not quarantined; the partition is not committed past it");
                    part.stalled_at = Some(offset);
                    return;
                }
                None
            }
        };
        let spans = batch.as_ref().map_or(0, |b| u64::from(b.span_count));
        // A compressed payload counts at its decompressed size: the batch bounds
        // (`kafka.batch_max_bytes`) then bound what the ClickHouse sink holds once it has
        // decompressed the batch, as they did when payloads were always plain.
        let bytes = batch
            .as_ref()
            .map_or(bytes, |b| crate::envelope::inflated_len(b, bytes));
        part.buf.push_back(Msg {
            offset,
            batch,
            bytes,
            spans,
            arrived: Instant::now(),
        });
        part.buf_bytes += bytes;
        part.buf_spans += spans;
        part.last_offset = Some(offset);
        self.buffered += bytes;
    }

    fn apply_commit_results(&mut self) {
        while let Ok(d) = self.commit_rx.try_recv() {
            self.on_commit(&d.tp, d.epoch, d.offset, d.error);
        }
    }

    fn on_commit(&mut self, tp: &Tp, epoch: u64, offset: i64, err: Option<String>) {
        tracing::debug!(topic = %tp.0, partition = tp.1, offset, error = ?err, "commit result");
        let Some(part) = self.parts.get_mut(tp) else {
            return;
        };
        if part.epoch != epoch {
            return;
        }
        let now = Instant::now();
        let kind;
        match &mut part.stage {
            Stage::IntentCommit {
                cut,
                sent_at,
                retry_at,
                attempt,
            } if sent_at.is_some() && offset == cut.first => {
                kind = "intent";
                if err.is_none() {
                    let cut = cut.clone();
                    part.stage = Stage::Writing {
                        cut: cut.clone(),
                        attempt: 0,
                    };
                    spawn_write(&self.rt, &self.sinks, &self.done_tx, tp, part.epoch, cut);
                } else {
                    *sent_at = None;
                    *retry_at = now + backoff(*attempt);
                    *attempt += 1;
                }
            }
            Stage::DoneCommit {
                cut,
                next,
                sent_at,
                retry_at,
                attempt,
            } if sent_at.is_some() && offset == cut.last + 1 => {
                kind = "done";
                if err.is_none() {
                    metrics::counter!(m::KAFKA_WRITER_BATCHES).increment(1);
                    metrics::counter!(m::KAFKA_WRITER_MESSAGES).increment(cut.messages as u64);
                    metrics::counter!(m::KAFKA_WRITER_SPANS).increment(cut.spans);
                    metrics::histogram!(m::KAFKA_WRITER_BATCH_DURATION)
                        .record(cut.cut_at.elapsed().as_secs_f64());
                    tracing::debug!(group = %cut.group.id, "batch committed");
                    part.stage = match next.take() {
                        Some(n) => {
                            spawn_write(
                                &self.rt,
                                &self.sinks,
                                &self.done_tx,
                                tp,
                                part.epoch,
                                n.clone(),
                            );
                            Stage::Writing { cut: n, attempt: 0 }
                        }
                        None => Stage::Idle,
                    };
                } else {
                    *sent_at = None;
                    *retry_at = now + backoff(*attempt);
                    *attempt += 1;
                }
            }
            _ => return, // a late answer for an abandoned stage
        }
        let result = if err.is_none() { "ok" } else { "error" };
        metrics::counter!(m::KAFKA_WRITER_COMMITS, "kind" => kind, "result" => result).increment(1);
        if let Some(e) = err {
            tracing::warn!(topic = %tp.0, partition = tp.1, offset, kind, error = %e, "offset commit failed; retrying");
        }
    }

    fn apply_sink_results(&mut self) {
        while let Ok(done) = self.done_rx.try_recv() {
            let Some(part) = self.parts.get_mut(&done.tp) else {
                continue;
            };
            if part.epoch != done.epoch {
                continue;
            }
            let Stage::Writing { cut, attempt } = &part.stage else {
                continue;
            };
            if cut.first != done.first {
                continue;
            }
            let (cut, attempt) = (cut.clone(), *attempt);
            match done.result {
                Ok(()) => {
                    self.shared.sinks_healthy.store(true, Ordering::Relaxed);
                    let next = if self.shared.shutdown.load(Ordering::Relaxed) {
                        cut_batch(part, &self.limits, true, &mut self.buffered)
                    } else {
                        cut_batch(part, &self.limits, false, &mut self.buffered)
                    };
                    part.stage = Stage::DoneCommit {
                        cut,
                        next: next.map(Arc::new),
                        sent_at: None,
                        retry_at: Instant::now(),
                        attempt: 0,
                    };
                }
                Err(e) => {
                    self.shared.sinks_healthy.store(false, Ordering::Relaxed);
                    let wait = backoff(attempt);
                    tracing::error!(group = %cut.group.id, error = %e, retry_in_ms = wait.as_millis() as u64, "sink write failed; the same batch will be written again");
                    part.stage = Stage::SinkRetry {
                        cut,
                        at: Instant::now() + wait,
                        attempt: attempt + 1,
                    };
                }
            }
        }
    }

    fn step_all(&mut self, shutting_down: bool) {
        if self
            .parts
            .values()
            .any(|p| p.intent == Intent::Unknown && p.intent_retry_at <= Instant::now())
        {
            self.fetch_intents();
        }
        let now = Instant::now();
        let tps: Vec<Tp> = self.parts.keys().cloned().collect();
        for tp in tps {
            let Some(part) = self.parts.get_mut(&tp) else {
                continue;
            };
            match &mut part.stage {
                Stage::Idle => {
                    if let Some(cut) =
                        cut_batch(part, &self.limits, shutting_down, &mut self.buffered)
                    {
                        part.stage = Stage::IntentCommit {
                            cut: Arc::new(cut),
                            sent_at: None,
                            retry_at: now,
                            attempt: 0,
                        };
                    }
                }
                Stage::SinkRetry { cut, at, attempt } if *at <= now => {
                    let cut = cut.clone();
                    let attempt = *attempt;
                    spawn_write(
                        &self.rt,
                        &self.sinks,
                        &self.done_tx,
                        &tp,
                        part.epoch,
                        cut.clone(),
                    );
                    part.stage = Stage::Writing { cut, attempt };
                }
                _ => {}
            }
            // Send (or resend) commits that are due.
            let commit = match &mut part.stage {
                Stage::IntentCommit {
                    cut,
                    sent_at,
                    retry_at,
                    ..
                } => due(sent_at, *retry_at, now).then(|| (cut.first, intent_metadata(cut.last))),
                Stage::DoneCommit {
                    cut,
                    next,
                    sent_at,
                    retry_at,
                    ..
                } => due(sent_at, *retry_at, now).then(|| {
                    let meta = next
                        .as_ref()
                        .map_or_else(String::new, |n| intent_metadata(n.last));
                    (cut.last + 1, meta)
                }),
                _ => None,
            };
            if let Some((offset, meta)) = commit {
                tracing::debug!(topic = %tp.0, partition = tp.1, offset, meta, "committing");
                let req = CommitReq {
                    tp: tp.clone(),
                    epoch: part.epoch,
                    offset,
                    metadata: meta,
                };
                match self.commit_tx.as_ref().map(|t| t.send(req)) {
                    Some(Ok(())) => set_sent(&mut part.stage, now),
                    _ => set_retry(&mut part.stage, now),
                }
            }
        }
    }

    fn update_pauses(&mut self, shutting_down: bool) {
        let over_total = self.buffered >= self.limits.max_buffered;
        let mut pause = TopicPartitionList::new();
        let mut resume = TopicPartitionList::new();
        let mut changed = Vec::new();
        for (tp, p) in &self.parts {
            let waiting = !matches!(p.stage, Stage::Idle);
            let full = p.buf_bytes >= self.limits.max_bytes
                || p.buf_spans >= self.limits.max_spans
                || (over_total && !p.buf.is_empty());
            let should = shutting_down || (waiting && full);
            if should != p.paused {
                if should {
                    pause.add_partition(&tp.0, tp.1);
                } else {
                    resume.add_partition(&tp.0, tp.1);
                }
                changed.push((tp.clone(), should));
            }
        }
        if pause.count() > 0 {
            if let Err(e) = self.consumer.pause(&pause) {
                tracing::warn!(error = %e, "pausing partitions failed");
                return;
            }
        }
        if resume.count() > 0 {
            if let Err(e) = self.consumer.resume(&resume) {
                tracing::warn!(error = %e, "resuming partitions failed");
                return;
            }
        }
        for (tp, paused) in changed {
            if let Some(p) = self.parts.get_mut(&tp) {
                p.paused = paused;
            }
        }
    }

    fn report(&self) {
        metrics::gauge!(m::KAFKA_WRITER_BUFFERED_BYTES).set(self.buffered as f64);
        metrics::gauge!(m::KAFKA_WRITER_ASSIGNED_PARTITIONS).set(self.parts.len() as f64);
        let paused = self.parts.values().filter(|p| p.paused).count();
        metrics::gauge!(m::KAFKA_WRITER_PAUSED_PARTITIONS).set(paused as f64);
    }
}

fn due(sent_at: &Option<Instant>, retry_at: Instant, now: Instant) -> bool {
    match sent_at {
        None => retry_at <= now,
        Some(at) => now.duration_since(*at) >= COMMIT_RESEND,
    }
}

fn set_sent(stage: &mut Stage, now: Instant) {
    match stage {
        Stage::IntentCommit { sent_at, .. } | Stage::DoneCommit { sent_at, .. } => {
            *sent_at = Some(now)
        }
        _ => {}
    }
}

fn set_retry(stage: &mut Stage, now: Instant) {
    match stage {
        Stage::IntentCommit {
            sent_at,
            retry_at,
            attempt,
            ..
        }
        | Stage::DoneCommit {
            sent_at,
            retry_at,
            attempt,
            ..
        } => {
            *sent_at = None;
            *retry_at = now + backoff(*attempt);
            *attempt += 1;
        }
        _ => {}
    }
}

fn commit_sync(
    consumer: &BaseConsumer<WriterContext>,
    tp: &Tp,
    offset: i64,
    metadata: &str,
) -> KafkaResult<()> {
    let mut tpl = TopicPartitionList::new();
    {
        let mut e = tpl.add_partition(&tp.0, tp.1);
        e.set_offset(Offset::Offset(offset))?;
        if !metadata.is_empty() {
            e.set_metadata(metadata);
        }
    }
    consumer.commit(&tpl, CommitMode::Sync)
}

/// The committer thread: one synchronous commit at a time, results back to the driver.
fn committer(
    consumer: Arc<BaseConsumer<WriterContext>>,
    rx: mpsc::Receiver<CommitReq>,
    tx: mpsc::Sender<CommitDone>,
) {
    for req in rx {
        let owned = consumer
            .context()
            .owned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&req.tp)
            == Some(&req.epoch);
        let r = if owned {
            commit_sync(&consumer, &req.tp, req.offset, &req.metadata).map_err(|e| e.to_string())
        } else {
            Err("partition revoked; commit dropped".to_string())
        };
        let _ = tx.send(CommitDone {
            tp: req.tp,
            epoch: req.epoch,
            offset: req.offset,
            error: r.err(),
        });
    }
}

/// Cuts the next batch from the front of `part.buf`, if one is due. `flush` cuts whatever is
/// buffered (shutdown). A pending intent is honoured exactly.
fn cut_batch(part: &mut Part, l: &Limits, flush: bool, buffered: &mut usize) -> Option<Cut> {
    let front = part.buf.front()?;
    let take = match part.intent {
        Intent::Unknown => return None,
        Intent::End(end) => {
            if front.offset > end {
                // Nothing of the recorded range is left (e.g. deleted by retention).
                part.intent = Intent::Free;
                return cut_batch(part, l, flush, buffered);
            }
            if part.last_offset.is_none_or(|last| last < end) {
                return None; // wait for the rest of the recorded range
            }
            part.buf.iter().take_while(|m| m.offset <= end).count()
        }
        Intent::Free => {
            let full = part.buf_spans >= l.max_spans || part.buf_bytes >= l.max_bytes;
            let old = front.arrived.elapsed() >= l.max_age;
            if !(full || old || flush) {
                return None;
            }
            let (mut n, mut spans, mut bytes) = (0usize, 0u64, 0usize);
            for m in &part.buf {
                if n > 0 && (spans + m.spans > l.max_spans || bytes + m.bytes > l.max_bytes) {
                    break;
                }
                n += 1;
                spans += m.spans;
                bytes += m.bytes;
            }
            n
        }
    };
    part.intent = Intent::Free;
    let msgs: Vec<Msg> = part.buf.drain(..take).collect();
    let (first, last) = (msgs[0].offset, msgs[msgs.len() - 1].offset);
    let bytes: usize = msgs.iter().map(|m| m.bytes).sum();
    let spans: u64 = msgs.iter().map(|m| m.spans).sum();
    part.buf_bytes -= bytes;
    part.buf_spans -= spans;
    *buffered -= bytes;
    let messages = msgs.len();
    Some(Cut {
        first,
        last,
        messages,
        spans,
        group: Arc::new(WriteGroup {
            id: group_id(&part.tp.0, part.tp.1, first, last),
            batches: msgs.into_iter().filter_map(|m| m.batch).collect(),
            // No request waits on a Kafka writer's group: nothing to put ahead of it.
            class: Default::default(),
        }),
        cut_at: Instant::now(),
    })
}

fn spawn_write(
    rt: &tokio::runtime::Handle,
    sinks: &[Arc<dyn Sink>],
    tx: &mpsc::Sender<SinkDone>,
    tp: &Tp,
    epoch: u64,
    cut: Arc<Cut>,
) {
    let sinks = sinks.to_vec();
    let tx = tx.clone();
    let tp = tp.clone();
    rt.spawn(async move {
        let started = Instant::now();
        let mut result = Ok(());
        if !cut.group.batches.is_empty() {
            for s in &sinks {
                if let Err(e) = s.write(cut.group.clone()).await {
                    metrics::counter!(m::WRITE_ERRORS, "sink" => s.name()).increment(1);
                    result = Err(format!("{} sink: {e:#}", s.name()));
                    break;
                }
            }
        }
        if result.is_ok() {
            metrics::histogram!(m::WRITE_DURATION).record(started.elapsed().as_secs_f64());
            metrics::counter!(m::BATCHES_WRITTEN).increment(cut.group.batches.len() as u64);
        }
        let _ = tx.send(SinkDone {
            tp,
            epoch,
            first: cut.first,
            result,
        });
    });
}

/// Keeps an unreadable message (never dropped): `<data dir>/kafka-quarantine/<topic>/
/// <partition>-<offset>.<reason>.bin`, fsynced before the offset can move past it. Retries
/// until it is written (the disk the sinks need is failing too) or shutdown. Returns whether
/// it was written (false only when it gave up because the process is stopping).
fn quarantine(
    dir: &Path,
    tp: &Tp,
    offset: i64,
    reason: &'static str,
    bytes: &[u8],
    shared: &Shared,
) -> bool {
    metrics::counter!(m::KAFKA_WRITER_QUARANTINED, "reason" => reason).increment(1);
    tracing::error!(topic = %tp.0, partition = tp.1, offset, reason, "message is not a readable tracegate.v1.Batch; quarantined");
    let d = dir.join(safe(&tp.0));
    let path = d.join(format!("{}-{offset}.{reason}.bin", tp.1));
    let mut attempt = 0;
    loop {
        let r = (|| -> Result<()> {
            create_dir_all_durable(&d)?;
            std::fs::write(&path, bytes)?;
            std::fs::File::open(&path)?.sync_all()?;
            sync_dir(&d)?;
            Ok(())
        })();
        match r {
            Ok(()) => return true,
            Err(e) => {
                tracing::error!(path = %path.display(), error = %format!("{e:#}"), "cannot write quarantine file; retrying");
                if shared.shutdown.load(Ordering::Relaxed) && attempt > 3 {
                    return false;
                }
                std::thread::sleep(backoff(attempt));
                attempt += 1;
            }
        }
    }
}

fn safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Readiness of the writer for `/readyz`, through the admin handler's queue seam.
struct WriterStatus {
    shared: Arc<Shared>,
    reach: Arc<stats::Reachability>,
}

impl BatchQueue for WriterStatus {
    fn publish(&self, _batch: Batch) -> BoxFuture<'_, Result<(), ApiError>> {
        Box::pin(async { Err(ApiError::internal("the writer takes no batches")) })
    }
    fn is_ready(&self) -> bool {
        self.reach.is_up()
            && self.shared.sinks_healthy.load(Ordering::Relaxed)
            && !self.shared.shutdown.load(Ordering::Relaxed)
    }
}

/// Runs `tracegate write` until `shutdown` resolves, then drains (flush, commit) and returns.
/// Prints `tracegate writer ready admin=ADDR topic=T group=G` once subscribed.
pub async fn serve(config: Config, shutdown: impl Future<Output = ()>) -> Result<()> {
    let kcfg = config
        .kafka
        .clone()
        .context("tracegate write needs a [kafka] section (kafka.brokers, kafka.topic)")?;
    let prometheus = m::install();
    m::register(m::Parts {
        kafka_writer: true,
        archive: true,
        clickhouse: config.clickhouse.is_some(),
        ..Default::default()
    });
    let data_dir = config.server.data_dir.clone();
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating data dir {}", data_dir.display()))?;
    // The archive of `[archive]` (local or S3, encrypted; docs/archive-format.md).
    let mut sinks: Vec<Arc<dyn Sink>> = vec![crate::archive::store::archive_sink(&config)?];
    // ClickHouse (docs/clickhouse.md): the group id `topic:partition:first-last` is the insert
    // deduplication token, so a range re-read after a crash is dropped by ClickHouse.
    let clickhouse_stop = crate::clickhouse::sink::from_config(&config)?.map(|(sink, stop)| {
        sinks.push(sink);
        stop
    });
    let admin_listener = TcpListener::bind(kcfg.writer_admin_addr)
        .await
        .with_context(|| format!("binding kafka.writer_admin_addr {}", kcfg.writer_admin_addr))?;
    let admin_addr: SocketAddr = admin_listener.local_addr()?;

    let stats_ctx = StatsContext::new("consumer");
    let reach = stats_ctx.reach.clone();
    let ctx = WriterContext {
        stats: stats_ctx,
        events: Mutex::new(Vec::new()),
        owned: Arc::new(Mutex::new(HashMap::new())),
    };
    let consumer: BaseConsumer<WriterContext> = kcfg
        .consumer_config()
        .create_with_context(ctx)
        .map_err(|e| anyhow::anyhow!("creating the Kafka consumer: {e}"))?;
    consumer
        .subscribe(&[kcfg.topic.as_str()])
        .map_err(|e| anyhow::anyhow!("subscribing to {}: {e}", kcfg.topic))?;

    let shared = Arc::new(Shared::default());
    shared.sinks_healthy.store(true, Ordering::Relaxed);
    let (done_tx, done_rx) = mpsc::channel();
    let consumer = Arc::new(consumer);
    let (commit_tx, commit_req_rx) = mpsc::channel();
    let (commit_done_tx, commit_rx) = mpsc::channel();
    let committer_thread = {
        let consumer = consumer.clone();
        std::thread::Builder::new()
            .name("kafka-committer".into())
            .spawn(move || committer(consumer, commit_req_rx, commit_done_tx))
            .context("starting the committer thread")?
    };
    let driver = Driver {
        consumer,
        commit_tx: Some(commit_tx),
        commit_rx,
        committer: Some(committer_thread),
        limits: limits(&kcfg),
        sinks,
        rt: tokio::runtime::Handle::current(),
        parts: HashMap::new(),
        done_tx,
        done_rx,
        next_epoch: 0,
        buffered: 0,
        shared: shared.clone(),
        quarantine: data_dir.join("kafka-quarantine"),
        shutdown_timeout: Duration::from_millis(config.server.shutdown_timeout_ms),
    };
    let (fin_tx, fin_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("kafka-writer".into())
        .spawn(move || {
            driver.run();
            let _ = fin_tx.send(());
        })
        .context("starting the writer thread")?;

    let shutting_down = Arc::new(AtomicBool::new(false));
    let admin_stop = CancellationToken::new();
    let admin = tokio::spawn(listener::serve(
        "admin",
        admin_listener,
        Arc::new(Admin {
            prometheus,
            queue: Arc::new(WriterStatus {
                shared: shared.clone(),
                reach,
            }),
            shutting_down: shutting_down.clone(),
        }),
        admin_stop.clone(),
        Duration::from_secs(1),
    ));
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "tracegate writer ready admin={admin_addr} topic={} group={}",
            kcfg.topic, kcfg.group_id
        )?;
        out.flush()?;
    }
    tracing::info!(admin = %admin_addr, topic = %kcfg.topic, group = %kcfg.group_id, data_dir = %data_dir.display(), "tracegate writer started");

    let mut fin_rx = fin_rx;
    tokio::select! {
        _ = shutdown => {
            tracing::info!("shutdown requested");
        }
        _ = &mut fin_rx => {
            anyhow::bail!("the writer loop stopped unexpectedly");
        }
    }
    shutting_down.store(true, Ordering::Relaxed);
    shared.shutdown.store(true, Ordering::Relaxed);
    // A failing ClickHouse insert is not retried any more: its range stays uncommitted and the
    // next owner writes it again (same tokens).
    if let Some(stop) = &clickhouse_stop {
        stop.cancel();
    }
    // The loop drains within server.shutdown_timeout_ms; leaving the group gets a little more.
    let wait = Duration::from_millis(config.server.shutdown_timeout_ms) + Duration::from_secs(10);
    if tokio::time::timeout(wait, fin_rx).await.is_err() {
        tracing::warn!("the writer did not stop in time; exiting anyway");
    }
    admin_stop.cancel();
    let _ = admin.await;
    tracing::info!("shutdown complete");
    Ok(())
}

fn limits(k: &KafkaConfig) -> Limits {
    Limits {
        max_spans: k.batch_max_spans as u64,
        max_bytes: k.batch_max_bytes,
        max_age: Duration::from_millis(k.batch_max_age_ms),
        max_buffered: k.writer_max_buffered_bytes,
    }
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
