//! The run: open loop (fixed rate; latency from each request's intended send time, so a slow
//! server cannot hide its queueing, i.e. no coordinated omission) or closed loop (N requests
//! in flight, as fast as the answers come), retries of retryable refusals, the per-second
//! ticker (series, watched processes, progress bar) and the report.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Result};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use crate::client::{compress, Compression, Protocol, Sender, SenderConfig};
use crate::ids;
use crate::payload::{Encoding, Shape, ShapeParams, Template};
use crate::procstat::Watched;
use crate::stats::{percentiles, span_ranges, Attempt, Outcome, Percentiles, SecondPoint, Stats};

/// Everything a run needs (from the command line); echoed in the report.
#[derive(Clone, Debug, Serialize)]
pub struct RunConfig {
    pub endpoint: String,
    pub protocol: Protocol,
    pub encoding: Encoding,
    pub compression: Compression,
    pub compression_level: Option<i32>,
    #[serde(skip)]
    pub api_keys: Vec<String>,
    pub projects: usize,
    pub ca_cert: Option<PathBuf>,
    pub duration_secs: Option<f64>,
    /// Total spans (rounded up to whole requests).
    pub spans: Option<u64>,
    pub max_requests: Option<u64>,
    /// Spans per second (open loop); None = closed loop.
    pub rate: Option<f64>,
    /// How the open loop's requests fall due (ignored by the closed loop).
    pub arrivals: Arrivals,
    pub concurrency: usize,
    pub connections: usize,
    pub spans_per_request: u64,
    pub shape: Shape,
    pub llm_min_bytes: usize,
    pub llm_max_bytes: usize,
    pub run_id: String,
    pub seed: u64,
    pub body_pool: usize,
    /// Template requests with different values, used in turn (at least 1).
    pub templates: usize,
    pub max_retries: u32,
    pub retry_default_ms: u64,
    pub retry_max_ms: u64,
    pub timeout_ms: u64,
    pub drain_timeout_ms: u64,
    pub threads: usize,
    pub watch_pids: Vec<(u32, String)>,
    #[serde(skip)]
    pub progress: bool,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RequestCounts {
    /// Requests started (each possibly retried).
    pub sent: u64,
    pub acked: u64,
    /// Refused in the end: a final refusal, or retryable refusals until the retries ran out.
    pub refused: u64,
    /// Errors and timeouts, and requests still unanswered at the drain deadline.
    pub unknown: u64,
    /// Attempts (first sends + retries).
    pub attempts: u64,
    pub retries: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SpanCounts {
    pub sent: u64,
    /// In acked requests, minus `partial_success.rejected_spans`.
    pub acked: u64,
    pub rejected_in_partial_success: u64,
    pub refused: u64,
    pub unknown: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Refusals {
    /// Attempts answered with a retryable refusal (429/502/503/504, gRPC UNAVAILABLE or
    /// RESOURCE_EXHAUSTED with RetryInfo).
    pub retryable: u64,
    /// Of those, how many carried Retry-After / RetryInfo.
    pub retryable_with_retry_after: u64,
    /// Requests refused finally (not retryable: 400, 401, 403, 413, ...), by answer.
    pub final_by_status: std::collections::BTreeMap<String, u64>,
    /// Requests whose retries ran out on retryable refusals, by last answer.
    pub gave_up_by_status: std::collections::BTreeMap<String, u64>,
    pub errors_by_kind: std::collections::BTreeMap<String, u64>,
    /// Latency of refusals (send → refusal), per attempt.
    pub refusal_latency: Percentiles,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub tool: String,
    pub version: String,
    pub run_id: String,
    pub started_at: String,
    pub config: serde_json::Value,
    /// The template request: encoded bytes before and after compression (HTTP), spans.
    pub request_bytes: u64,
    pub request_body_bytes: u64,
    pub elapsed_secs: f64,
    pub requests: RequestCounts,
    pub spans: SpanCounts,
    /// Every attempt's answer by label (`http_200`, `http_503`, `grpc_ok`, ...).
    pub responses: std::collections::BTreeMap<String, u64>,
    pub refusals: Refusals,
    pub acked_spans_per_sec: f64,
    pub offered_spans_per_sec: Option<f64>,
    /// Latency of acked requests, from the intended send time (open loop) or the send (closed
    /// loop) to the 200, retries included.
    pub latency: Percentiles,
    pub max_send_lag_ms: f64,
    /// Open loop: requests that fell due before the end but were never sent, because
    /// `--concurrency` requests were still in flight (the offered load was not delivered).
    pub due_not_sent: u64,
    pub load_generator: Option<crate::procstat::Watched>,
    pub watched: Vec<crate::procstat::Watched>,
    pub series: Vec<SecondPoint>,
    /// False with --body-pool (ids repeat): `verify` refuses such a report.
    pub ids_unique: bool,
    pub spans_per_request: u64,
    pub id_layout: String,
    /// Inclusive span sequence ranges of acked / refused / unknown requests.
    pub acked_ranges: Vec<[u64; 2]>,
    pub refused_ranges: Vec<[u64; 2]>,
    pub unknown_ranges: Vec<[u64; 2]>,
}

pub const ID_LAYOUT: &str =
    "trace_id = run_id (u64 BE) || seq of the trace's first span (u64 BE); \
span_id = span seq (u64 BE, from 1); parent_span_id = seq - 1 within a trace of 8; request r of n \
spans carries seqs r*n+1 ..= r*n+n";

struct Shared {
    stats: Mutex<Stats>,
    acked_spans: AtomicU64,
    refusals: AtomicU64,
    errors: AtomicU64,
    next: AtomicU64,
    stop_retrying: AtomicBool,
}

struct Ctx {
    cfg: RunConfig,
    run_id: u64,
    /// Request `r` renders `templates[r % len]`.
    templates: Vec<Template>,
    pool: Vec<Bytes>,
    sender: Sender,
    auth: Vec<String>,
    shared: Shared,
}

/// When the open loop's requests fall due, at the same mean rate either way.
#[derive(Clone, Copy, Debug, clap::ValueEnum, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Arrivals {
    /// Evenly spaced, one request every `spans_per_request / rate` seconds.
    Even,
    /// A Poisson process: independent, exponentially distributed gaps, which is what the sum of
    /// many independent exporters looks like. Several requests sometimes fall due within a
    /// millisecond, so queues in the server (and in its Kafka producer) are exercised the way
    /// real traffic exercises them; even spacing never does.
    Poisson,
}

/// The open loop's due times: `start + r × interval` (even), or a running sum of exponential
/// gaps with mean `interval` drawn from a seeded generator (Poisson; the same seed gives the
/// same schedule).
struct Schedule {
    arrivals: Arrivals,
    start: Instant,
    interval: Duration,
    r: u64,
    offset: Duration,
    rng: crate::payload::Rng,
}

impl Schedule {
    fn new(arrivals: Arrivals, start: Instant, interval: Duration, seed: u64) -> Self {
        Self {
            arrivals,
            start,
            interval,
            r: 0,
            offset: Duration::ZERO,
            rng: crate::payload::Rng::new(seed ^ 0xa441_7a15),
        }
    }

    fn next_due(&mut self) -> Instant {
        let due = match self.arrivals {
            Arrivals::Even => self.start + self.interval.mul_f64(self.r as f64),
            Arrivals::Poisson => {
                let due = self.start + self.offset;
                // u in [0, 1) with 53 random bits; 1 - u is never 0, so the gap is finite.
                let u = (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
                self.offset += self.interval.mul_f64(-(1.0 - u).ln());
                due
            }
        };
        self.r += 1;
        due
    }
}

fn now_unix_nano() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Request `r`'s body: template `r % len` with its sequence-numbered ids, compressed as
/// configured (HTTP; gRPC compresses per message in the sender).
fn render_body(cfg: &RunConfig, run_id: u64, templates: &[Template], r: u64) -> Result<Bytes> {
    let template = &templates[(r % templates.len() as u64) as usize];
    let mut raw = Vec::with_capacity(template.len());
    template.render(run_id, ids::first_seq(r, cfg.spans_per_request), &mut raw);
    Ok(Bytes::from(
        if cfg.protocol == Protocol::Http && cfg.compression != Compression::None {
            compress(cfg.compression, cfg.compression_level, &raw)?
        } else {
            raw
        },
    ))
}

impl Ctx {
    fn body(&self, r: u64) -> Result<Bytes> {
        if !self.pool.is_empty() {
            return Ok(self.pool[(r % self.pool.len() as u64) as usize].clone());
        }
        render_body(&self.cfg, self.run_id, &self.templates, r)
    }

    /// One request with its retries; `intended`: when it should have been sent.
    async fn request(&self, r: u64, intended: Instant) {
        self.request_with(r, intended, self.body(r)).await
    }

    /// `request` with its body already rendered.
    async fn request_with(&self, r: u64, intended: Instant, body: Result<Bytes>) {
        let n = self.cfg.spans_per_request;
        let auth = &self.auth[(r % self.auth.len() as u64) as usize];
        let body = match body {
            Ok(b) => b,
            Err(e) => {
                let a = Attempt::Error {
                    label: format!("encode: {e}"),
                };
                self.shared
                    .stats
                    .lock()
                    .unwrap()
                    .finished(r, n, &a, intended.elapsed());
                return;
            }
        };
        let mut tries = 0u32;
        loop {
            let t = Instant::now();
            let a = self.sender.send(r, auth, body.clone()).await;
            let rtt = t.elapsed();
            let retry = match &a {
                Attempt::Retryable { retry_after, .. }
                    if tries < self.cfg.max_retries
                        && !self.shared.stop_retrying.load(Ordering::Relaxed) =>
                {
                    Some(
                        retry_after
                            .unwrap_or(Duration::from_millis(self.cfg.retry_default_ms))
                            .min(Duration::from_millis(self.cfg.retry_max_ms)),
                    )
                }
                _ => None,
            };
            {
                let mut st = self.shared.stats.lock().unwrap();
                st.attempt(&a, rtt);
                if retry.is_some() {
                    st.retries += 1;
                } else {
                    match st.finished(r, n, &a, intended.elapsed()) {
                        Outcome::Acked => {}
                        Outcome::Refused => {}
                        Outcome::Unknown => {
                            self.shared.errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
            match &a {
                Attempt::Ok { rejected_spans } => {
                    self.shared
                        .acked_spans
                        .fetch_add(n.saturating_sub(*rejected_spans), Ordering::Relaxed);
                }
                Attempt::Retryable { .. } | Attempt::Final { .. } => {
                    self.shared.refusals.fetch_add(1, Ordering::Relaxed);
                }
                Attempt::Error { .. } => {}
            }
            match retry {
                Some(d) => {
                    tries += 1;
                    tokio::time::sleep(d).await;
                }
                None => return,
            }
        }
    }
}

fn total_requests(cfg: &RunConfig) -> u64 {
    let by_spans = cfg
        .spans
        .map(|s| s.div_ceil(cfg.spans_per_request))
        .unwrap_or(u64::MAX);
    by_spans.min(cfg.max_requests.unwrap_or(u64::MAX))
}

pub async fn run(cfg: RunConfig) -> Result<Report> {
    if cfg.api_keys.is_empty() {
        bail!("no API key: give --api-key KEY (repeatable) or --api-key-file FILE");
    }
    let run_id = ids::parse_run_id(&cfg.run_id).map_err(anyhow::Error::msg)?;
    let started_at = chrono::Utc::now().to_rfc3339();
    let params = |k: usize| ShapeParams {
        shape: cfg.shape,
        spans: cfg.spans_per_request as usize,
        llm_min_bytes: cfg.llm_min_bytes,
        llm_max_bytes: cfg.llm_max_bytes,
        seed: cfg.seed.wrapping_add(k as u64),
        start_unix_nano: now_unix_nano(),
    };
    // The first template always; more while they fit the budget.
    const TEMPLATE_BUDGET: usize = 256 << 20;
    let mut templates: Vec<Template> = Vec::new();
    let mut template_bytes = 0;
    for k in 0..cfg.templates.max(1) {
        let t = Template::build(&params(k), cfg.encoding)?;
        if k > 0 && template_bytes + t.len() > TEMPLATE_BUDGET {
            break;
        }
        template_bytes += t.len();
        templates.push(t);
    }
    let template = &templates[0];
    let mut probe = Vec::new();
    template.render(run_id, 1, &mut probe);
    let request_bytes = probe.len() as u64;
    let request_body_bytes =
        if cfg.protocol == Protocol::Http && cfg.compression != Compression::None {
            compress(cfg.compression, cfg.compression_level, &probe)?.len() as u64
        } else {
            request_bytes
        };
    drop(probe);
    let pool = (0..cfg.body_pool as u64)
        .map(|r| render_body(&cfg, run_id, &templates, r))
        .collect::<Result<Vec<_>>>()?;
    let sender = Sender::new(&SenderConfig {
        endpoint: &cfg.endpoint,
        protocol: cfg.protocol,
        encoding: cfg.encoding,
        compression: cfg.compression,
        ca_cert: cfg.ca_cert.as_deref(),
        timeout: Duration::from_millis(cfg.timeout_ms),
        connections: cfg.connections,
    })
    .await?;
    let auth = cfg.api_keys.iter().map(|k| format!("Bearer {k}")).collect();
    let ctx = Arc::new(Ctx {
        run_id,
        templates,
        pool,
        sender,
        auth,
        shared: Shared {
            stats: Mutex::new(Stats::default()),
            acked_spans: AtomicU64::new(0),
            refusals: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            next: AtomicU64::new(0),
            stop_retrying: AtomicBool::new(false),
        },
        cfg,
    });
    let cfg = &ctx.cfg;
    let total = total_requests(cfg);
    let n = cfg.spans_per_request;
    let mut watched: Vec<Watched> = cfg
        .watch_pids
        .iter()
        .map(|(p, l)| Watched::new(*p, l.clone()))
        .collect();
    let mut me = Watched::new(std::process::id(), "loadtest".into());
    for w in watched.iter_mut() {
        w.update();
    }
    me.update();

    let start = Instant::now();
    let deadline = cfg
        .duration_secs
        .map(|d| start + Duration::from_secs_f64(d));
    let before_deadline = move |t: Instant| deadline.is_none_or(|d| t < d);

    let bar = progress_bar(cfg, total);
    let ticker_stop = Arc::new(AtomicBool::new(false));
    let ticker = {
        let ctx = ctx.clone();
        let stop = ticker_stop.clone();
        let bar = bar.clone();
        let mut watched = std::mem::take(&mut watched);
        tokio::spawn(async move {
            let mut iv = tokio::time::interval_at(
                (start + Duration::from_secs(1)).into(),
                Duration::from_secs(1),
            );
            let mut prev: Vec<f64> = watched
                .iter()
                .map(|w| w.last.map_or(0.0, |s| s.cpu_secs))
                .collect();
            let mut t = 0u64;
            let mut prev_acked = 0u64;
            loop {
                let last = tokio::select! {
                    _ = iv.tick() => false,
                    _ = wait_flag(&stop) => true,
                };
                t += 1;
                let mut rss = vec![];
                let mut cpu = vec![];
                for (i, w) in watched.iter_mut().enumerate() {
                    let s = w.update().unwrap_or_default();
                    rss.push(s.rss_kib);
                    cpu.push((s.cpu_secs - prev[i]).max(0.0));
                    prev[i] = s.cpu_secs;
                }
                let p99 = {
                    let mut st = ctx.shared.stats.lock().unwrap();
                    st.roll(t, rss, cpu);
                    st.series.last().map_or(0.0, |p| p.latency.p99_ms)
                };
                if let Some(b) = &bar {
                    let acked = ctx.shared.acked_spans.load(Ordering::Relaxed);
                    b.set_position(match deadline {
                        Some(_) => t,
                        None => ctx.shared.next.load(Ordering::Relaxed).min(total),
                    });
                    b.set_message(format!(
                        "{} spans/s  p99 {:.1} ms  acked {}  refusals {}  errors {}",
                        acked - prev_acked,
                        p99,
                        acked,
                        ctx.shared.refusals.load(Ordering::Relaxed),
                        ctx.shared.errors.load(Ordering::Relaxed)
                    ));
                    prev_acked = acked;
                }
                if last {
                    // The partial last second is rolled too, so the series adds up.
                    break;
                }
            }
            watched
        })
    };

    let inflight = Arc::new(Semaphore::new(cfg.concurrency));
    match cfg.rate {
        None => {
            // Closed loop: `concurrency` workers, each sends its next request when the last
            // one is answered.
            let mut workers = vec![];
            for _ in 0..cfg.concurrency {
                let ctx = ctx.clone();
                workers.push(tokio::spawn(async move {
                    loop {
                        let now = Instant::now();
                        if !before_deadline(now) {
                            break;
                        }
                        let r = ctx.shared.next.fetch_add(1, Ordering::Relaxed);
                        if r >= total {
                            break;
                        }
                        ctx.shared
                            .stats
                            .lock()
                            .unwrap()
                            .offered(ctx.cfg.spans_per_request, Duration::ZERO);
                        ctx.request(r, now).await;
                    }
                }));
            }
            drain(ctx.clone(), workers, cfg.drain_timeout_ms, deadline).await;
        }
        Some(rate) => {
            // Open loop: request r is due at start + r * interval whatever happened before,
            // and its latency counts from then. The dispatcher has a thread of its own and
            // sleeps with the OS's timer (tens of µs): tokio's timer fires on whole-millisecond
            // ticks, rounded up, which added up to 1 ms to every measured latency. Each body is
            // rendered before its due time, as a real client has its data ready when it sends:
            // rendering is not the gateway's latency (when it falls behind, the lag is counted).
            let interval = Duration::from_secs_f64(n as f64 / rate);
            let mut schedule = Schedule::new(cfg.arrivals, start, interval, cfg.seed);
            let handle = tokio::runtime::Handle::current();
            let dispatch = {
                let ctx = ctx.clone();
                let inflight = inflight.clone();
                move || {
                    let mut tasks = vec![];
                    let mut r = 0u64;
                    while r < total {
                        let due = schedule.next_due();
                        if !before_deadline(due) {
                            break;
                        }
                        let body = ctx.body(r);
                        let now = Instant::now();
                        if due > now {
                            std::thread::sleep(due - now);
                        }
                        // At most `concurrency` in flight: beyond that the send waits, and the
                        // wait counts in the latency (measured from `due`).
                        let permit = match deadline {
                            Some(d) => match handle.block_on(tokio::time::timeout_at(
                                d.into(),
                                inflight.clone().acquire_owned(),
                            )) {
                                Ok(Ok(p)) => p,
                                // The run ended while this request waited for a slot: it and
                                // every request due after it are counted as due but never sent.
                                _ => break,
                            },
                            None => match handle.block_on(inflight.clone().acquire_owned()) {
                                Ok(p) => p,
                                Err(_) => break,
                            },
                        };
                        if !before_deadline(Instant::now()) {
                            drop(permit);
                            break;
                        }
                        ctx.shared.next.store(r + 1, Ordering::Relaxed);
                        ctx.shared
                            .stats
                            .lock()
                            .unwrap()
                            .offered(n, Instant::now().saturating_duration_since(due));
                        let ctx2 = ctx.clone();
                        tasks.push(handle.spawn(async move {
                            ctx2.request_with(r, due, body).await;
                            drop(permit);
                        }));
                        if tasks.len() >= 4096 {
                            tasks.retain(|t| !t.is_finished());
                        }
                        r += 1;
                    }
                    (r, tasks)
                }
            };
            let (r, tasks) = tokio::task::spawn_blocking(dispatch)
                .await
                .map_err(|e| anyhow::anyhow!("dispatcher thread failed: {e}"))?;
            if let Some(d) = deadline {
                // With Poisson arrivals this is the expected number due, not the drawn one.
                let due_total =
                    (d.duration_since(start).as_secs_f64() / interval.as_secs_f64()).ceil() as u64;
                ctx.shared.stats.lock().unwrap().due_not_sent =
                    due_total.min(total).saturating_sub(r);
            }
            drain(ctx.clone(), tasks, cfg.drain_timeout_ms, deadline).await;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    ticker_stop.store(true, Ordering::Relaxed);
    let mut watched = ticker.await.unwrap_or_default();
    for w in watched.iter_mut() {
        w.update();
    }
    me.update();
    if let Some(b) = &bar {
        b.finish_and_clear();
    }

    let mut st = ctx.shared.stats.lock().unwrap();
    let sent = ctx.shared.next.load(Ordering::Relaxed).min(total);
    let acked_ids = std::mem::take(&mut st.acked_ids);
    let refused_ids = std::mem::take(&mut st.refused_ids);
    let mut known = vec![false; sent as usize];
    for &r in acked_ids.iter().chain(refused_ids.iter()) {
        if let Some(k) = known.get_mut(r as usize) {
            *k = true;
        }
    }
    let unknown_ids: Vec<u64> = (0..sent).filter(|&r| !known[r as usize]).collect();
    let ids_unique = cfg.body_pool == 0;
    let acked_spans_per_sec = st.acked_spans as f64 / elapsed.max(1e-9);
    for w in watched.iter_mut().chain(std::iter::once(&mut me)) {
        w.acked_spans_per_cpu_sec = if w.cpu_secs > 0.0 {
            st.acked_spans as f64 / w.cpu_secs
        } else {
            0.0
        };
    }
    let attempts: u64 = st.responses.values().sum();
    let report = Report {
        tool: "loadtest".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        run_id: ids::run_id_hex(run_id),
        started_at,
        config: serde_json::to_value(cfg)?,
        request_bytes,
        request_body_bytes,
        elapsed_secs: elapsed,
        requests: RequestCounts {
            sent,
            acked: st.acked_requests,
            refused: refused_ids.len() as u64,
            unknown: unknown_ids.len() as u64,
            attempts,
            retries: st.retries,
        },
        spans: SpanCounts {
            sent: sent * n,
            acked: st.acked_spans,
            rejected_in_partial_success: st.rejected_spans,
            refused: refused_ids.len() as u64 * n,
            unknown: unknown_ids.len() as u64 * n,
        },
        responses: st.responses.clone(),
        refusals: Refusals {
            retryable: st.retryable_refusals,
            retryable_with_retry_after: st.retryable_with_retry_after,
            final_by_status: st.final_refused.clone(),
            gave_up_by_status: st.gave_up.clone(),
            errors_by_kind: st.errors.clone(),
            refusal_latency: percentiles(&st.refusal_latency),
        },
        acked_spans_per_sec,
        offered_spans_per_sec: cfg.rate,
        latency: percentiles(&st.latency),
        max_send_lag_ms: st.max_send_lag.as_secs_f64() * 1000.0,
        due_not_sent: st.due_not_sent,
        load_generator: Some(me),
        watched,
        series: std::mem::take(&mut st.series),
        ids_unique,
        spans_per_request: n,
        id_layout: ID_LAYOUT.into(),
        acked_ranges: if ids_unique {
            span_ranges(acked_ids, n)
        } else {
            vec![]
        },
        refused_ranges: if ids_unique {
            span_ranges(refused_ids, n)
        } else {
            vec![]
        },
        unknown_ranges: if ids_unique {
            span_ranges(unknown_ids, n)
        } else {
            vec![]
        },
    };
    Ok(report)
}

async fn wait_flag(f: &AtomicBool) {
    while !f.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits for the requests in flight; after the deadline plus `drain_ms` they are abandoned
/// (counted as unknown). Retries stop being scheduled once the deadline has passed.
async fn drain(
    ctx: Arc<Ctx>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    drain_ms: u64,
    deadline: Option<Instant>,
) {
    let limit =
        deadline.unwrap_or_else(Instant::now).max(Instant::now()) + Duration::from_millis(drain_ms);
    let stopper = {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            if let Some(d) = deadline {
                tokio::time::sleep_until(d.into()).await;
            }
            ctx.shared.stop_retrying.store(true, Ordering::Relaxed);
        })
    };
    for t in tasks {
        let abort = t.abort_handle();
        if tokio::time::timeout_at(limit.into(), t).await.is_err() {
            abort.abort();
        }
    }
    stopper.abort();
}

fn progress_bar(cfg: &RunConfig, total: u64) -> Option<indicatif::ProgressBar> {
    if !cfg.progress {
        return None;
    }
    let (len, unit) = match cfg.duration_secs {
        Some(d) => (d.ceil() as u64, "s"),
        None => (total, "req"),
    };
    let b = indicatif::ProgressBar::with_draw_target(
        Some(len),
        indicatif::ProgressDrawTarget::stderr(),
    );
    let style = indicatif::ProgressStyle::with_template(&format!(
        "{{elapsed_precise}} [{{bar:30}}] {{pos}}/{{len}} {unit}  {{msg}}"
    ))
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    b.set_style(style.progress_chars("=> "));
    Some(b)
}

/// The one summary line on stdout (stable keys; scripts parse it).
pub fn summary_line(r: &Report) -> String {
    let failures = r
        .responses
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "ok"))
        .map(|(k, v)| format!("{k}:{v}"))
        .collect::<Vec<_>>()
        .join(",");
    format!(
        "loadtest run_id={} protocol={} seconds={:.1} requests_ok={} requests_refused={} \
         requests_unknown={} retries={} spans_ok={} spans_per_sec={:.0} p50_ms={:.1} \
         p99_ms={:.1} p999_ms={:.1} max_ms={:.1} retryable_refusals={} due_not_sent={} failures={}",
        r.run_id,
        r.config["protocol"].as_str().unwrap_or("?"),
        r.elapsed_secs,
        r.requests.acked,
        r.requests.refused,
        r.requests.unknown,
        r.requests.retries,
        r.spans.acked,
        r.acked_spans_per_sec,
        r.latency.p50_ms,
        r.latency.p99_ms,
        r.latency.p999_ms,
        r.latency.max_ms,
        r.refusals.retryable,
        r.due_not_sent,
        if failures.is_empty() {
            "-".into()
        } else {
            failures
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gaps(arrivals: Arrivals, seed: u64, n: usize) -> Vec<f64> {
        let start = Instant::now();
        let mut s = Schedule::new(arrivals, start, Duration::from_millis(1), seed);
        let dues: Vec<Instant> = (0..=n).map(|_| s.next_due()).collect();
        assert_eq!(dues[0], start, "the first request is due at the start");
        dues.windows(2)
            .map(|w| (w[1] - w[0]).as_secs_f64() * 1e3)
            .collect()
    }

    #[test]
    fn even_arrivals_are_evenly_spaced() {
        for g in gaps(Arrivals::Even, 1, 1000) {
            assert!((g - 1.0).abs() < 1e-6, "gap {g} ms");
        }
    }

    #[test]
    fn poisson_arrivals_keep_the_rate_and_are_bursty_and_repeatable() {
        let g = gaps(Arrivals::Poisson, 7, 200_000);
        let mean = g.iter().sum::<f64>() / g.len() as f64;
        assert!((mean - 1.0).abs() < 0.01, "mean gap {mean} ms");
        // Exponential gaps: P(gap < 0.1 × mean) = 1 - e^-0.1 ≈ 9.5 %, P(gap > 3 × mean) ≈ 5 %.
        let short = g.iter().filter(|&&x| x < 0.1).count() as f64 / g.len() as f64;
        let long = g.iter().filter(|&&x| x > 3.0).count() as f64 / g.len() as f64;
        assert!((short - 0.095).abs() < 0.005, "short gaps {short}");
        assert!((long - 0.0498).abs() < 0.004, "long gaps {long}");
        assert_eq!(
            g[..100],
            gaps(Arrivals::Poisson, 7, 100)[..],
            "same seed, same schedule"
        );
        assert_ne!(g[..100], gaps(Arrivals::Poisson, 8, 100)[..]);
    }
}
