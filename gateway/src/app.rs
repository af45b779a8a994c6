//! Wiring: builds the pipeline from a validated config and runs every listener until
//! `shutdown` resolves. Tests start it on port-0 listeners.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use futures_util::future::BoxFuture;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::admission::Admission;
use crate::audit::Audit;
use crate::auth::authenticator::Authenticator;
use crate::auth::file_store::FileKeyStore;
use crate::auth::pepper::Pepper;
use crate::auth::ratelimit::RateLimits;
use crate::auth::store::KeyStore;
use crate::auth::token::TokenVerifier;
use crate::config::Config;
use crate::config::StoreKind;
use crate::ingest::Ingest;
use crate::netconfig::OtlpListener;
use crate::queue::dedup::{recover, Dedup};
use crate::queue::embedded::EmbeddedQueue;
use crate::server::admin::{Admin, Readiness};
use crate::server::conn::ConnSetup;
use crate::server::{grpc::GrpcReceiver, http::HttpReceiver, listener};
use tracegate_archive::store::ArchiveStore;
use tracegate_pipeline::BatchQueue;
use tracegate_pipeline::Sink;

pub struct Listeners {
    pub grpc: TcpListener,
    pub http: TcpListener,
    pub admin: TcpListener,
}

impl Listeners {
    pub async fn bind(cfg: &Config) -> Result<Self> {
        // Bad TLS material stops start-up before anything listens.
        crate::server::conn::ConnSetup::preflight(cfg)?;
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

/// Opens the configured key store; the file store also starts watching its file.
pub async fn open_key_store(cfg: &Config) -> Result<Arc<dyn KeyStore>> {
    match cfg.auth.store {
        StoreKind::File => {
            let s = Arc::new(FileKeyStore::open(&cfg.key_file_path())?);
            if tokio::runtime::Handle::try_current().is_ok() {
                s.spawn_watcher(Duration::from_millis(cfg.auth.file_poll_ms.max(10)));
            }
            Ok(s)
        }
        StoreKind::Postgres => {
            let url = cfg.auth.database_url.as_deref().unwrap_or_default();
            Ok(crate::auth::postgres::PgKeyStore::connect(url).await?)
        }
    }
}

/// The pepper from `auth.pepper`, else `auth.pepper_file` (created if `create` and missing).
pub fn load_pepper(cfg: &Config, create: bool) -> Result<Pepper> {
    match &cfg.auth.pepper {
        Some(hex) => Pepper::from_hex(hex),
        None => Pepper::from_file(&cfg.pepper_file_path(), create),
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
    let embedded = config.kafka.is_none();
    crate::metrics::register(crate::metrics::Parts {
        receivers: true,
        embedded_writer: embedded,
        kafka_producer: !embedded,
        archive: embedded,
        clickhouse: embedded && config.clickhouse.is_some(),
        kafka_writer: false,
    });
    let data_dir = config.server.data_dir.clone();
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating data dir {}", data_dir.display()))?;
    let audit = Audit::from_config(&config)?;
    let audit_flusher =
        audit.spawn_flusher(Duration::from_millis(config.audit.aggregate_window_ms));
    let auth = Authenticator::from_config(
        &config,
        open_key_store(&config).await?,
        load_pepper(&config, true)?,
        audit.clone(),
        token_verifier(&config).await,
    );
    let queue = start_queue(&config)?;
    let ingest = Arc::new(Ingest {
        auth,
        admission: Admission::with_project_limit(
            config.limits.max_inflight_bytes,
            config.limits.project_inflight_limit(),
        ),
        rate_limits: RateLimits::new(config.auth.cache_max_keys),
        queue: queue.queue.clone(),
        limits: config.limits.clone(),
        tenant_attribute_keys: Arc::new(config.auth.tenant_attribute_keys.clone()),
        payload_zstd_level: config.kafka.as_ref().and_then(|k| k.gateway_payload_zstd()),
        decode_slots: crate::fair::DecodeSlots::new(config.limits.decode_slots()),
        body_pace: crate::ingest::BodyPace {
            timeout: Duration::from_millis(config.server.body_timeout_ms),
            min_bytes_per_sec: config.server.min_body_bytes_per_sec,
        },
        read_ahead: crate::ingest::readahead::ReadAhead::new(
            config.limits.read_ahead_bytes_per_project,
        ),
    });
    let shutting_down = Arc::new(AtomicBool::new(false));
    let stop = CancellationToken::new();
    let (http, grpc) = serve_otlp(&config, listeners.http, listeners.grpc, ingest, &stop)?;
    let (admin, admin_stop) = serve_admin(
        &config,
        listeners.admin,
        prometheus,
        {
            let q = queue.queue;
            Arc::new(move || q.is_ready())
        },
        shutting_down.clone(),
    )?;

    shutdown.await;
    tracing::info!("shutdown requested");
    shutting_down.store(true, Ordering::Relaxed);
    stop.cancel();
    let _ = http.await;
    let _ = grpc.await;
    // No request can be refused any more: write the refusals of the open aggregation window
    // now, or a rollout would drop up to `audit.aggregate_window_ms` of them every time.
    audit_flusher.abort();
    audit.flush_refusals();
    // Every request that could still be answered has been; now flush and stop the writer.
    // A ClickHouse insert that fails from now on is not retried, so the drain cannot hang.
    if let Some(stop) = &queue.clickhouse_stop {
        stop.cancel();
    }
    queue.stop.await;
    admin_stop.cancel();
    let _ = admin.await;
    tracing::info!("shutdown complete");
    Ok(())
}

/// The JWT verifier when `[tokens]` is configured, with its keys loaded (or being retried).
async fn token_verifier(config: &Config) -> Option<Arc<TokenVerifier>> {
    let v = Arc::new(TokenVerifier::new(&config.tokens)?);
    if let Err(e) = v.refresh().await {
        // Start anyway: API keys keep working and the refresher retries.
        tracing::warn!(error = %format!("{e:#}"), "initial JWKS load failed");
    }
    v.spawn_refresher();
    Some(v)
}

/// The queue requests publish to, and how to stop it.
struct Queue {
    queue: Arc<dyn BatchQueue>,
    /// Flushes and stops the queue (the embedded writer drains; the producer flushes).
    stop: BoxFuture<'static, ()>,
    /// Stops the embedded ClickHouse sink's retries, so the drain cannot hang.
    clickhouse_stop: Option<CancellationToken>,
}

/// A `[kafka]` section: the Kafka producer (`tracegate write` archives and inserts). Else the
/// embedded queue and writer with their sinks: the archive, then ClickHouse when configured
/// (docs/clickhouse.md), in the same acknowledged path. The archive is opened only here, where
/// it is written.
fn start_queue(config: &Config) -> Result<Queue> {
    if let Some(k) = &config.kafka {
        let (q, h) = crate::kafka::producer::KafkaQueue::start(k)?;
        return Ok(Queue {
            queue: Arc::new(q),
            stop: Box::pin(h.shutdown()),
            clickhouse_stop: None,
        });
    }
    let Sinks {
        list,
        clickhouse_stop,
    } = sinks(config)?;
    let mut writer_cfg = config.writer.clone();
    if let Some(ch) = &config.clickhouse {
        // ClickHouse wants few, large inserts: gather a group for at least the insert interval.
        writer_cfg.max_wait_ms = writer_cfg.max_wait_ms.max(ch.insert_interval_ms);
    }
    let dedup = embedded_dedup(config, &list)?;
    let (q, w) = EmbeddedQueue::start(writer_cfg, list, dedup);
    Ok(Queue {
        queue: Arc::new(q),
        stop: Box::pin(w.shutdown()),
        clickhouse_stop,
    })
}

/// Retry-safe ingest of the embedded queue (`queue::dedup`): the window rebuilt from the
/// journal in `<data dir>/dedup`, and the groups a crash left unfinished finished from the
/// archive in the background (their requests' repeats wait for that).
fn embedded_dedup(config: &Config, sinks: &[Arc<dyn Sink>]) -> Result<Option<Arc<Dedup>>> {
    let Some(window) = config.dedup.window() else {
        return Ok(None);
    };
    let dir = config.server.data_dir.join("dedup");
    let (d, unfinished) = Dedup::open(&dir, &config.dedup, window)
        .with_context(|| format!("opening the dedup journal in {}", dir.display()))?;
    let d = Arc::new(d);
    if !unfinished.is_empty() {
        let store = ArchiveStore::open(&config.archive_settings(), false)?;
        tokio::spawn(recover(d.clone(), store, sinks.to_vec(), unfinished));
    }
    Ok(Some(d))
}

/// The sinks a group is written to, in order, for `serve` (embedded) and `write` alike: the
/// archive of `[archive]` (local or S3, encrypted; docs/archive-format.md), then ClickHouse
/// when configured (docs/clickhouse.md), with the token that stops its retries at shutdown.
pub fn sinks(config: &Config) -> Result<Sinks> {
    let mut list: Vec<Arc<dyn Sink>> = vec![tracegate_archive::store::archive_sink(
        &config.archive_settings(),
    )?];
    let clickhouse_stop = crate::clickhouse::sink::from_config(config)?.map(|(sink, stop)| {
        list.push(sink);
        stop
    });
    Ok(Sinks {
        list,
        clickhouse_stop,
    })
}

/// What [`sinks`] built.
pub struct Sinks {
    pub list: Vec<Arc<dyn Sink>>,
    /// Stops the ClickHouse sink's retries, so a drain at shutdown cannot hang.
    pub clickhouse_stop: Option<CancellationToken>,
}

/// Serves `/metrics`, `/livez` and `/readyz` (`ready`, and false from the moment
/// `shutting_down` is set) until the returned token is cancelled.
/// Plain HTTP, or TLS when `[tls.admin]` says so.
pub fn serve_admin(
    config: &Config,
    listener: TcpListener,
    prometheus: metrics_exporter_prometheus::PrometheusHandle,
    ready: Readiness,
    shutting_down: Arc<AtomicBool>,
) -> Result<(JoinHandle<()>, CancellationToken)> {
    let setup = ConnSetup::for_admin(config)?;
    let stop = CancellationToken::new();
    let admin = tokio::spawn(listener::serve_with(
        "admin",
        listener,
        Arc::new(Admin {
            prometheus,
            ready,
            shutting_down,
        }),
        stop.clone(),
        Duration::from_secs(1),
        setup,
    ));
    Ok((admin, stop))
}

/// Starts the OTLP/HTTP and OTLP/gRPC listeners, each with its connection setup (TLS, PROXY)
/// and the shared ingest entry; they stop accepting when `stop` is cancelled.
fn serve_otlp(
    config: &Config,
    http: TcpListener,
    grpc: TcpListener,
    ingest: Arc<Ingest>,
    stop: &CancellationToken,
) -> Result<(JoinHandle<()>, JoinHandle<()>)> {
    let drain = Duration::from_millis(config.server.shutdown_timeout_ms);
    let http_setup = ConnSetup::for_listener(config, OtlpListener::Http)?;
    let grpc_setup = ConnSetup::for_listener(config, OtlpListener::Grpc)?;
    tracing::info!(otlp_http = %http_setup.describe(), otlp_grpc = %grpc_setup.describe(), "listener security");
    let http = tokio::spawn(listener::serve_with(
        "otlp_http",
        http,
        Arc::new(HttpReceiver {
            ingest: ingest.clone(),
            cors: crate::server::cors::Cors::build(&config.server.cors).map(Arc::new),
        }),
        stop.clone(),
        drain,
        http_setup,
    ));
    let grpc = tokio::spawn(listener::serve_with(
        "otlp_grpc",
        grpc,
        Arc::new(GrpcReceiver { ingest }),
        stop.clone(),
        drain,
        grpc_setup,
    ));
    Ok((http, grpc))
}
