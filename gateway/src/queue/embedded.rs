//! The embedded queue: a bounded in-process channel from the receivers to one writer task that
//! groups batches (max spans / bytes / wait) and hands each group to every sink. A publisher
//! gets its answer only when the sinks have made its batch durable, so a 200 always means
//! "on stable storage". Group commit: while groups are being written (up to
//! `writer.max_concurrent_writes` at once), the next one accumulates, so a request waits for at
//! most `max_wait_ms` plus its own group's write, not for the writes of the groups before it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use prost::Message;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracegate_proto::v1::Batch;

use super::sink::{Sink, WriteGroup};
use crate::config::WriterConfig;
use crate::error::ApiError;
use crate::metrics as m;

/// The gateway's side of any queue (embedded here; Kafka later).
pub trait BatchQueue: Send + Sync + 'static {
    /// Resolves once the batch is durable (or failed). Never acknowledges early.
    fn publish(&self, batch: Batch) -> BoxFuture<'_, Result<(), ApiError>>;
    fn is_ready(&self) -> bool;
}

struct Pending {
    batch: Batch,
    bytes: usize,
    /// When it was queued: a group's wait is counted from its first batch's arrival, also when
    /// that batch waited for a free write slot.
    queued: Instant,
    ack: oneshot::Sender<Result<(), String>>,
}

pub struct EmbeddedQueue {
    tx: mpsc::Sender<Pending>,
    healthy: Arc<AtomicBool>,
}

pub struct WriterHandle {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl WriterHandle {
    /// Stops taking new batches, writes what is queued, and waits for the writer to finish.
    pub async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = self.task.await;
    }
}

impl EmbeddedQueue {
    pub fn start(cfg: WriterConfig, sinks: Vec<Arc<dyn Sink>>) -> (Self, WriterHandle) {
        let (tx, rx) = mpsc::channel(cfg.queue_capacity);
        let (stop_tx, stop_rx) = oneshot::channel();
        let healthy = Arc::new(AtomicBool::new(true));
        let task = tokio::spawn(writer_loop(cfg, sinks, rx, stop_rx, healthy.clone()));
        (
            Self { tx, healthy },
            WriterHandle {
                stop: Some(stop_tx),
                task,
            },
        )
    }
}

impl BatchQueue for EmbeddedQueue {
    fn publish(&self, batch: Batch) -> BoxFuture<'_, Result<(), ApiError>> {
        Box::pin(async move {
            let (ack, wait) = oneshot::channel();
            // A compressed payload counts at its decompressed size (what a sink decoding the
            // group holds).
            let bytes = crate::envelope::inflated_len(&batch, batch.encoded_len());
            self.tx
                .try_send(Pending {
                    batch,
                    bytes,
                    queued: Instant::now(),
                    ack,
                })
                .map_err(|e| match e {
                    mpsc::error::TrySendError::Full(_) => {
                        ApiError::unavailable("writer queue is full, retry later")
                    }
                    mpsc::error::TrySendError::Closed(_) => {
                        ApiError::unavailable("gateway is shutting down")
                    }
                })?;
            metrics::gauge!(m::QUEUE_BATCHES).increment(1.0);
            match wait.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(ApiError::internal(format!(
                    "write failed, retry later: {e}"
                ))),
                Err(_) => Err(ApiError::unavailable(
                    "writer stopped before the batch was written",
                )),
            }
        })
    }

    fn is_ready(&self) -> bool {
        !self.tx.is_closed() && self.healthy.load(Ordering::Relaxed)
    }
}

/// A write running longer than this counts as stuck (a sink down or stalled): see `running`.
const STALLED_AFTER: Duration = Duration::from_secs(2);

async fn writer_loop(
    cfg: WriterConfig,
    sinks: Vec<Arc<dyn Sink>>,
    mut rx: mpsc::Receiver<Pending>,
    mut stop: oneshot::Receiver<()>,
    healthy: Arc<AtomicBool>,
) {
    let sinks: Arc<[Arc<dyn Sink>]> = sinks.into();
    let max_wait = Duration::from_millis(cfg.max_wait_ms);
    // Writes in flight at once: a group is compressed, encrypted and fsynced while the next
    // ones gather and start, so the write time of one group is not added to the latency of
    // every group queued behind it.
    let slots = Arc::new(tokio::sync::Semaphore::new(
        cfg.max_concurrent_writes.max(1),
    ));
    let mut writing = tokio::task::JoinSet::new();
    // Start time of every write in flight. A write running longer than `STALLED_AFTER` means a
    // sink is down or stuck: then no other group is gathered or started until writes finish, so
    // new batches wait in the bounded queue (and the excess is refused with 503) instead of
    // disappearing into more stuck groups whose clients would hang.
    let running: Arc<std::sync::Mutex<std::collections::HashMap<u64, Instant>>> = Arc::default();
    let stalled = |running: &std::sync::Mutex<std::collections::HashMap<u64, Instant>>| {
        running
            .lock()
            .map(|r| r.values().any(|t| t.elapsed() > STALLED_AFTER))
            .unwrap_or(false)
    };
    let mut seq = 0u64;
    let mut stopping = false;
    loop {
        // A free write slot first: while all are busy, batches keep queueing in the channel and
        // go out as one larger group.
        let slot = tokio::select! {
            s = slots.clone().acquire_owned() => match s {
                Ok(s) => s,
                Err(_) => break,
            },
            _ = &mut stop, if !stopping => {
                rx.close();
                stopping = true;
                continue;
            }
        };
        while writing.try_join_next().is_some() {}
        let first = if stopping {
            match rx.recv().await {
                Some(p) => p,
                None => break,
            }
        } else {
            tokio::select! {
                p = rx.recv() => match p { Some(p) => p, None => break },
                _ = &mut stop => {
                    rx.close();
                    stopping = true;
                    continue;
                }
            }
        };
        let deadline = first.queued + max_wait;
        let mut group = vec![first];
        let mut spans = group[0].batch.span_count as usize;
        let mut bytes = group[0].bytes;
        while spans < cfg.max_batch_spans && bytes < cfg.max_batch_bytes && !stalled(&running) {
            let next = match rx.try_recv() {
                Ok(p) => Some(p),
                Err(mpsc::error::TryRecvError::Disconnected) => None,
                Err(mpsc::error::TryRecvError::Empty) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() || stopping {
                        None
                    } else {
                        tokio::time::timeout(left, rx.recv()).await.ok().flatten()
                    }
                }
            };
            let Some(p) = next else { break };
            spans += p.batch.span_count as usize;
            bytes += p.bytes;
            group.push(p);
        }
        metrics::gauge!(m::QUEUE_BATCHES).decrement(group.len() as f64);
        while stalled(&running) {
            if writing.join_next().await.is_none() {
                break;
            }
        }
        let (sinks, healthy) = (sinks.clone(), healthy.clone());
        seq += 1;
        let (id, running_w) = (seq, running.clone());
        if let Ok(mut r) = running.lock() {
            r.insert(id, Instant::now());
        }
        writing.spawn(async move {
            flush(&sinks, group, &healthy).await;
            if let Ok(mut r) = running_w.lock() {
                r.remove(&id);
            }
            drop(slot);
        });
    }
    // Every group taken from the queue is answered before the writer reports stopped.
    while writing.join_next().await.is_some() {}
    tracing::info!("embedded writer stopped");
}

async fn flush(sinks: &[Arc<dyn Sink>], group: Vec<Pending>, healthy: &AtomicBool) {
    let started = Instant::now();
    let (batches, acks): (Vec<Batch>, Vec<_>) = group.into_iter().map(|p| (p.batch, p.ack)).unzip();
    let n = batches.len();
    let mut rnd = [0u8; 6];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut rnd);
    // The embedded queue has no offsets: a time-ordered unique id names the group.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let group = Arc::new(WriteGroup {
        id: format!("embedded-{now:020}-{}", hex::encode(rnd)),
        batches,
    });
    let mut result = Ok(());
    for sink in sinks {
        if let Err(e) = sink.write(group.clone()).await {
            tracing::error!(sink = sink.name(), error = %format!("{e:#}"), "sink write failed; batches will be refused for retry");
            metrics::counter!(m::WRITE_ERRORS, "sink" => sink.name()).increment(1);
            result = Err(format!("{} sink: {e}", sink.name()));
            break;
        }
    }
    healthy.store(result.is_ok(), Ordering::Relaxed);
    metrics::histogram!(m::WRITE_DURATION).record(started.elapsed().as_secs_f64());
    if result.is_ok() {
        metrics::counter!(m::BATCHES_WRITTEN).increment(n as u64);
    }
    for ack in acks {
        let _ = ack.send(result.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    struct Recording(Mutex<Vec<usize>>, bool);
    impl Sink for Recording {
        fn name(&self) -> &'static str {
            "rec"
        }
        fn write(&self, g: Arc<WriteGroup>) -> BoxFuture<'static, anyhow::Result<()>> {
            self.0.lock().unwrap().push(g.batches.len());
            let fail = self.1;
            Box::pin(async move {
                if fail {
                    anyhow::bail!("disk full")
                }
                Ok(())
            })
        }
    }

    fn batch() -> Batch {
        Batch {
            span_count: 1,
            project_id: "p".into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn acks_after_sink_and_groups_concurrent_publishes() {
        let rec = Arc::new(Recording(Mutex::new(vec![]), false));
        let cfg = WriterConfig {
            max_wait_ms: 50,
            ..Default::default()
        };
        let (q, h) = EmbeddedQueue::start(cfg, vec![rec.clone()]);
        let q = Arc::new(q);
        let mut tasks = vec![];
        for _ in 0..10 {
            let q = q.clone();
            tasks.push(tokio::spawn(async move { q.publish(batch()).await }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let groups = rec.0.lock().unwrap().clone();
        assert_eq!(groups.iter().sum::<usize>(), 10);
        assert!(groups.len() < 10, "expected grouping, got {groups:?}");
        h.shutdown().await;
        assert!(q.publish(batch()).await.is_err());
    }

    #[tokio::test]
    async fn sink_failure_is_retryable_error_not_ack() {
        let rec = Arc::new(Recording(Mutex::new(vec![]), true));
        let (q, _h) = EmbeddedQueue::start(WriterConfig::default(), vec![rec]);
        let e = q.publish(batch()).await.unwrap_err();
        assert_eq!(e.http_status(), 503);
        assert!(!q.is_ready());
    }
}
