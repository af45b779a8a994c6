//! The run: open loop (fixed rate; latency from each request's intended send time, so a slow
//! server cannot hide its queueing, i.e. no coordinated omission) or closed loop (N requests
//! in flight, as fast as the answers come), retries of retryable refusals, the per-second
//! ticker (series, watched processes, progress bar) and the report.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Result};
use bytes::Bytes;
use tokio::sync::Semaphore;

use crate::client::{compress, Compression, Protocol, Sender, SenderConfig};
use crate::config::{Arrivals, RunConfig};
use crate::ids;
use crate::payload::{ShapeParams, Template};
use crate::procstat::Watched;
use crate::report::Report;
use crate::stats::{Attempt, Outcome, Stats};

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
    let (ctx, sizes) = prepare(cfg, run_id).await?;
    let cfg = &ctx.cfg;
    let total = total_requests(cfg);
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
    let bar = progress_bar(cfg, total);
    let ticker_stop = Arc::new(AtomicBool::new(false));
    let ticker = spawn_ticker(
        ctx.clone(),
        Ticking {
            start,
            deadline,
            total,
            bar: bar.clone(),
            stop: ticker_stop.clone(),
        },
        watched,
    );
    match cfg.rate {
        None => closed_loop(&ctx, total, deadline).await,
        Some(rate) => open_loop(&ctx, rate, total, start, deadline).await?,
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
    crate::report::assemble(
        &mut st,
        crate::report::Run {
            cfg,
            run_id,
            started_at,
            sizes,
            elapsed,
            sent,
        },
        watched,
        me,
    )
}

/// The request templates, the body pool, the sender and the shared counters; the template
/// request's size before and after compression.
async fn prepare(cfg: RunConfig, run_id: u64) -> Result<(Arc<Ctx>, (u64, u64))> {
    let params = |k: usize| ShapeParams {
        shape: cfg.shape,
        spans: cfg.spans_per_request as usize,
        llm_min_bytes: cfg.llm_min_bytes,
        llm_max_bytes: cfg.llm_max_bytes,
        attr_bytes: cfg.attr_bytes,
        seed: cfg.seed.wrapping_add(k as u64),
        start_unix_nano: now_unix_nano(),
    };
    // The first template always; more while they fit the budget.
    const TEMPLATE_BUDGET: usize = 256 << 20;
    let mut templates: Vec<Template> = Vec::new();
    let mut template_bytes = 0;
    for k in 0..cfg.templates.max(1) {
        let t = Template::build(&params(k), cfg.encoding, cfg.signal)?;
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
        signal: cfg.signal,
        compression: cfg.compression,
        ca_cert: cfg.ca_cert.as_deref(),
        local_addr: cfg.local_addr,
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
    Ok((ctx, (request_bytes, request_body_bytes)))
}

/// What the per-second ticker needs besides the context.
struct Ticking {
    start: Instant,
    deadline: Option<Instant>,
    total: u64,
    bar: Option<indicatif::ProgressBar>,
    stop: Arc<AtomicBool>,
}

/// Every second: a point of the series (latency, acked spans, RSS and CPU of the watched
/// processes) and the progress bar; returns the watched processes when told to stop.
fn spawn_ticker(
    ctx: Arc<Ctx>,
    t: Ticking,
    mut watched: Vec<Watched>,
) -> tokio::task::JoinHandle<Vec<Watched>> {
    let Ticking {
        start,
        deadline,
        total,
        bar,
        stop,
    } = t;
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
}

/// Closed loop: `concurrency` workers, each sends its next request when the last one is
/// answered.
async fn closed_loop(ctx: &Arc<Ctx>, total: u64, deadline: Option<Instant>) {
    let before_deadline = move |t: Instant| deadline.is_none_or(|d| t < d);
    let mut workers = vec![];
    for _ in 0..ctx.cfg.concurrency {
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
    drain(ctx.clone(), workers, ctx.cfg.drain_timeout_ms, deadline).await;
}

/// Open loop: request r is due at start + r * interval whatever happened before, and its
/// latency counts from then. The dispatcher has a thread of its own and sleeps with the OS's
/// timer (tens of µs): tokio's timer fires on whole-millisecond ticks, rounded up, which added
/// up to 1 ms to every measured latency. Each body is rendered before its due time, as a real
/// client has its data ready when it sends: rendering is not the gateway's latency (when it
/// falls behind, the lag is counted).
async fn open_loop(
    ctx: &Arc<Ctx>,
    rate: f64,
    total: u64,
    start: Instant,
    deadline: Option<Instant>,
) -> Result<()> {
    let cfg = &ctx.cfg;
    let n = cfg.spans_per_request;
    let before_deadline = move |t: Instant| deadline.is_none_or(|d| t < d);
    let inflight = Arc::new(Semaphore::new(cfg.concurrency));
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
        ctx.shared.stats.lock().unwrap().due_not_sent = due_total.min(total).saturating_sub(r);
    }
    drain(ctx.clone(), tasks, cfg.drain_timeout_ms, deadline).await;
    Ok(())
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
