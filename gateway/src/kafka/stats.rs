//! librdkafka client context shared by the producer and the writer's consumer: turns the
//! statistics JSON (every `kafka.statistics_interval_ms`) into Prometheus metrics, routes
//! librdkafka's logs and errors into `tracing`, and tracks whether any broker is reachable.
//! Labels are bounded: `client` (producer | producer_small | consumer), `kind`, and librdkafka
//! error code names.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::statistics::{Statistics, Window};
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

    pub fn mark_fatal(&self) {
        self.fatal.store(true, Ordering::Relaxed);
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
        if fac == "FATAL" {
            // librdkafka logs every fatal error under this facility, whatever its error code
            // (the error callback gets the underlying code, e.g. OUT_OF_ORDER_SEQUENCE_NUMBER,
            // not __FATAL): this instance can never work again.
            self.reach.mark_fatal();
        }
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
            self.reach.mark_fatal();
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

/// The quantiles librdkafka reports for a statistics window, with the share of the window's
/// samples at or below each; the last is the maximum.
fn window_quantiles(w: &Window) -> [(i64, f64); 7] {
    [
        (w.p50, 0.50),
        (w.p75, 0.75),
        (w.p90, 0.90),
        (w.p95, 0.95),
        (w.p99, 0.99),
        (w.p99_99, 0.9999),
        (w.max, 1.0),
    ]
}

/// A statistics window (microseconds, reset at every statistics interval) as histogram samples.
///
/// librdkafka keeps the samples in an HDR histogram of its own and reports only quantiles, so
/// the `cnt` samples are placed at them: the share between two quantiles is recorded at the
/// upper one. Every Prometheus bucket count is then exact at each quantile and an upper bound
/// in between, and windows from several brokers, intervals and instances add up, which the
/// p99 gauges these replace could not (a p99 of p99s means nothing).
fn window_samples(w: &Window) -> Vec<(f64, usize)> {
    let cnt = w.cnt.max(0) as f64;
    let mut below = 0usize;
    let mut out = Vec::with_capacity(7);
    for (value, share) in window_quantiles(w) {
        let upto = (cnt * share).round() as usize;
        let count = upto.saturating_sub(below);
        below = below.max(upto);
        if count > 0 {
            out.push((secs(value), count));
        }
    }
    out
}

/// `producer` (the pool's first client) or `producer_small` (the client of small batches).
fn is_producer(client: &str) -> bool {
    client.starts_with("producer")
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
    let rtt = metrics::histogram!(m::KAFKA_BROKER_RTT, "client" => client);
    let queue = metrics::histogram!(m::KAFKA_PRODUCER_QUEUE_LATENCY);
    let (mut tx_errs, mut rx_errs, mut timeouts, mut retries) = (0u64, 0u64, 0u64, 0u64);
    for b in s.brokers.values() {
        if let Some(w) = &b.rtt {
            for (value, count) in window_samples(w) {
                rtt.record_many(value, count);
            }
        }
        if is_producer(client) {
            if let Some(w) = &b.int_latency {
                for (value, count) in window_samples(w) {
                    queue.record_many(value, count);
                }
            }
        }
        tx_errs += b.txerrs;
        rx_errs += b.rxerrs;
        timeouts += b.req_timeouts;
        retries += b.txretries;
    }
    metrics::counter!(m::KAFKA_BROKER_ERRORS, "client" => client, "kind" => "tx").absolute(tx_errs);
    metrics::counter!(m::KAFKA_BROKER_ERRORS, "client" => client, "kind" => "rx").absolute(rx_errs);
    metrics::counter!(m::KAFKA_BROKER_ERRORS, "client" => client, "kind" => "request_timeout")
        .absolute(timeouts);
    metrics::counter!(m::KAFKA_BROKER_ERRORS, "client" => client, "kind" => "retry")
        .absolute(retries);
    if is_producer(client) {
        metrics::gauge!(m::KAFKA_CLIENT_QUEUE_MESSAGES, "client" => client).set(s.msg_cnt as f64);
        metrics::gauge!(m::KAFKA_CLIENT_QUEUE_BYTES, "client" => client).set(s.msg_size as f64);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn window(cnt: i64, quantiles_us: [i64; 7]) -> Window {
        let [p50, p75, p90, p95, p99, p99_99, max] = quantiles_us;
        Window {
            min: 1,
            max,
            avg: 0,
            sum: 0,
            cnt,
            stddev: 0,
            hdrsize: 0,
            p50,
            p75,
            p90,
            p95,
            p99,
            p99_99,
            outofrange: 0,
        }
    }

    #[test]
    fn a_window_becomes_its_count_of_samples_placed_at_its_quantiles() {
        let w = window(1_000, [100, 200, 300, 400, 5_000, 9_000, 20_000]);
        let samples = window_samples(&w);
        assert_eq!(samples.iter().map(|(_, n)| n).sum::<usize>(), 1_000);
        // 500 at p50, 250 up to p75, 150 up to p90, 50 up to p95, 40 up to p99, 10 above it.
        let counts: Vec<usize> = samples.iter().map(|(_, n)| *n).collect();
        assert_eq!(counts, vec![500, 250, 150, 50, 40, 10]);
        assert_eq!(samples[4].0, 0.005);
        // At most 1 % of the samples lie above p99: a bucket bound at p99 reads exactly 0.99.
        let at_or_below_p99: usize = samples
            .iter()
            .filter(|(v, _)| *v <= 0.005)
            .map(|(_, n)| n)
            .sum();
        assert_eq!(at_or_below_p99, 990);
    }

    #[test]
    fn an_empty_window_records_nothing() {
        assert!(window_samples(&window(0, [0; 7])).is_empty());
        let small = window_samples(&window(3, [10, 10, 10, 10, 10, 10, 10]));
        assert_eq!(small.iter().map(|(_, n)| n).sum::<usize>(), 3);
    }
}
