//! `loadtest`: OTLP trace load generator for tracegate, and `loadtest verify`.
//!
//! ```text
//! loadtest --endpoint http://127.0.0.1:4318 --api-key tg_... [--protocol http|grpc]
//!          [--encoding protobuf|json] [--compression none|gzip|zstd] [--ca-cert FILE]
//!          [--duration 20s | --spans N] [--rate SPANS_PER_SEC [--arrivals even|poisson]]
//!          [--concurrency N]
//!          [--spans-per-request 512] [--shape small|realistic|llm] [--attr-bytes N]
//!          [--report FILE.json] [--plot FILE.svg] [--run-id HEX] [--seed N] [--watch-pid PID]
//! loadtest verify --report FILE.json (--data-dir D | --config FILE | --clickhouse URL)
//! loadtest compare --target A=URL[,pid=PID][,key=KEY] --target B=URL[,pid=PID] [--rounds 2]
//!          [the run options above]
//! ```
//!
//! With `--rate` the run is an open loop: request r is due at `start + r * spans_per_request /
//! rate`, whatever the answers before it did, and its latency is measured from that moment, so
//! a server that stalls is charged for the whole queue it caused (no coordinated omission).
//! `--concurrency` then caps the requests in flight (a send beyond it waits, and the wait
//! counts). Without `--rate` the run is a closed loop: `--concurrency` requests in flight, each
//! sent as soon as the one before it was answered. See docs/benchmarks.md.
//!
//! Prints one summary line on stdout (`loadtest run_id=… seconds=… spans_ok=… spans_per_sec=…
//! p50_ms=… p99_ms=… …`); `--report` writes the full JSON report, `--plot` an SVG of the
//! per-second series.

mod client;
mod compare;
mod config;
mod ids;
mod payload;
mod plot;
mod procstat;
mod report;
mod run;
mod stats;
mod verify;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

use client::{Compression, Protocol};
use payload::{Encoding, Shape, Signal};

#[derive(Parser, Debug)]
#[command(
    name = "loadtest",
    about = "OTLP trace load generator for tracegate",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Check a run's spans in the archive or ClickHouse against its report: loss (acked spans
    /// missing), duplicates, spans never sent. Exits 1 when the check fails.
    Verify(Box<VerifyArgs>),
    /// The same load against two or more OTLP endpoints, back to back, in alternating order
    /// over `--rounds`, and their figures side by side (medians, ratios to the first target).
    Compare(Box<CompareArgs>),
}

#[derive(Args, Debug)]
struct CompareArgs {
    /// `LABEL=URL[,pid=PID][,key=KEY][,key-file=FILE]` (repeat, at least twice): an OTLP
    /// endpoint as `--endpoint` takes it; `pid=` the process whose CPU time gives the per-core
    /// figures; the key defaults to --api-key (none: a placeholder, for endpoints without auth).
    #[arg(long = "target", value_parser = compare::parse_target, required = true)]
    targets: Vec<compare::Target>,
    /// Rounds; each runs every target once, in alternating order.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Pause between two runs (lets the previous target's queues drain).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pause: Duration,
    /// Every run's full report as one JSON file (rows, medians, reports).
    #[arg(long = "compare-report")]
    compare_report: Option<PathBuf>,
    /// The load, as for a single run (without --endpoint, --watch-pid, --report, --plot).
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Args, Debug, Clone)]
struct RunArgs {
    /// OTLP/HTTP base URL (`http://host:4318`; POSTs to /v1/traces) or OTLP/gRPC URL
    /// (`http://host:4317`); `https://` for TLS.
    #[arg(long)]
    endpoint: Option<String>,
    /// API key (repeatable: requests go round-robin over the keys, e.g. of N projects).
    #[arg(long = "api-key")]
    api_keys: Vec<String>,
    /// File with one API key per line (added to --api-key).
    #[arg(long)]
    api_key_file: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "http")]
    protocol: Protocol,
    /// The OTLP signal: each generated span becomes a log record (`logs`, with the span's
    /// attributes) or a metric data point (`metrics`); figures labelled spans are then those.
    #[arg(long, value_enum, default_value = "traces")]
    signal: Signal,
    /// OTLP/HTTP body encoding (gRPC is always protobuf).
    #[arg(long, value_enum, default_value = "protobuf")]
    encoding: Encoding,
    /// Body compression (HTTP: Content-Encoding; gRPC: grpc-encoding).
    #[arg(long, value_enum, default_value = "none")]
    compression: Compression,
    /// Compression level [default: gzip 1, zstd 1: cheap for the load generator].
    #[arg(long)]
    compression_level: Option<i32>,
    /// PEM CA certificate to trust for an https:// endpoint (instead of the built-in roots).
    #[arg(long)]
    ca_cert: Option<PathBuf>,
    /// Source address of the connections (OTLP/HTTP only), e.g. 127.0.0.2: on loopback, loads
    /// from different addresses are different clients to the gateway's per-client limits.
    #[arg(long)]
    local_addr: Option<std::net::IpAddr>,
    /// How long to send (`20s`, `2m`, `500ms`). Default 20s unless --spans/--max-requests.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Total spans to send (rounded up to whole requests), instead of a duration.
    #[arg(long)]
    spans: Option<u64>,
    /// Total requests to send at most.
    #[arg(long)]
    max_requests: Option<u64>,
    /// Offered load in spans/s (open loop). Absent: closed loop, as fast as possible.
    #[arg(long)]
    rate: Option<f64>,
    /// Open loop: requests due evenly spaced, or as a Poisson process (exponential gaps, the
    /// same mean rate; bursts as many independent clients make them).
    #[arg(long, value_enum, default_value = "even")]
    arrivals: config::Arrivals,
    /// Closed loop: requests in flight. Open loop: cap on requests in flight [default: 8
    /// closed, 256 open].
    #[arg(long)]
    concurrency: Option<usize>,
    /// gRPC connections (HTTP/2 channels) to spread requests over [default: min(concurrency, 4)].
    #[arg(long)]
    connections: Option<usize>,
    #[arg(long, default_value_t = 512)]
    spans_per_request: u64,
    #[arg(long, value_enum, default_value = "realistic")]
    shape: Shape,
    /// LLM shape: smallest prompt/completion value in bytes.
    #[arg(long, default_value_t = 10 * 1024)]
    llm_min_bytes: usize,
    /// LLM shape: largest prompt/completion value in bytes.
    #[arg(long, default_value_t = 1024 * 1024)]
    llm_max_bytes: usize,
    /// Add one prompt attribute (`gen_ai.prompt`) of exactly this many bytes to every span, in
    /// any shape (e.g. `--shape realistic --attr-bytes 8192`: fixed 8 KiB prompts). 0: none.
    #[arg(long, default_value_t = 0)]
    attr_bytes: usize,
    /// Run id (16 hex digits or decimal), encoded in every trace id [default: random].
    #[arg(long)]
    run_id: Option<String>,
    /// Seed of the payload text and sizes [default: from the run id].
    #[arg(long)]
    seed: Option<u64>,
    /// Send N pre-built bodies in turn instead of a fresh body per request: no render and no
    /// compression per request (cheapest load), but span ids repeat, so no `verify`.
    #[arg(long, default_value_t = 0)]
    body_pool: usize,
    /// Template requests with different attribute values (different seeds), used in turn.
    /// Real traffic does not repeat a whole request's values; one template would let a
    /// compressor whose window spans several requests (the archive's zstd at level >= 3) match
    /// whole requests and flatter its speed and ratio. Capped at 256 MiB of templates.
    #[arg(long, default_value_t = 16)]
    templates: usize,
    /// Retries of a request after retryable refusals (429/502/503/504, gRPC UNAVAILABLE,
    /// RESOURCE_EXHAUSTED with RetryInfo). 0 = never retry.
    #[arg(long, default_value_t = 5)]
    max_retries: u32,
    /// Wait before a retry when the refusal names none (ms).
    #[arg(long, default_value_t = 1000)]
    retry_default_ms: u64,
    /// Cap on the wait before a retry, whatever Retry-After says (ms).
    #[arg(long, default_value_t = 30_000)]
    retry_max_ms: u64,
    /// Per-attempt timeout.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    timeout: Duration,
    /// After the run, how long requests in flight may still finish before they are abandoned
    /// (counted as unknown).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    drain_timeout: Duration,
    /// Tokio worker threads of the load generator.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Sample this process's CPU time and RSS every second into the report (repeatable;
    /// `PID` or `PID:label`). Its acked spans per CPU-second is the per-core figure.
    #[arg(long = "watch-pid")]
    watch_pids: Vec<String>,
    /// Write the JSON report here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Write an SVG plot of throughput and latency over time here.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Always draw the progress bar on stderr (default: only when stderr is a terminal).
    #[arg(long)]
    progress: bool,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Args, Debug)]
struct VerifyArgs {
    /// The run's report (`--report` of the run); gives the run id and the acked ranges.
    #[arg(long, alias = "acked")]
    report: PathBuf,
    /// Run id to look for [default: the report's].
    #[arg(long)]
    run_id: Option<String>,
    /// Archive: the gateway's / writer's config file (archive.url, keyring, KMS).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Archive: the gateway's / writer's data dir (local archive and keyring under it).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Archive: only this project's objects.
    #[arg(long)]
    project: Option<String>,
    /// ClickHouse HTTP URL (instead of the archive), e.g. http://127.0.0.1:8123.
    #[arg(long)]
    clickhouse: Option<String>,
    #[arg(long, default_value = "tracegate")]
    database: String,
    #[arg(long, default_value = "otel_traces")]
    table: String,
    #[arg(long)]
    user: Option<String>,
    #[arg(long, env = "CLICKHOUSE_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// Fail (exit 1) when any span is stored more than once.
    #[arg(long)]
    fail_on_duplicates: bool,
    /// Write the verification summary (JSON) here; it is also printed.
    #[arg(long)]
    out: Option<PathBuf>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mult) = if let Some(v) = s.strip_suffix("ms") {
        (v, 0.001)
    } else if let Some(v) = s.strip_suffix('s') {
        (v, 1.0)
    } else if let Some(v) = s.strip_suffix('m') {
        (v, 60.0)
    } else if let Some(v) = s.strip_suffix('h') {
        (v, 3600.0)
    } else {
        (s, 1.0)
    };
    let n: f64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    if !(n.is_finite() && n > 0.0) {
        return Err(format!("bad duration {s:?}"));
    }
    Ok(Duration::from_secs_f64(n * mult))
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .is_err()
    {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        b = (t ^ u64::from(std::process::id()).rotate_left(32)).to_be_bytes();
    }
    u64::from_be_bytes(b)
}

/// `--watch-pid PID[:label]` values, each checked to be a live process.
fn watch_list(args: &[String]) -> Result<Vec<(u32, String)>> {
    let mut watch = vec![];
    for w in args {
        let (pid, label) = match w.split_once(':') {
            Some((p, l)) => (p, l.to_string()),
            None => (w.as_str(), format!("pid {w}")),
        };
        let pid: u32 = pid
            .parse()
            .with_context(|| format!("--watch-pid {w:?}: not a pid"))?;
        if procstat::sample(pid).is_none() {
            bail!("--watch-pid {pid}: no such process (or /proc unreadable)");
        }
        watch.push((pid, label));
    }
    Ok(watch)
}

fn run_config(a: RunArgs) -> Result<(config::RunConfig, Option<PathBuf>, Option<PathBuf>)> {
    let Some(endpoint) = a.endpoint else {
        bail!("--endpoint is required (e.g. http://127.0.0.1:4318)");
    };
    let mut keys = a.api_keys;
    if let Some(f) = &a.api_key_file {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        keys.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(String::from),
        );
    }
    if keys.is_empty() {
        bail!("no API key: give --api-key KEY (repeatable) or --api-key-file FILE");
    }
    if a.spans_per_request == 0 || a.threads == 0 {
        bail!("--spans-per-request and --threads must be > 0");
    }
    if let Some(r) = a.rate {
        if !(r.is_finite() && r > 0.0) {
            bail!("--rate must be a positive number of spans/s");
        }
    }
    if a.protocol == Protocol::Grpc && a.encoding == Encoding::Json {
        bail!("--encoding json is for --protocol http (OTLP/gRPC is protobuf)");
    }
    if a.llm_min_bytes > a.llm_max_bytes {
        bail!("--llm-min-bytes is larger than --llm-max-bytes");
    }
    let concurrency = a
        .concurrency
        .unwrap_or(if a.rate.is_some() { 256 } else { 8 })
        .max(1);
    let duration = match (a.duration, a.spans.or(a.max_requests)) {
        (Some(d), _) => Some(d),
        (None, Some(_)) => None,
        (None, None) => Some(Duration::from_secs(20)),
    };
    let run_id = match &a.run_id {
        Some(s) => ids::parse_run_id(s).map_err(anyhow::Error::msg)?,
        None => random_u64(),
    };
    let watch = watch_list(&a.watch_pids)?;
    let progress = !a.quiet && (a.progress || std::io::stderr().is_terminal());
    let cfg = config::RunConfig {
        endpoint,
        protocol: a.protocol,
        encoding: a.encoding,
        signal: a.signal,
        compression: a.compression,
        compression_level: a.compression_level,
        projects: {
            let mut k = keys.clone();
            k.sort();
            k.dedup();
            k.len()
        },
        api_keys: keys,
        ca_cert: a.ca_cert,
        local_addr: a.local_addr,
        duration_secs: duration.map(|d| d.as_secs_f64()),
        spans: a.spans,
        max_requests: a.max_requests,
        rate: a.rate,
        arrivals: a.arrivals,
        concurrency,
        connections: a.connections.unwrap_or(concurrency.min(4)).max(1),
        spans_per_request: a.spans_per_request,
        shape: a.shape,
        llm_min_bytes: a.llm_min_bytes,
        llm_max_bytes: a.llm_max_bytes,
        attr_bytes: a.attr_bytes,
        run_id: ids::run_id_hex(run_id),
        seed: a.seed.unwrap_or(run_id),
        body_pool: a.body_pool,
        templates: a.templates,
        max_retries: a.max_retries,
        retry_default_ms: a.retry_default_ms,
        retry_max_ms: a.retry_max_ms,
        timeout_ms: a.timeout.as_millis() as u64,
        drain_timeout_ms: a.drain_timeout.as_millis() as u64,
        threads: a.threads,
        watch_pids: watch,
        progress,
    };
    Ok((cfg, a.report, a.plot))
}

fn main_run(a: RunArgs) -> Result<ExitCode> {
    let (cfg, report_path, plot_path) = run_config(a)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cfg.threads)
        .enable_all()
        .build()?;
    let report = rt.block_on(run::run(cfg))?;
    // Runtime shutdown must not wait on abandoned requests.
    rt.shutdown_timeout(Duration::from_secs(1));
    if let Some(p) = &report_path {
        let f = std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?;
        serde_json::to_writer_pretty(std::io::BufWriter::new(f), &report)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(p) = &plot_path {
        plot::write_svg(&report, p)?;
    }
    println!("{}", report::summary_line(&report));
    Ok(ExitCode::SUCCESS)
}

fn main_compare(a: CompareArgs) -> Result<ExitCode> {
    if a.targets.len() < 2 || a.rounds == 0 {
        bail!("compare needs at least two --target and --rounds >= 1");
    }
    let r = &a.run;
    if r.endpoint.is_some() || !r.watch_pids.is_empty() || r.report.is_some() || r.plot.is_some() {
        bail!("compare takes --target (with pid=) instead of --endpoint, --watch-pid, --report, --plot");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(r.threads.max(1))
        .enable_all()
        .build()?;
    let (mut rows, mut reports) = (Vec::new(), Vec::new());
    for round in 0..a.rounds {
        for i in compare::order(a.targets.len(), round) {
            let t = &a.targets[i];
            let mut run = a.run.clone();
            run.endpoint = Some(t.endpoint.clone());
            run.watch_pids = t
                .pid
                .map(|p| format!("{p}:{}", t.label))
                .into_iter()
                .collect();
            if t.key.is_some() || t.key_file.is_some() {
                run.api_keys = t.key.iter().cloned().collect();
                run.api_key_file = t.key_file.clone();
            } else if run.api_keys.is_empty() && run.api_key_file.is_none() {
                run.api_keys = vec!["no-key".into()];
            }
            run.quiet = true;
            if !rows.is_empty() {
                std::thread::sleep(a.pause);
            }
            let (cfg, _, _) = run_config(run)?;
            eprintln!(
                "loadtest compare: round {} of {}: {}",
                round + 1,
                a.rounds,
                t.label
            );
            let report = rt.block_on(run::run(cfg))?;
            eprintln!("{}", report::summary_line(&report));
            rows.push(compare::Row::from_report(&t.label, round, &report));
            reports.push(report);
        }
    }
    rt.shutdown_timeout(Duration::from_secs(1));
    let sums = compare::summarise(&rows);
    if let Some(p) = &a.compare_report {
        let json = serde_json::json!({ "rows": rows, "medians": sums, "reports": reports });
        std::fs::write(p, serde_json::to_vec_pretty(&json)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    print!("{}", compare::table(&rows, &sums));
    for s in &sums {
        println!("{}", compare::summary_line(s));
    }
    Ok(ExitCode::SUCCESS)
}

fn main_verify(a: VerifyArgs) -> Result<ExitCode> {
    let rep = verify::read_report(&a.report)?;
    let run_id = ids::parse_run_id(a.run_id.as_deref().unwrap_or(&rep.run_id))
        .map_err(anyhow::Error::msg)?;
    let mut tally = verify::Tally::new(&rep)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut summary = if let Some(url) = &a.clickhouse {
        let src = verify::ClickHouseSource {
            url: url.clone(),
            database: a.database.clone(),
            table: a.table.clone(),
            user: a.user.clone(),
            password: a.password.clone(),
        };
        let source = rt.block_on(verify::from_clickhouse(&src, run_id, &mut tally))?;
        tally.summary(
            source,
            "no: a span sent twice is two rows (insert tokens only drop a retried insert of the \
             same writer group)",
            vec![],
        )
    } else {
        if a.config.is_none() && a.data_dir.is_none() {
            bail!("give --data-dir D or --config FILE (archive) or --clickhouse URL");
        }
        let src = verify::ArchiveSource {
            config: a.config.clone(),
            data_dir: a.data_dir.clone(),
            project: a.project.clone(),
        };
        let (source, errors) = rt.block_on(verify::from_archive(&src, run_id, &mut tally))?;
        tally.summary(
            source,
            "no: the archive keeps every copy (a rewritten writer group adds none)",
            errors,
        )
    };
    summary.judge(a.fail_on_duplicates);
    let json = serde_json::to_string_pretty(&summary)?;
    if let Some(p) = &a.out {
        std::fs::write(p, &json).with_context(|| format!("writing {}", p.display()))?;
    }
    eprintln!("{json}");
    for e in &summary.read_errors {
        eprintln!("loadtest verify: unreadable: {e}");
    }
    println!("{}", verify::line(&summary));
    Ok(if summary.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Some(Cmd::Verify(v)) => main_verify(*v),
        Some(Cmd::Compare(c)) => main_compare(*c),
        None => main_run(cli.run),
    };
    match r {
        Ok(c) => c,
        Err(e) => {
            eprintln!("loadtest: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
