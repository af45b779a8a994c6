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

fn init_logging() {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match cli.command.unwrap_or(Command::Serve(ServeArgs::default())) {
        Command::Serve(args) => {
            let cfg = args.load()?;
            init_logging();
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
        Command::Migrate(common) => {
            let cfg = common.load()?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(tracegate::clickhouse::schema::migrate_command(
                &cfg,
                &mut stdout,
            ))
        }
        Command::Write(args) => {
            let cfg = args.load()?;
            init_logging();
            drop(stdout);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(tracegate::kafka::writer::serve(cfg, shutdown_signal()))
        }
    }
}

fn serve(cfg: tracegate::config::Config) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listeners = tracegate::app::Listeners::bind(&cfg).await?;
        let (grpc, http, admin) = listeners.addrs()?;
        {
            let mut out = std::io::stdout().lock();
            cli::bootstrap_first_key(&cfg, http, grpc, &mut out).await?;
            writeln!(out, "tracegate listening otlp_grpc={grpc} otlp_http={http} admin={admin}")?;
            out.flush()?;
        }
        tracing::info!(%grpc, %http, %admin, data_dir = %cfg.server.data_dir.display(), "tracegate started");
        tracegate::app::run(cfg, listeners, shutdown_signal()).await
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot install SIGTERM handler");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
}
