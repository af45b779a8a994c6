//! Wiring: builds the pipeline from a validated config and runs every listener until
//! `shutdown` resolves. Tests start it on port-0 listeners.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::admission::Admission;
use crate::archive::local::LocalArchive;
use crate::auth::authenticator::Authenticator;
use crate::auth::file_store::FileKeyStore;
use crate::config::Config;
use crate::ingest::Ingest;
use crate::queue::embedded::{BatchQueue, EmbeddedQueue};
use crate::queue::sink::{ArchiveSink, Sink};
use crate::server::{admin::Admin, grpc::GrpcReceiver, http::HttpReceiver, listener};

pub struct Listeners {
    pub grpc: TcpListener,
    pub http: TcpListener,
    pub admin: TcpListener,
}

impl Listeners {
    pub async fn bind(cfg: &Config) -> Result<Self> {
        let b = |a: SocketAddr, what: &'static str| async move {
            TcpListener::bind(a)
                .await
                .with_context(|| format!("binding {what} listener on {a}"))
        };
        Ok(Self {
            grpc: b(cfg.server.grpc_addr, "server.grpc_addr").await?,
            http: b(cfg.server.http_addr, "server.http_addr").await?,
            admin: b(cfg.server.admin_addr, "server.admin_addr").await?,
        })
    }

    pub fn addrs(&self) -> Result<(SocketAddr, SocketAddr, SocketAddr)> {
        Ok((
            self.grpc.local_addr()?,
            self.http.local_addr()?,
            self.admin.local_addr()?,
        ))
    }
}

/// Runs the gateway until `shutdown` resolves, then: stop accepting, finish in-flight requests
/// (whose spans the writer still makes durable), stop the writer after it drained, return.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let prometheus = crate::metrics::install();
    let data_dir = config.server.data_dir.clone();
    let store = Arc::new(FileKeyStore::open(&data_dir)?);
    let archive = LocalArchive::new(&data_dir, config.writer.compression_level);
    let stale = archive.remove_stale_temp_files()?;
    if stale > 0 {
        tracing::info!(
            count = stale,
            "removed unacknowledged temp files from an earlier crash"
        );
    }
    let sinks: Vec<Arc<dyn Sink>> = vec![Arc::new(ArchiveSink::new(archive))];
    let (queue, writer) = EmbeddedQueue::start(config.writer.clone(), sinks);
    let queue: Arc<dyn BatchQueue> = Arc::new(queue);
    let ingest = Arc::new(Ingest {
        auth: Authenticator::new(store, &config.auth),
        admission: Admission::new(config.limits.max_inflight_bytes),
        queue: queue.clone(),
        limits: config.limits.clone(),
    });
    let body_timeout = Duration::from_millis(config.server.body_timeout_ms);
    let drain = Duration::from_millis(config.server.shutdown_timeout_ms);
    let shutting_down = Arc::new(AtomicBool::new(false));
    let stop = CancellationToken::new();
    let admin_stop = CancellationToken::new();

    let http = tokio::spawn(listener::serve(
        "otlp_http",
        listeners.http,
        Arc::new(HttpReceiver {
            ingest: ingest.clone(),
            body_timeout,
        }),
        stop.clone(),
        drain,
    ));
    let grpc = tokio::spawn(listener::serve(
        "otlp_grpc",
        listeners.grpc,
        Arc::new(GrpcReceiver {
            ingest: ingest.clone(),
            body_timeout,
        }),
        stop.clone(),
        drain,
    ));
    let admin = tokio::spawn(listener::serve(
        "admin",
        listeners.admin,
        Arc::new(Admin {
            prometheus,
            queue,
            shutting_down: shutting_down.clone(),
        }),
        admin_stop.clone(),
        Duration::from_secs(1),
    ));

    shutdown.await;
    tracing::info!("shutdown requested");
    shutting_down.store(true, Ordering::Relaxed);
    stop.cancel();
    let _ = http.await;
    let _ = grpc.await;
    // Every request that could still be answered has been; now flush and stop the writer.
    writer.shutdown().await;
    admin_stop.cancel();
    let _ = admin.await;
    tracing::info!("shutdown complete");
    Ok(())
}
