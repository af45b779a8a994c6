//! The production key store: table `api_keys` in PostgreSQL (migrations in
//! `deploy/postgres/migrations/`, applied by `tracegate keys migrate`). The gateway needs only a
//! read-only role. A background task keeps one connection open, `LISTEN`s on
//! `tracegate_api_keys` and turns each notification into a cache invalidation; when the
//! connection drops (or stops answering a periodic ping: a half-open TCP connection would
//! otherwise swallow notifications silently) it reconnects with back-off and invalidates
//! everything, since notifications may have been missed meanwhile. Every query is bounded.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use tokio::sync::broadcast;
use tokio_postgres::{AsyncMessage, Client, Row, Statement};

use tracegate_pipeline::Backoff;

use super::record::KeyRecord;
use super::store::{Change, KeyStore};

pub const CHANNEL: &str = "tracegate_api_keys";

/// Versioned migrations, applied in order, each at most once.
pub const MIGRATIONS: &[(i32, &str)] = &[(
    1,
    include_str!("../../../deploy/postgres/migrations/0001_api_keys.sql"),
)];

const COLUMNS: &str = "key_id, org_id, workspace_id, project_id, secret_hash, scopes, region, \
    allowed_vpce_ids, allowed_cidrs, spans_per_sec, bytes_per_sec, burst_ms, expires_at, revoked, \
    created_at, last_rotated_at";

/// Bound on one query, and on connecting.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the listening connection is checked; one that does not answer within
/// `PING_TIMEOUT` is dropped and replaced (so a half-open connection, which would swallow
/// NOTIFYs, costs at most about 5 s).
const PING_INTERVAL: Duration = Duration::from_secs(2);
const PING_TIMEOUT: Duration = Duration::from_secs(3);

/// The live connection: its client and the prepared key lookup.
#[derive(Clone)]
struct Conn {
    client: Arc<Client>,
    get: Statement,
}

pub struct PgKeyStore {
    conn: RwLock<Option<Conn>>,
    changes: broadcast::Sender<Change>,
}

/// Runs `f` with `QUERY_TIMEOUT`.
async fn bounded<T>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T> {
    bounded_by(QUERY_TIMEOUT, what, f).await
}

async fn bounded_by<T>(
    limit: Duration,
    what: &str,
    f: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T> {
    match tokio::time::timeout(limit, f).await {
        Ok(r) => r.with_context(|| format!("PostgreSQL key store: {what}")),
        Err(_) => bail!("PostgreSQL key store: {what} timed out after {limit:?}"),
    }
}

/// The connection's type: TLS through rustls when the URL's `sslmode` asks for it
/// (`pg_tls.rs`), plain otherwise (the connector is then never used).
type PgConnection = tokio_postgres::Connection<
    tokio_postgres::Socket,
    <tokio_postgres_rustls::MakeRustlsConnect as tokio_postgres::tls::MakeTlsConnect<
        tokio_postgres::Socket,
    >>::Stream,
>;

async fn connect_raw(url: &str) -> Result<(Client, PgConnection)> {
    let (url, tls) = super::pg_tls::split(url)?;
    let mut cfg: tokio_postgres::Config = url.parse().context("bad PostgreSQL URL")?;
    cfg.ssl_mode(tls.tokio_mode());
    if cfg.get_connect_timeout().is_none() {
        cfg.connect_timeout(CONNECT_TIMEOUT);
    }
    match tokio::time::timeout(CONNECT_TIMEOUT, cfg.connect(tls.connector()?)).await {
        Ok(r) => Ok(r?),
        Err(_) => bail!("timed out connecting to PostgreSQL after {CONNECT_TIMEOUT:?}"),
    }
}

fn ts(t: &Option<String>) -> Result<Option<DateTime<Utc>>> {
    t.as_ref()
        .map(|s| {
            DateTime::parse_from_rfc3339(s)
                .map(|d| d.with_timezone(&Utc))
                .map_err(|e| anyhow!("bad timestamp {s:?}: {e}"))
        })
        .transpose()
}

fn to_i64(v: Option<u64>) -> Option<i64> {
    v.map(|x| x.min(i64::MAX as u64) as i64)
}

fn from_row(r: &Row) -> Result<KeyRecord> {
    let t = |c: &str| -> Result<Option<String>> {
        Ok(r.try_get::<_, Option<DateTime<Utc>>>(c)?
            .map(|d| d.to_rfc3339()))
    };
    Ok(KeyRecord {
        key_id: r.try_get("key_id")?,
        org_id: r.try_get("org_id")?,
        workspace_id: r.try_get("workspace_id")?,
        project_id: r.try_get("project_id")?,
        secret_hash: r.try_get("secret_hash")?,
        scopes: r.try_get("scopes")?,
        region: r.try_get("region")?,
        allowed_vpce_ids: r.try_get("allowed_vpce_ids")?,
        allowed_cidrs: r.try_get("allowed_cidrs")?,
        spans_per_sec: r
            .try_get::<_, Option<i64>>("spans_per_sec")?
            .map(|v| v.max(0) as u64),
        bytes_per_sec: r
            .try_get::<_, Option<i64>>("bytes_per_sec")?
            .map(|v| v.max(0) as u64),
        burst_ms: r
            .try_get::<_, Option<i64>>("burst_ms")?
            .map(|v| v.max(0) as u64),
        expires_at: t("expires_at")?,
        revoked: r.try_get("revoked")?,
        created_at: t("created_at")?.unwrap_or_default(),
        last_rotated_at: t("last_rotated_at")?,
    })
}

impl PgKeyStore {
    /// Connects (waiting up to 10 s for the first connection) and keeps the connection alive in
    /// the background.
    pub async fn connect(url: &str) -> Result<Arc<Self>> {
        let (changes, _) = broadcast::channel(1024);
        let store = Arc::new(Self {
            conn: RwLock::new(None),
            changes,
        });
        let (conn, driver) = Self::open(url, &store)
            .await
            .context("connecting to the PostgreSQL key store")?;
        *store.conn.write().expect("lock") = Some(conn.clone());
        tokio::spawn(Self::supervise(
            url.to_string(),
            Arc::downgrade(&store),
            conn,
            driver,
        ));
        Ok(store)
    }

    /// One connection, listening: returns it and the task that drives it (it ends when the
    /// connection does; aborting it closes the connection).
    async fn open(url: &str, store: &Arc<Self>) -> Result<(Conn, tokio::task::JoinHandle<()>)> {
        let (client, mut conn) = connect_raw(url).await?;
        let tx = store.changes.clone();
        let driver = tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
            while let Some(m) = messages.next().await {
                match m {
                    Ok(AsyncMessage::Notification(n)) => {
                        let _ = tx.send(Change::Key(n.payload().to_string()));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "PostgreSQL key store connection failed");
                        break;
                    }
                }
            }
        });
        let ready = async {
            bounded("LISTEN", client.batch_execute(&format!("LISTEN {CHANNEL}"))).await?;
            let q = format!("SELECT {COLUMNS} FROM api_keys WHERE key_id = $1");
            bounded("prepare", client.prepare(&q)).await
        }
        .await;
        match ready {
            Ok(get) => Ok((
                Conn {
                    client: Arc::new(client),
                    get,
                },
                driver,
            )),
            Err(e) => {
                driver.abort();
                Err(e)
            }
        }
    }

    /// Keeps the store connected: waits for the connection to end or stop answering, then
    /// reconnects with back-off. Cached records are dropped on both edges, because
    /// notifications may have been lost in between.
    async fn supervise(
        url: String,
        store: std::sync::Weak<Self>,
        mut conn: Conn,
        mut driver: tokio::task::JoinHandle<()>,
    ) {
        loop {
            let mut ping = tokio::time::interval(PING_INTERVAL);
            ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ping.tick().await;
            loop {
                tokio::select! {
                    _ = &mut driver => break,
                    _ = ping.tick() => {
                        if store.strong_count() == 0 {
                            driver.abort();
                            return;
                        }
                        let alive = conn.client.simple_query("SELECT 1");
                        if let Err(e) = bounded_by(PING_TIMEOUT, "ping", alive).await {
                            tracing::warn!(
                                error = %format!("{e:#}"),
                                "PostgreSQL key store connection unresponsive; reconnecting"
                            );
                            driver.abort();
                            let _ = (&mut driver).await;
                            break;
                        }
                    }
                }
            }
            let Some(s) = store.upgrade() else { return };
            *s.conn.write().expect("lock") = None;
            let _ = s.changes.send(Change::All);
            drop(s);
            let mut attempt = 0;
            loop {
                tokio::time::sleep(Backoff::DEFAULT.delay(attempt)).await;
                let Some(s) = store.upgrade() else { return };
                match Self::open(&url, &s).await {
                    Ok((c, d)) => {
                        *s.conn.write().expect("lock") = Some(c.clone());
                        let _ = s.changes.send(Change::All);
                        tracing::info!("PostgreSQL key store reconnected");
                        conn = c;
                        driver = d;
                        break;
                    }
                    Err(e) => {
                        tracing::debug!(error = %format!("{e:#}"), "PostgreSQL reconnect failed");
                        attempt += 1;
                    }
                }
            }
        }
    }

    fn conn(&self) -> Result<Conn> {
        self.conn
            .read()
            .expect("lock")
            .clone()
            .ok_or_else(|| anyhow!("PostgreSQL key store is not connected"))
    }

    /// Applies pending migrations (needs a role that may create tables).
    pub async fn migrate(url: &str) -> Result<Vec<i32>> {
        let (mut client, conn) = connect_raw(url).await.context("connecting to PostgreSQL")?;
        let driver = tokio::spawn(conn);
        client
            .batch_execute("CREATE TABLE IF NOT EXISTS tracegate_schema_migrations (version int PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())")
            .await?;
        let mut applied = vec![];
        for (version, sql) in MIGRATIONS {
            let tx = client.transaction().await?;
            // Serialise concurrent migrators.
            tx.batch_execute("LOCK TABLE tracegate_schema_migrations IN EXCLUSIVE MODE")
                .await?;
            let done = tx
                .query_opt(
                    "SELECT 1 FROM tracegate_schema_migrations WHERE version = $1",
                    &[version],
                )
                .await?
                .is_some();
            if !done {
                tx.batch_execute(sql)
                    .await
                    .with_context(|| format!("migration {version}"))?;
                tx.execute(
                    "INSERT INTO tracegate_schema_migrations (version) VALUES ($1)",
                    &[version],
                )
                .await?;
                applied.push(*version);
            }
            tx.commit().await?;
        }
        drop(client);
        let _ = driver.await;
        Ok(applied)
    }
}

impl KeyStore for PgKeyStore {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn get<'a>(&'a self, key_id: &'a str) -> BoxFuture<'a, Result<Option<KeyRecord>>> {
        Box::pin(async move {
            let c = self.conn()?;
            let row = bounded("key lookup", c.client.query_opt(&c.get, &[&key_id])).await?;
            row.as_ref().map(from_row).transpose()
        })
    }

    fn insert(&self, r: KeyRecord) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let c = self.conn()?;
            let n = bounded("insert", c.client
                .execute(
                    "INSERT INTO api_keys (key_id, org_id, workspace_id, project_id, secret_hash, scopes, region, \
                     allowed_vpce_ids, allowed_cidrs, spans_per_sec, bytes_per_sec, burst_ms, expires_at, revoked, created_at, last_rotated_at) \
                     VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,COALESCE($15, now()),$16) ON CONFLICT (key_id) DO NOTHING",
                    &[
                        &r.key_id, &r.org_id, &r.workspace_id, &r.project_id, &r.secret_hash, &r.scopes, &r.region,
                        &r.allowed_vpce_ids, &r.allowed_cidrs, &to_i64(r.spans_per_sec), &to_i64(r.bytes_per_sec),
                        &to_i64(r.burst_ms), &ts(&r.expires_at)?, &r.revoked, &ts(&Some(r.created_at.clone()).filter(|s| !s.is_empty()))?,
                        &ts(&r.last_rotated_at)?,
                    ],
                ))
                .await?;
            if n == 0 {
                bail!("key id {} already exists", r.key_id);
            }
            Ok(())
        })
    }

    fn update(&self, r: KeyRecord) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let c = self.conn()?;
            // Revocation is one-way: `revoked` is OR-ed in, so a rotate (or any read-modify-write)
            // racing with a revoke cannot bring the revoked key back.
            let n = bounded("update", c.client
                .execute(
                    "UPDATE api_keys SET org_id=$2, workspace_id=$3, project_id=$4, secret_hash=$5, scopes=$6, region=$7, \
                     allowed_vpce_ids=$8, allowed_cidrs=$9, spans_per_sec=$10, bytes_per_sec=$11, burst_ms=$12, expires_at=$13, \
                     revoked=(api_keys.revoked OR $14), last_rotated_at=$15 WHERE key_id=$1",
                    &[
                        &r.key_id, &r.org_id, &r.workspace_id, &r.project_id, &r.secret_hash, &r.scopes, &r.region,
                        &r.allowed_vpce_ids, &r.allowed_cidrs, &to_i64(r.spans_per_sec), &to_i64(r.bytes_per_sec),
                        &to_i64(r.burst_ms), &ts(&r.expires_at)?, &r.revoked, &ts(&r.last_rotated_at)?,
                    ],
                ))
                .await?;
            if n == 0 {
                bail!("no key with id {}", r.key_id);
            }
            Ok(())
        })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<KeyRecord>>> {
        Box::pin(async move {
            let c = self.conn()?;
            let q = format!("SELECT {COLUMNS} FROM api_keys ORDER BY created_at, key_id");
            let rows = bounded("list", c.client.query(q.as_str(), &[])).await?;
            rows.iter().map(from_row).collect()
        })
    }

    fn subscribe(&self) -> Option<broadcast::Receiver<Change>> {
        Some(self.changes.subscribe())
    }
}
