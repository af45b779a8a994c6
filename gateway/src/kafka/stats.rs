//! librdkafka client context shared by the producer and the writer's consumer: turns the
//! statistics JSON (every `kafka.statistics_interval_ms`) into Prometheus metrics, routes
//! librdkafka's logs and errors into `tracing`, and tracks whether any broker is reachable.
//! Labels are bounded: `client` (producer | consumer), `kind`, and librdkafka error code names.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaErrorCode;

use crate::metrics as m;

/// Broker reachability as seen by one client.
#[derive(Debug)]
pub struct Reachability {
    /// A broker answered recently (metadata, delivery or statistics showed one UP).
    up: AtomicBool,
    /// Milliseconds since `epoch` of the last "all brokers down" error.
    last_all_down_ms: AtomicU64,
    /// librdkafka raised a fatal error: this client instance can never work again.
    fatal: AtomicBool,
    epoch: Instant,
}

impl Default for Reachability {
    fn default() -> Self {
        Self {
            up: AtomicBool::new(false),
            last_all_down_ms: AtomicU64::new(0),
            fatal: AtomicBool::new(false),
            epoch: Instant::now(),
        }
    }
}

impl Reachability {
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed) && !self.is_fatal()
    }

    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Relaxed);
    }

    pub fn is_fatal(&self) -> bool {
        self.fatal.load(Ordering::Relaxed)
    }

    fn mark_all_down(&self) {
        self.up.store(false, Ordering::Relaxed);
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_all_down_ms.store(ms.max(1), Ordering::Relaxed);
    }

    /// True if librdkafka reported all brokers down within `window`.
    pub fn all_down_within(&self, window: Duration) -> bool {
        let at = self.last_all_down_ms.load(Ordering::Relaxed);
        at != 0 && self.epoch.elapsed().as_millis() as u64 <= at + window.as_millis() as u64
    }
}

/// The client context of every tracegate Kafka client.
pub struct StatsContext {
    pub client: &'static str,
    pub reach: Arc<Reachability>,
    /// Last logged error kind, when, and how many repeats were not logged since.
    last_error: std::sync::Mutex<(String, Option<Instant>, u64)>,
}

/// A repeated error (e.g. "all brokers down" while a broker is down) is logged at most this
/// often; the metric counts every occurrence.
const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);

impl StatsContext {
    pub fn new(client: &'static str) -> Self {
        Self::with_reach(client, Arc::new(Reachability::default()))
    }

    /// A context that shares `reach` with other clients (a producer pool).
    pub fn with_reach(client: &'static str, reach: Arc<Reachability>) -> Self {
        Self {
            client,
            reach,
            last_error: std::sync::Mutex::new((String::new(), None, 0)),
        }
    }
}

impl ClientContext for StatsContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        let client = self.client;
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", client, fac, "{log_message}")
            }
            RDKafkaLogLevel::Warning => {
                tracing::warn!(target: "librdkafka", client, fac, "{log_message}")
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", client, fac, "{log_message}")
            }
            RDKafkaLogLevel::Debug => {
                tracing::debug!(target: "librdkafka", client, fac, "{log_message}")
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let code = error.rdkafka_error_code();
        if code == Some(RDKafkaErrorCode::Fatal) {
            // With the idempotent producer this means the broker broke the sequence guarantees
            // (e.g. lost acknowledged data); the instance refuses all work from now on.
            self.reach.fatal.store(true, Ordering::Relaxed);
            tracing::error!(client = self.client, error = %error, reason, "fatal Kafka client error: this process must be restarted");
        }
        if code == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.reach.mark_all_down();
            metrics::gauge!(m::KAFKA_BROKERS_UP, "client" => self.client).set(0.0);
        }
        let label = code.map_or_else(|| "other".to_string(), |c| format!("{c:?}"));
        {
            let mut last = self.last_error.lock().unwrap_or_else(|p| p.into_inner());
            let repeat =
                last.0 == label && last.1.is_some_and(|t| t.elapsed() < ERROR_LOG_INTERVAL);
            if repeat {
                last.2 += 1;
            } else {
                let suppressed = last.2;
                *last = (label.clone(), Some(Instant::now()), 0);
                drop(last);
                tracing::warn!(client = self.client, error = %error, reason, repeats_not_logged = suppressed, "kafka client error");
            }
        }
        metrics::counter!(m::KAFKA_CLIENT_ERRORS, "client" => self.client, "kind" => label)
            .increment(1);
    }

    fn stats(&self, s: Statistics) {
        record(self.client, &s, &self.reach);
    }
}

fn secs(us: i64) -> f64 {
    us.max(0) as f64 / 1e6
}

/// Statistics → metrics (see `crate::metrics` for the names).
pub fn record(client: &'static str, s: &Statistics, reach: &Reachability) {
    let learned: Vec<_> = s.brokers.values().filter(|b| b.nodeid >= 0).collect();
    let brokers: Vec<_> = if learned.is_empty() {
        s.brokers.values().collect()
    } else {
        learned
    };
    let up = brokers.iter().filter(|b| b.state == "UP").count();
    if up > 0 {
        reach.set_up(true);
    }
    metrics::gauge!(m::KAFKA_BROKERS_UP, "client" => client).set(up as f64);
    let mut rtt = 0i64;
    let mut int_latency = 0i64;
    let (mut tx_errs, mut rx_errs, mut timeouts, mut retries) = (0u64, 0u64, 0u64, 0u64);
    for b in s.brokers.values() {
        if let Some(w) = &b.rtt {
            rtt = rtt.max(w.p99);
        }
        if let Some(w) = &b.int_latency {
            int_latency = int_latency.max(w.p99);
        }
        tx_errs += b.txerrs;
        rx_errs += b.rxerrs;
        timeouts += b.req_timeouts;
        retries += b.txretries;
    }
    metrics::gauge!(m::KAFKA_BROKER_RTT_P99, "client" => client).set(secs(rtt));
    metrics::counter!(m::KAFKA_BROKER_ERRORS, "client" => client, "kind" => "tx").absolute(tx_errs);
    metrics::counter!(m::KAFKA_BROKER_ERRORS, "client" => client, "kind" => "rx").absolute(rx_errs);
    metrics::counter!(m::KAFKA_BROKER_ERRORS, "client" => client, "kind" => "request_timeout")
        .absolute(timeouts);
    metrics::counter!(m::KAFKA_BROKER_ERRORS, "client" => client, "kind" => "retry")
        .absolute(retries);
    if client == "producer" {
        metrics::gauge!(m::KAFKA_CLIENT_QUEUE_MESSAGES, "client" => client).set(s.msg_cnt as f64);
        metrics::gauge!(m::KAFKA_CLIENT_QUEUE_BYTES, "client" => client).set(s.msg_size as f64);
        metrics::gauge!(m::KAFKA_PRODUCER_QUEUE_LATENCY_P99).set(secs(int_latency));
    } else {
        let (mut lag, mut fetchq_cnt, mut fetchq_bytes) = (0i64, 0i64, 0u64);
        for t in s.topics.values() {
            for p in t.partitions.values() {
                if p.partition < 0 {
                    continue;
                }
                lag += p.consumer_lag.max(0);
                fetchq_cnt += p.fetchq_cnt.max(0);
                fetchq_bytes += p.fetchq_size;
            }
        }
        metrics::gauge!(m::KAFKA_CONSUMER_LAG).set(lag as f64);
        metrics::gauge!(m::KAFKA_CLIENT_QUEUE_MESSAGES, "client" => client).set(fetchq_cnt as f64);
        metrics::gauge!(m::KAFKA_CLIENT_QUEUE_BYTES, "client" => client).set(fetchq_bytes as f64);
    }
}
