//! `tracegate write` as a process: config, sinks, admin listener, the driver thread, shutdown.

use super::*;

/// Readiness of the writer for `/readyz`.
pub(super) struct WriterStatus {
    shared: Arc<Shared>,
    reach: Arc<stats::Reachability>,
}

impl WriterStatus {
    fn is_ready(&self) -> bool {
        self.reach.is_up()
            && self.shared.sinks_healthy.load(Ordering::Relaxed)
            && !self.shared.shutdown.load(Ordering::Relaxed)
    }
}

/// Runs `tracegate write` until `shutdown` resolves, then drains (flush, commit) and returns.
/// Prints `tracegate writer ready admin=ADDR topic=T group=G` once subscribed.
pub async fn serve(config: Config, shutdown: impl Future<Output = ()>) -> Result<()> {
    let kcfg = config
        .kafka
        .clone()
        .context("tracegate write needs a [kafka] section (kafka.brokers, kafka.topic)")?;
    let prometheus = m::install();
    m::register(m::Parts {
        kafka_writer: true,
        archive: true,
        clickhouse: config.clickhouse.is_some(),
        ..Default::default()
    });
    let data_dir = config.server.data_dir.clone();
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating data dir {}", data_dir.display()))?;
    // ClickHouse's insert deduplication token is the group id `topic:partition:first-last`,
    // so a range re-read after a crash is dropped by ClickHouse.
    if let Some(ch) = &config.clickhouse {
        crate::clickhouse::sink::check_at_startup(ch).await?;
    }
    let crate::app::Sinks {
        list: sinks,
        clickhouse_stop,
    } = crate::app::sinks(&config)?;
    let admin_listener = TcpListener::bind(kcfg.writer_admin_addr)
        .await
        .with_context(|| format!("binding kafka.writer_admin_addr {}", kcfg.writer_admin_addr))?;
    let admin_addr: SocketAddr = admin_listener.local_addr()?;

    let shared = Arc::new(Shared::default());
    shared.sinks_healthy.store(true, Ordering::Relaxed);
    let (reach, fin_rx) = start_driver(&config, &kcfg, sinks, shared.clone())?;

    let shutting_down = Arc::new(AtomicBool::new(false));
    let status = Arc::new(WriterStatus {
        shared: shared.clone(),
        reach,
    });
    let (admin, admin_stop) = crate::app::serve_admin(
        &config,
        admin_listener,
        prometheus,
        Arc::new(move || status.is_ready()),
        shutting_down.clone(),
    )?;
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "tracegate writer ready admin={admin_addr} topic={} group={}",
            kcfg.topic, kcfg.group_id
        )?;
        out.flush()?;
    }
    tracing::info!(admin = %admin_addr, topic = %kcfg.topic, group = %kcfg.group_id, data_dir = %data_dir.display(), "tracegate writer started");

    let mut fin_rx = fin_rx;
    tokio::select! {
        _ = shutdown => {
            tracing::info!("shutdown requested");
        }
        _ = &mut fin_rx => {
            anyhow::bail!("the writer loop stopped unexpectedly");
        }
    }
    shutting_down.store(true, Ordering::Relaxed);
    shared.shutdown.store(true, Ordering::Relaxed);
    // A failing ClickHouse insert is not retried any more: its range stays uncommitted and the
    // next owner writes it again (same tokens).
    if let Some(stop) = &clickhouse_stop {
        stop.cancel();
    }
    // The loop drains within server.shutdown_timeout_ms; leaving the group gets a little more.
    let wait = Duration::from_millis(config.server.shutdown_timeout_ms) + Duration::from_secs(10);
    if tokio::time::timeout(wait, fin_rx).await.is_err() {
        tracing::warn!("the writer did not stop in time; exiting anyway");
    }
    admin_stop.cancel();
    let _ = admin.await;
    tracing::info!("shutdown complete");
    Ok(())
}

/// Subscribes the consumer and starts the committer and driver threads (driver.rs, commit.rs);
/// resolves the returned receiver when the driver has stopped.
fn start_driver(
    config: &Config,
    kcfg: &KafkaConfig,
    sinks: Vec<Arc<dyn Sink>>,
    shared: Arc<Shared>,
) -> Result<(Arc<stats::Reachability>, tokio::sync::oneshot::Receiver<()>)> {
    let stats_ctx = StatsContext::new("consumer");
    let reach = stats_ctx.reach.clone();
    let ctx = WriterContext {
        stats: stats_ctx,
        events: Mutex::new(Vec::new()),
        owned: Arc::new(Mutex::new(HashMap::new())),
    };
    let consumer: BaseConsumer<WriterContext> = kcfg
        .consumer_config()
        .create_with_context(ctx)
        .map_err(|e| anyhow::anyhow!("creating the Kafka consumer: {e}"))?;
    consumer
        .subscribe(&[kcfg.topic.as_str()])
        .map_err(|e| anyhow::anyhow!("subscribing to {}: {e}", kcfg.topic))?;

    let (done_tx, done_rx) = mpsc::channel();
    let consumer = Arc::new(consumer);
    if let Some(region) = kcfg.msk_iam_region() {
        // Ends with the process (the consumer lives until then).
        let c = consumer.clone();
        let apply = move |t: &msk_iam::Token| {
            if let Err(e) = msk_iam::set_token(c.client(), t) {
                tracing::error!(error = %e, "kafka: could not set the MSK IAM token");
            }
        };
        let tokens = Arc::new(msk_iam::Tokens::default());
        msk_iam::keep_fresh(region.to_string(), tokens, apply, Default::default());
    }
    let (commit_tx, commit_req_rx) = mpsc::channel();
    let (commit_done_tx, commit_rx) = mpsc::channel();
    let committer_thread = {
        let consumer = consumer.clone();
        std::thread::Builder::new()
            .name("kafka-committer".into())
            .spawn(move || committer(consumer, commit_req_rx, commit_done_tx))
            .context("starting the committer thread")?
    };
    let driver = Driver {
        consumer,
        commit_tx: Some(commit_tx),
        commit_rx,
        committer: Some(committer_thread),
        limits: limits(kcfg),
        sinks,
        rt: tokio::runtime::Handle::current(),
        parts: HashMap::new(),
        done_tx,
        done_rx,
        next_epoch: 0,
        buffered: 0,
        shared,
        quarantine: config.server.data_dir.join("kafka-quarantine"),
        shutdown_timeout: Duration::from_millis(config.server.shutdown_timeout_ms),
        dedup: config.dedup.window().map(|window| Dedup {
            window,
            max_entries: config.dedup.max_entries(),
        }),
    };
    let (fin_tx, fin_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("kafka-writer".into())
        .spawn(move || {
            driver.run();
            let _ = fin_tx.send(());
        })
        .context("starting the writer thread")?;
    Ok((reach, fin_rx))
}

pub(super) fn limits(k: &KafkaConfig) -> Limits {
    Limits {
        max_spans: k.batch_max_spans as u64,
        max_bytes: k.batch_max_bytes,
        max_age: Duration::from_millis(k.batch_max_age_ms),
        max_buffered: k.writer_max_buffered_bytes,
    }
}
