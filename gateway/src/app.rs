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
use crate::queue::embedded::{BatchQueue, EmbeddedQueue};
use crate::queue::sink::Sink;
use crate::server::conn::ConnSetup;
use crate::server::{admin::Admin, grpc::GrpcReceiver, http::HttpReceiver, listener};

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
    let store = open_key_store(&config).await?;
    let pepper = load_pepper(&config, true)?;
    let tokens = match TokenVerifier::new(&config.tokens) {
        Some(v) => {
            let v = Arc::new(v);
            if let Err(e) = v.refresh().await {
                // Start anyway: API keys keep working and the refresher retries.
                tracing::warn!(error = %format!("{e:#}"), "initial JWKS load failed");
            }
            v.spawn_refresher();
            Some(v)
        }
        None => None,
    };
    let mut sinks: Vec<Arc<dyn Sink>> = vec![crate::archive::store::archive_sink(&config)?];
    let mut writer_cfg = config.writer.clone();
    // ClickHouse sink (docs/clickhouse.md): after the archive, in the same acknowledged path.
    // With `[kafka]`, `tracegate write` inserts instead.
    let clickhouse_stop = if config.kafka.is_none() {
        crate::clickhouse::sink::from_config(&config)?.map(|(sink, stop)| {
            sinks.push(sink);
            stop
        })
    } else {
        None
    };
    if let Some(ch) = &config.clickhouse {
        // ClickHouse wants few, large inserts: gather a group for at least the insert interval.
        writer_cfg.max_wait_ms = writer_cfg.max_wait_ms.max(ch.insert_interval_ms);
    }
    // A `[kafka]` section replaces the embedded queue + writer with the Kafka producer.
    let (queue, stop_queue): (
        Arc<dyn BatchQueue>,
        futures_util::future::BoxFuture<'static, ()>,
    ) = match &config.kafka {
        Some(k) => {
            let (q, h) = crate::kafka::producer::KafkaQueue::start(k)?;
            (Arc::new(q), Box::pin(h.shutdown()))
        }
        None => {
            let (q, w) = EmbeddedQueue::start(writer_cfg, sinks);
            (Arc::new(q), Box::pin(w.shutdown()))
        }
    };
    let ingest = Arc::new(Ingest {
        auth: Authenticator::from_config(&config, store, pepper, audit.clone(), tokens),
        admission: Admission::with_project_limit(
            config.limits.max_inflight_bytes,
            config.limits.project_inflight_limit(),
        ),
        rate_limits: RateLimits::new(config.auth.cache_max_keys),
        queue: queue.clone(),
        limits: config.limits.clone(),
        tenant_attribute_keys: Arc::new(config.auth.tenant_attribute_keys.clone()),
        payload_zstd_level: config.kafka.as_ref().and_then(|k| k.gateway_payload_zstd()),
        decode_slots: crate::fair::DecodeSlots::new(config.limits.decode_slots()),
    });
    let body_pace = crate::server::body::BodyPace {
        timeout: Duration::from_millis(config.server.body_timeout_ms),
        min_bytes_per_sec: config.server.min_body_bytes_per_sec,
    };
    let drain = Duration::from_millis(config.server.shutdown_timeout_ms);
    let shutting_down = Arc::new(AtomicBool::new(false));
    let stop = CancellationToken::new();
    let admin_stop = CancellationToken::new();

    let http_setup = ConnSetup::for_listener(&config, OtlpListener::Http)?;
    let grpc_setup = ConnSetup::for_listener(&config, OtlpListener::Grpc)?;
    tracing::info!(otlp_http = %http_setup.describe(), otlp_grpc = %grpc_setup.describe(), "listener security");
    let http = tokio::spawn(listener::serve_with(
        "otlp_http",
        listeners.http,
        Arc::new(HttpReceiver {
            ingest: ingest.clone(),
            body_pace,
        }),
        stop.clone(),
        drain,
        http_setup,
    ));
    let grpc = tokio::spawn(listener::serve_with(
        "otlp_grpc",
        listeners.grpc,
        Arc::new(GrpcReceiver {
            ingest: ingest.clone(),
            body_pace,
        }),
        stop.clone(),
        drain,
        grpc_setup,
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
    // No request can be refused any more: write the refusals of the open aggregation window
    // now, or a rollout would drop up to `audit.aggregate_window_ms` of them every time.
    audit_flusher.abort();
    audit.flush_refusals();
    // Every request that could still be answered has been; now flush and stop the writer.
    // A ClickHouse insert that fails from now on is not retried, so the drain cannot hang.
    if let Some(stop) = &clickhouse_stop {
        stop.cancel();
    }
    stop_queue.await;
    admin_stop.cancel();
    let _ = admin.await;
    tracing::info!("shutdown complete");
    Ok(())
}
