//! The `tracegate` binary: parse the command line, set up logging, dispatch.

use std::io::Write;

use clap::Parser;
use tracegate::cli::{self, Cli, Command, ServeArgs};

fn main() {
    tracegate::alloc::tune_malloc();
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("tracegate: error: {e:#}");
        std::process::exit(2);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match cli.command.unwrap_or(Command::Serve(ServeArgs::default())) {
        Command::Serve(args) => {
            let cfg = args.load()?;
            cfg.log.init();
            drop(stdout);
            serve(cfg)
        }
        Command::Keys { command } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(cli::keys(command, &mut stdout))
        }
        Command::Archive { command } => cli::archive(command, &mut stdout),
        Command::Migrate(args) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(args.run(&mut stdout))
        }
        Command::Validate(common) => {
            if !cli::validate(&common, &mut stdout)? {
                stdout.flush()?;
                std::process::exit(2);
            }
            Ok(())
        }
        Command::Write(args) => {
            let cfg = args.load()?;
            cfg.log.init();
            drop(stdout);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .max_blocking_threads(blocking_threads())
                .build()?;
            rt.block_on(async move {
                let shutdown = shutdown_signal()?;
                tracegate::kafka::writer::serve(cfg, shutdown).await
            })
        }
    }
}

/// Threads of tokio's blocking pool (decode, scan and compression of requests; archive file
/// I/O). The work is CPU-bound, so more threads than a few per core do not add throughput; each
/// keeps its own zstd contexts (a few MiB at most), and tokio's default of 512 would let an
/// overload of 512 concurrent clients grow 512 of them. Excess tasks queue instead; their bytes
/// are already bounded by `limits.max_inflight_bytes`.
fn blocking_threads() -> usize {
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    (4 * cpus).max(8)
}

fn serve(cfg: tracegate::config::Config) -> anyhow::Result<()> {
    // Before any other thread: the allocator is set up for it (tracegate::alloc::prefault).
    if !tracegate::alloc::prefault(cfg.limits.prefault_bytes) {
        tracing::warn!("limits.prefault_bytes is ignored: malloc is tuned by the environment");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(blocking_threads())
        .build()?;
    rt.block_on(async move {
        // Before anything says "listening": a SIGTERM from then on is a graceful shutdown, never
        // the default action (killed by the signal, exit status not 0). It was installed on the
        // future's first poll, inside `app::run`, and a test that stopped a gateway right after
        // its start saw that window.
        let shutdown = shutdown_signal()?;
        if let (None, Some(ch)) = (&cfg.kafka, &cfg.clickhouse) {
            // The embedded writer inserts: a TLS setting that can never work stops start-up,
            // before anything listens.
            tracegate::clickhouse::sink::check_at_startup(ch).await?;
        }
        let listeners = tracegate::app::Listeners::bind(&cfg).await?;
        let (grpc, http, admin) = listeners.addrs()?;
        {
            let mut out = std::io::stdout().lock();
            cli::bootstrap_first_key(&cfg, http, grpc, &mut out).await?;
            writeln!(out, "tracegate listening otlp_grpc={grpc} otlp_http={http} admin={admin}")?;
            out.flush()?;
        }
        tracing::info!(%grpc, %http, %admin, data_dir = %cfg.server.data_dir.display(), "tracegate started");
        tracegate::app::run(cfg, listeners, shutdown).await
    })
}

/// Installs the SIGTERM and SIGINT handlers now (inside the runtime) and returns the future
/// that completes on the first of them.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use anyhow::Context;
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
    })
}
