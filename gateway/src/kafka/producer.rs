//! The gateway's Kafka side: a `BatchQueue` whose `publish` resolves only after the broker
//! acknowledged every message of the batch (idempotent producer, `acks=all`).
//!
//! Refusals are immediate and retryable (HTTP 503 + Retry-After / gRPC UNAVAILABLE +
//! RetryInfo): no broker reachable, or the bytes waiting for acknowledgements would exceed
//! `kafka.queue_max_bytes`. A message not acknowledged within `kafka.delivery_timeout_ms`
//! fails its request the same way. A request that failed may still have been written (a
//! timed-out message can land later): the layers below absorb duplicates.
//!
//! A fatal librdkafka error (the idempotent producer lost its sequence with the broker) ends
//! that producer for good. The pool is then rebuilt in place, without a restart: requests on
//! the dead producer get a retryable error (their messages are purged), new ones wait for
//! the new producers' acknowledgements as always.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use futures_util::future::{join_all, BoxFuture};
use rdkafka::error::KafkaError;
use rdkafka::producer::{Producer, PurgeConfig, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use tokio::sync::{oneshot, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracegate_proto::v1::Batch;

use super::config::{KafkaConfig, PartitionKey};
use super::msk_iam;
use super::owned;
use super::sched;
use super::split::{self, SplitError};
use super::stats::{Reachability, StatsContext};
use crate::metrics as m;
use tracegate_pipeline::{BatchQueue, Class, QueueError};

/// How often the reachability probe asks for metadata while no broker is known to be up, and
/// while one is.
const PROBE_DOWN: Duration = Duration::from_millis(500);
const PROBE_UP: Duration = Duration::from_secs(5);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// `kafka.producers` clients, used in turn (the first one reports librdkafka statistics), then
/// the client kept for batches under `kafka.small_batch_bytes` if there is one (it reports
/// statistics as `producer_small`), and their shared reachability: replaced together after a
/// fatal error.
struct Pool {
    producers: Vec<ThreadedProducer<StatsContext>>,
    reach: Arc<Reachability>,
}

/// Which of `n` clients takes a batch of `total` bytes: the last, kept for small batches when
/// `small_below` (`kafka.small_batch_bytes`) is not 0, if the batch is under it; otherwise one
/// of the others, by `turn` (taken only for those, so they are used in turn).
///
/// Why two kinds: a small batch's message leaves room for more in one produce request, and the
/// small batches' client, whose broker thread waits under `SCHED_BATCH` until the async worker
/// waits, gathers them (sched.rs); a large one fills a produce request alone, gains nothing
/// from the wait and lost up to 8 % under it (docs/benchmarks.md, "Issue 21, session 24").
fn pick(n: usize, total: usize, small_below: usize, turn: impl FnOnce() -> usize) -> usize {
    if total < small_below {
        return n - 1;
    }
    turn() % (n - usize::from(small_below > 0))
}

impl Pool {
    /// `tokens`: the current MSK IAM token, set on each new producer (msk_iam.rs).
    fn build(cfg: &KafkaConfig, tokens: Option<&msk_iam::Tokens>) -> anyhow::Result<Pool> {
        // One reachability for the pool: they talk to the same brokers, and a fatal error in
        // any of them must stop the pool from taking work.
        let reach = Arc::new(Reachability::default());
        let small = usize::from(cfg.small_batch_bytes > 0);
        let mut producers = Vec::with_capacity(cfg.producers + small);
        for i in 0..cfg.producers + small {
            let for_small = i == cfg.producers;
            let mut config = cfg.producer_config();
            if i > 0 && !for_small {
                // Statistics come from the first of the pool's producers only: the pool shares
                // the load evenly, and librdkafka's counters of several clients cannot be set as
                // one absolute value (docs/kafka.md, metrics).
                config.set("statistics.interval.ms", "0");
            }
            let client = if for_small {
                "producer_small"
            } else {
                "producer"
            };
            let ctx = StatsContext::with_reach(client, reach.clone());
            let create = || config.create_with_context::<_, ThreadedProducer<StatsContext>>(ctx);
            let created = if for_small {
                let (created, set) = sched::inheriting_batch(create);
                if !set {
                    tracing::warn!("kafka: could not run the small batches' producer under SCHED_BATCH; it keeps the normal policy");
                }
                created
            } else {
                create()
            };
            let p = created.map_err(|e| anyhow::anyhow!("creating the Kafka producer: {e}"))?;
            if let Some(t) = tokens {
                t.apply_to(p.client());
            }
            producers.push(p);
        }
        Ok(Pool { producers, reach })
    }
}

struct Inner {
    pool: ArcSwap<Pool>,
    /// A replacement pool is being built (at most one at a time).
    rebuilding: AtomicBool,
    /// For building a replacement pool.
    cfg: KafkaConfig,
    /// The MSK IAM token, when SASL/OAUTHBEARER is used.
    tokens: Option<Arc<msk_iam::Tokens>>,
    next: AtomicUsize,
    topic: String,
    /// `topic` for librdkafka (checked for NUL bytes once, at start).
    topic_c: std::ffi::CString,
    key: PartitionKey,
    max_message_bytes: usize,
    /// Bytes of messages handed to librdkafka and not yet acknowledged or failed.
    bytes: Arc<Semaphore>,
    limit: usize,
    delivery_timeout: Duration,
}

impl Inner {
    /// The producer of `pool` for a batch of `total` bytes (`pick`): all of one batch's messages
    /// go through it.
    fn producer<'a>(&self, pool: &'a Pool, total: usize) -> &'a ThreadedProducer<StatsContext> {
        let turn = || self.next.fetch_add(1, Ordering::Relaxed);
        let i = pick(
            pool.producers.len(),
            total,
            self.cfg.small_batch_bytes,
            turn,
        );
        &pool.producers[i]
    }

    fn reach(&self) -> Arc<Reachability> {
        self.pool.load().reach.clone()
    }

    fn report_queue(&self) {
        let used = self.limit.saturating_sub(self.bytes.available_permits());
        metrics::gauge!(m::KAFKA_PRODUCER_QUEUE_BYTES).set(used as f64);
    }
}

/// The Kafka `BatchQueue`.
pub struct KafkaQueue {
    inner: Arc<Inner>,
}

/// Stops the reachability probe and flushes the producer.
pub struct ProducerHandle {
    inner: Arc<Inner>,
    stop: CancellationToken,
    probe: JoinHandle<()>,
}

impl ProducerHandle {
    /// Every request was answered before this is called; flush whatever librdkafka still holds
    /// (nothing, normally) within the delivery timeout.
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = self.probe.await;
        let inner = self.inner.clone();
        let timeout = inner.delivery_timeout;
        let r = tokio::task::spawn_blocking(move || {
            // Flushed together: each gets what is left of the one timeout.
            let deadline = Instant::now() + timeout;
            let mut result = Ok(());
            for p in &inner.pool.load().producers {
                let left = deadline.saturating_duration_since(Instant::now());
                if let Err(e) = p.flush(left) {
                    result = Err(e);
                }
            }
            result
        })
        .await;
        match r {
            Ok(Ok(())) => tracing::info!("kafka producers flushed"),
            Ok(Err(e)) => tracing::warn!(error = %e, "kafka producer flush incomplete"),
            Err(e) => tracing::warn!(error = %e, "kafka producer flush task failed"),
        }
    }
}

impl KafkaQueue {
    /// Creates the producers and starts their reachability probe (a metadata request for the
    /// topic). Must run inside a tokio runtime.
    pub fn start(cfg: &KafkaConfig) -> anyhow::Result<(Self, ProducerHandle)> {
        let tokens = cfg
            .msk_iam_region()
            .map(|_| Arc::new(msk_iam::Tokens::default()));
        let pool = Pool::build(cfg, tokens.as_deref())?;
        metrics::gauge!(m::KAFKA_PRODUCER_QUEUE_BYTES_LIMIT).set(cfg.queue_max_bytes as f64);
        let inner = Arc::new(Inner {
            pool: ArcSwap::from_pointee(pool),
            rebuilding: AtomicBool::new(false),
            cfg: cfg.clone(),
            tokens: tokens.clone(),
            next: AtomicUsize::new(0),
            topic: cfg.topic.clone(),
            topic_c: std::ffi::CString::new(cfg.topic.clone())
                .map_err(|_| anyhow::anyhow!("kafka.topic contains a NUL byte"))?,
            key: cfg.partition_key,
            max_message_bytes: cfg.message_max_bytes,
            bytes: Arc::new(Semaphore::new(cfg.queue_max_bytes)),
            limit: cfg.queue_max_bytes,
            delivery_timeout: Duration::from_millis(cfg.delivery_timeout_ms),
        });
        inner.report_queue();
        let stop = CancellationToken::new();
        if let (Some(region), Some(tokens)) = (cfg.msk_iam_region(), tokens) {
            // Each new token goes to the producers of the pool in use then.
            let i = inner.clone();
            let apply = move |t: &msk_iam::Token| {
                for p in &i.pool.load().producers {
                    if let Err(e) = msk_iam::set_token(p.client(), t) {
                        tracing::error!(error = %e, "kafka: could not set the MSK IAM token");
                    }
                }
            };
            msk_iam::keep_fresh(region.to_string(), tokens, apply, stop.clone());
        }
        let probe = tokio::spawn(probe_loop(inner.clone(), stop.clone()));
        Ok((
            Self {
                inner: inner.clone(),
            },
            ProducerHandle { inner, stop, probe },
        ))
    }
}

/// Keeps `reach` current: librdkafka connects lazily and reports "all brokers down" but not
/// their return, so ask for the topic's metadata now and then.
///
/// Each client of the pool is asked in turn, so none sits idle for long: brokers close a
/// connection idle for `connections.max.idle.ms` (10 min by default), and a client that had
/// connected to every broker and saw all of them closed reports all brokers down (librdkafka
/// counts brokers it never connected to as not down), which refuses requests on every client
/// until statistics or the probe see one up again. The small batches' client is idle for as
/// long as every request is large.
async fn probe_loop(inner: Arc<Inner>, stop: CancellationToken) {
    let mut warned_missing = false;
    let mut turn = 0usize;
    loop {
        let i = inner.clone();
        turn = turn.wrapping_add(1);
        let r = tokio::task::spawn_blocking(move || {
            let pool = i.pool.load();
            // The authoritative check, should the FATAL log line ever not come.
            if pool
                .producers
                .iter()
                .any(|p| p.client().fatal_error().is_some())
            {
                pool.reach.mark_fatal();
            }
            pool.producers[turn % pool.producers.len()]
                .client()
                .fetch_metadata(Some(&i.topic), PROBE_TIMEOUT)
        })
        .await;
        let up = match r {
            Ok(Ok(md)) => {
                let t = md.topics().iter().find(|t| t.name() == inner.topic);
                match t {
                    Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
                        warned_missing = false;
                        t.partitions().iter().any(|p| p.leader() >= 0)
                    }
                    _ => {
                        if !warned_missing {
                            tracing::error!(topic = %inner.topic, "kafka topic does not exist (create it, see docs/kafka.md)");
                            warned_missing = true;
                        }
                        false
                    }
                }
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "kafka metadata probe failed");
                false
            }
            Err(_) => false,
        };
        let reach = inner.reach();
        if reach.is_fatal() {
            rebuild(&inner);
        }
        let was = reach.is_up();
        reach.set_up(up);
        if was != up {
            tracing::info!(reachable = up, "kafka broker reachability changed");
        }
        let wait = if up { PROBE_UP } else { PROBE_DOWN };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {},
            _ = stop.cancelled() => return,
        }
    }
}

/// Replaces a pool that failed fatally (once, in the background): new producers take new
/// requests; the old pool's queued and in-flight messages are purged, so the requests waiting
/// on them get a retryable error now rather than at their delivery timeout. The brokers were
/// reachable a moment ago, so the new pool starts as reachable.
fn rebuild(inner: &Arc<Inner>) {
    if inner.rebuilding.swap(true, Ordering::AcqRel) {
        return;
    }
    let inner = inner.clone();
    tokio::task::spawn_blocking(move || {
        match Pool::build(&inner.cfg, inner.tokens.as_deref()) {
            Ok(pool) => {
                pool.reach.set_up(true);
                let old = inner.pool.swap(Arc::new(pool));
                for p in &old.producers {
                    p.purge(PurgeConfig::default().queue().inflight());
                }
                metrics::counter!(m::KAFKA_PRODUCER_REBUILDS).increment(1);
                tracing::warn!("replaced the Kafka producers after a fatal error");
                drop(old);
            }
            Err(e) => {
                tracing::error!(error = %e, "could not replace the failed Kafka producers; retrying")
            }
        }
        inner.rebuilding.store(false, Ordering::Release);
    });
}

fn refuse(reason: &'static str, e: QueueError) -> QueueError {
    metrics::counter!(m::KAFKA_DELIVERY_FAILURES, "reason" => reason).increment(1);
    e
}

/// A librdkafka error as a retryable answer plus a bounded reason label.
fn delivery_error(e: &KafkaError, timeout: Duration) -> QueueError {
    match e.rdkafka_error_code() {
        Some(RDKafkaErrorCode::QueueFull) => refuse(
            "queue_full",
            QueueError::unavailable("the Kafka producer queue is full; retry later"),
        ),
        Some(RDKafkaErrorCode::MessageTimedOut) => refuse(
            "timeout",
            QueueError::unavailable(format!(
                "Kafka did not acknowledge within {} ms; retry later",
                timeout.as_millis()
            )),
        ),
        Some(RDKafkaErrorCode::MessageSizeTooLarge)
        | Some(RDKafkaErrorCode::InvalidMessageSize) => {
            tracing::error!(error = %e, "the broker refused a message as too large: kafka.message_max_bytes must not exceed the topic's max.message.bytes");
            refuse(
                "too_large",
                QueueError::unavailable("Kafka refused the message size; retry later"),
            )
        }
        _ => refuse(
            "other",
            QueueError::unavailable(format!("Kafka delivery failed ({e}); retry later")),
        ),
    }
}

impl Inner {
    /// Refuses at once (retryable) when the producer cannot deliver: no broker is reachable,
    /// or librdkafka failed fatally.
    fn refuse_unless_up(self: &Arc<Self>, reach: &Reachability) -> Result<(), QueueError> {
        if reach.is_fatal() {
            rebuild(self);
            return Err(refuse(
                "fatal",
                QueueError::unavailable(
                    "the Kafka producer failed fatally and is being replaced; retry later",
                ),
            ));
        }
        if !reach.is_up() {
            return Err(refuse(
                "no_broker",
                QueueError::unavailable("no Kafka broker is reachable; retry later"),
            ));
        }
        Ok(())
    }
}

/// The batch as Kafka messages (split.rs); a split (a pass over the whole payload) runs off the
/// async worker. An unsplit batch with `room` is written around its payload where it lies.
async fn messages(
    inner: &Inner,
    batch: Batch,
    room: Option<Bytes>,
) -> Result<Vec<split::KafkaMessage>, QueueError> {
    let key_len = split::key(&batch, inner.key).len();
    let (strategy, max) = (inner.key, inner.max_message_bytes);
    let msgs = if split::needs_split(&batch, key_len, max) {
        drop(room);
        tokio::task::spawn_blocking(move || split::to_messages(batch, strategy, max))
            .await
            .map_err(|e| QueueError::internal(format!("split task failed: {e}")))?
    } else if let Some(room) = room {
        let (msg, in_place) = split::message_in_room(batch, room, strategy);
        if in_place {
            metrics::counter!(m::KAFKA_IN_PLACE_MESSAGES).increment(1);
        }
        Ok(vec![msg])
    } else {
        split::to_messages(batch, strategy, max)
    };
    msgs.map_err(|e| match e {
        SplitError::SpanTooLarge { .. } => refuse("too_large", QueueError::TooLarge(e.to_string())),
        SplitError::Decode(_) => QueueError::internal(e.to_string()),
    })
}

/// One message's delivery report as the request's answer.
/// (`Err(RecvError)`: the producer dropped the report.)
fn delivered(
    r: Result<Result<(), KafkaError>, oneshot::error::RecvError>,
    timeout: Duration,
) -> Result<(), QueueError> {
    match r {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(delivery_error(&e, timeout)),
        Err(_) => Err(refuse(
            "other",
            QueueError::unavailable("the Kafka producer stopped; retry later"),
        )),
    }
}

impl BatchQueue for KafkaQueue {
    // The producer sends every batch alike: its work (librdkafka's threads) is not per request.
    fn publish(&self, batch: Batch, _class: Class) -> BoxFuture<'_, Result<(), QueueError>> {
        self.send(batch, None)
    }

    fn publish_in(
        &self,
        batch: Batch,
        room: Bytes,
        _class: Class,
    ) -> BoxFuture<'_, Result<(), QueueError>> {
        self.send(batch, Some(room))
    }

    fn is_ready(&self) -> bool {
        self.inner.reach().is_up()
    }
}

impl KafkaQueue {
    /// `publish`, the envelope written into `room` when there is one (split.rs).
    fn send(&self, batch: Batch, room: Option<Bytes>) -> BoxFuture<'_, Result<(), QueueError>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            let pool = inner.pool.load_full();
            inner.refuse_unless_up(&pool.reach)?;
            let msgs = messages(&inner, batch, room).await?;
            if msgs.len() > 1 {
                metrics::counter!(m::KAFKA_SPLIT_BATCHES).increment(1);
            }
            let total: usize = msgs.iter().map(|m| m.key.len() + m.value.len()).sum();
            let n = u32::try_from(total).unwrap_or(u32::MAX);
            let permit = inner.bytes.clone().try_acquire_many_owned(n).map_err(|_| {
                refuse(
                    "queue_full",
                    QueueError::unavailable(format!(
                        "the Kafka producer queue is full ({} bytes waiting for acknowledgement); retry later",
                        inner.limit
                    )),
                )
            })?;
            inner.report_queue();
            let started = Instant::now();
            let mut futures = Vec::with_capacity(msgs.len());
            let mut send_err = None;
            let producer = inner.producer(&pool, total);
            let count = msgs.len();
            // The buffers go to librdkafka as they are (owned.rs: no copy); the permit covers
            // them until their delivery reports.
            for msg in msgs {
                match owned::send(producer, &inner.topic_c, msg.key, msg.value) {
                    Ok(f) => futures.push(f),
                    Err(e) => {
                        send_err = Some(delivery_error(&e, inner.delivery_timeout));
                        break;
                    }
                }
            }
            // Wait in a task of its own, so the bytes stay accounted for until librdkafka is done
            // with them even if the client goes away.
            let guard = inner.delivery_timeout + Duration::from_secs(5);
            let waiter = {
                let inner = inner.clone();
                tokio::spawn(async move {
                    let r = tokio::time::timeout(guard, join_all(futures)).await;
                    drop(permit);
                    inner.report_queue();
                    r
                })
            };
            if let Some(e) = send_err {
                return Err(e);
            }
            let results = match waiter.await {
                Ok(Ok(results)) => results,
                Ok(Err(_)) => {
                    return Err(refuse(
                        "timeout",
                        QueueError::unavailable("Kafka did not acknowledge in time; retry later"),
                    ))
                }
                Err(e) => return Err(QueueError::internal(format!("delivery task failed: {e}"))),
            };
            for r in results {
                delivered(r, inner.delivery_timeout)?;
            }
            pool.reach.set_up(true);
            metrics::histogram!(m::KAFKA_DELIVERY_DURATION).record(started.elapsed().as_secs_f64());
            metrics::counter!(m::KAFKA_PRODUCED_MESSAGES).increment(count as u64);
            metrics::counter!(m::KAFKA_PRODUCED_BYTES).increment(total as u64);
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::pick;

    #[test]
    fn small_batches_go_to_the_last_client_and_the_others_take_turns() {
        let mut next = 0;
        let mut turn = || {
            next += 1;
            next - 1
        };
        // Two pooled clients and the small batches' one (index 2), small under 100 bytes.
        let picks: Vec<usize> = [10, 99, 100, 5_000, 1, 5_000, 5_000]
            .iter()
            .map(|&total| pick(3, total, 100, &mut turn))
            .collect();
        assert_eq!(picks, [2, 2, 0, 1, 2, 0, 1], "small ones never take a turn");
        // Without the small batches' client (`small_below` 0) every batch takes its turn.
        let picks: Vec<usize> = [10, 99, 5_000]
            .iter()
            .map(|&total| pick(2, total, 0, &mut turn))
            .collect();
        assert_eq!(picks, [0, 1, 0]);
    }
}
