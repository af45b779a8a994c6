//! The request path's view of auth: credential in, tenant out.
//!
//! API keys: shape and checksum first (junk never reaches the cache), then the record through a
//! bounded `moka` cache with an absolute TTL, a short TTL for unknown keys, and request
//! coalescing (N concurrent requests with one uncached key cause one store lookup). A key whose
//! secret verified once is remembered with its entry, so the hot path is a hash-map hit and a
//! constant-time compare (no HMAC). Store changes (file reload, PostgreSQL NOTIFY) drop cached
//! entries at once; the TTL bounds staleness if a notification is lost. While the store is
//! down, records older than the TTL are still used for `stale_grace_ms`; unknown keys get a
//! retryable 503, never 401.
//!
//! Control-plane JWTs are verified offline (`token`). Then policy: revoked/expired → 401;
//! missing scope, other region, disallowed source network → 403. Every refusal is audited.

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use moka::future::Cache;
use moka::Expiry;

use super::key::{secrets_equal, KeyRef};
use super::pepper::Pepper;
use super::ratelimit::ProjectQuota;
use super::record::{KeyRecord, SCOPE_TRACES_WRITE};
use super::store::{Change, KeyStore};
use super::token::{looks_like_jwt, TokenVerifier};
use crate::audit::Audit;
use crate::config::{AuthConfig, Config};
use crate::error::ApiError;
use crate::metrics as m;

/// Who sent a request: stamped on every batch. Nothing the client sends can change it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Principal {
    /// Key id, or `jwt:<kid-less subject or jti>` for tokens; for audit and the batch.
    pub key_id: String,
    pub org_id: String,
    pub workspace_id: String,
    pub project_id: String,
    pub region: String,
    pub scopes: Vec<String>,
    pub quota: ProjectQuota,
    pub allowed_vpce_ids: Vec<String>,
    pub allowed_cidrs: Vec<String>,
}

impl Principal {
    /// `org/project`: the key of the per-project shares (admission, decode slots).
    pub fn tenant_key(&self) -> String {
        format!("{}/{}", self.org_id, self.project_id)
    }
}

/// What the connection tells us about where a request came from.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    pub client_ip: Option<IpAddr>,
    pub client_addr: String,
    pub vpc_endpoint_id: Option<String>,
}

struct Cached {
    record: Option<KeyRecord>,
    /// Built once per fill: the hot path hands out clones of this `Arc`.
    principal: Option<Arc<Principal>>,
    /// Parsed once; an unreadable expiry fails closed (already expired).
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Served from the stale copy because the store failed: re-check soon.
    stale: bool,
    /// An invalidation arrived while this record was being fetched, so it may predate it:
    /// serve the requests that waited for it, then fetch again.
    raced: bool,
    /// The secret that verified against `record.secret_hash` (hot path: no HMAC).
    verified: OnceLock<String>,
}

type Entry = Arc<Cached>;

impl Cached {
    fn new(record: Option<KeyRecord>, stale: bool, raced: bool) -> Entry {
        let principal = record.as_ref().map(|r| {
            Arc::new(Principal {
                key_id: r.key_id.clone(),
                org_id: r.org_id.clone(),
                workspace_id: r.workspace_id.clone(),
                project_id: r.project_id.clone(),
                region: r.region.clone(),
                scopes: r.scopes.clone(),
                quota: ProjectQuota {
                    spans_per_sec: r.spans_per_sec,
                    bytes_per_sec: r.bytes_per_sec,
                    burst_ms: r.burst_ms,
                },
                allowed_vpce_ids: r.allowed_vpce_ids.clone(),
                allowed_cidrs: r.allowed_cidrs.clone(),
            })
        });
        let expires_at = record.as_ref().and_then(|r| {
            r.expires_at.as_ref().map(|t| {
                chrono::DateTime::parse_from_rfc3339(t)
                    .map(|d| d.with_timezone(&chrono::Utc))
                    .unwrap_or(chrono::DateTime::UNIX_EPOCH)
            })
        });
        Arc::new(Cached {
            record,
            principal,
            expires_at,
            stale,
            raced,
            verified: OnceLock::new(),
        })
    }
}

struct TtlPolicy {
    positive: Duration,
    negative: Duration,
}

impl Expiry<String, Entry> for TtlPolicy {
    fn expire_after_create(&self, _k: &String, v: &Entry, _now: Instant) -> Option<Duration> {
        Some(if v.raced {
            Duration::ZERO
        } else if v.stale || v.record.is_none() {
            self.negative
        } else {
            self.positive
        })
    }
}

pub struct Authenticator {
    store: Arc<dyn KeyStore>,
    pepper: Pepper,
    cache: Cache<String, Entry>,
    /// Last known good records, kept `ttl + stale_grace` for store outages.
    stale: moka::sync::Cache<String, KeyRecord>,
    tokens: Option<Arc<TokenVerifier>>,
    region: String,
    audit: Audit,
    /// Bumped on every store change notification (see `Cached::raced`).
    invalidations: Arc<std::sync::atomic::AtomicU64>,
    /// Read-mostly front of `cache` for verified, fresh records: the per-request hit costs one
    /// uncontended read lock and a hash lookup instead of moka's read bookkeeping. An entry is
    /// used only while the invalidation counter is unchanged and for at most `front_ttl`, so it
    /// never outlives what moka would serve.
    front: std::sync::RwLock<std::collections::HashMap<String, FrontEntry>>,
    front_ttl: Duration,
    front_max: usize,
}

struct FrontEntry {
    entry: Entry,
    generation: u64,
    until: Instant,
}

enum Lookup {
    Found(Entry),
    StoreDown,
}

impl Authenticator {
    pub fn new(
        store: Arc<dyn KeyStore>,
        pepper: Pepper,
        cfg: &AuthConfig,
        region: &str,
        tokens: Option<Arc<TokenVerifier>>,
        audit: Audit,
    ) -> Arc<Self> {
        let cache = Cache::builder()
            .max_capacity(cfg.cache_max_keys)
            .expire_after(TtlPolicy {
                positive: Duration::from_millis(cfg.cache_ttl_ms),
                negative: Duration::from_millis(cfg.negative_cache_ttl_ms.max(1)),
            })
            .build();
        let stale = moka::sync::Cache::builder()
            .max_capacity(cfg.cache_max_keys)
            .time_to_live(Duration::from_millis(cfg.cache_ttl_ms + cfg.stale_grace_ms))
            .build();
        let a = Arc::new(Self {
            store: store.clone(),
            pepper,
            cache,
            stale,
            tokens,
            region: region.to_string(),
            audit,
            invalidations: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            front: std::sync::RwLock::new(std::collections::HashMap::new()),
            front_ttl: Duration::from_millis(cfg.cache_ttl_ms.min(1_000)),
            front_max: usize::try_from(cfg.cache_max_keys).unwrap_or(usize::MAX),
        });
        if let Some(mut rx) = store.subscribe() {
            let weak = Arc::downgrade(&a);
            tokio::spawn(async move {
                loop {
                    let change = rx.recv().await;
                    let Some(a) = weak.upgrade() else { break };
                    a.invalidations
                        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    match change {
                        Ok(Change::Key(id)) => {
                            a.cache.invalidate(&id).await;
                            a.stale.invalidate(&id);
                        }
                        // Lagged means notifications were lost: drop everything.
                        Ok(Change::All)
                        | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                            a.cache.invalidate_all();
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                    }
                    // Again after the invalidation: a front entry filled from the old cache
                    // entry in between carries the intermediate generation and is now unusable.
                    a.invalidations
                        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            });
        }
        a
    }

    pub fn from_config(
        cfg: &Config,
        store: Arc<dyn KeyStore>,
        pepper: Pepper,
        audit: Audit,
        tokens: Option<Arc<TokenVerifier>>,
    ) -> Arc<Self> {
        Self::new(store, pepper, &cfg.auth, &cfg.gateway.region, tokens, audit)
    }

    /// Extracts the credential from `Authorization: Bearer <key>` or `x-api-key: <key>`.
    pub fn key_from_headers(headers: &http::HeaderMap) -> Option<&str> {
        if let Some(v) = headers.get(http::header::AUTHORIZATION) {
            let v = v.to_str().ok()?.trim();
            let (scheme, rest) = v.split_once(' ')?;
            if scheme.eq_ignore_ascii_case("bearer") {
                return Some(rest.trim());
            }
            return None;
        }
        headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    }

    fn front_get(&self, key_id: &str) -> Option<Entry> {
        let generation = self.invalidations.load(std::sync::atomic::Ordering::SeqCst);
        let front = self.front.read().ok()?;
        let f = front.get(key_id)?;
        (f.generation == generation && Instant::now() < f.until).then(|| f.entry.clone())
    }

    fn front_put(&self, key_id: &str, entry: &Entry, generation: u64) {
        // Only records that moka would keep for a full TTL; never stale or raced ones.
        if entry.record.is_none() || entry.stale || entry.raced {
            return;
        }
        if let Ok(mut front) = self.front.write() {
            if front.len() >= self.front_max {
                front.clear();
            }
            front.insert(
                key_id.to_string(),
                FrontEntry {
                    entry: entry.clone(),
                    generation,
                    until: Instant::now() + self.front_ttl,
                },
            );
        }
    }

    async fn lookup(&self, key_id: &str) -> Lookup {
        if let Some(e) = self.front_get(key_id) {
            return Lookup::Found(e);
        }
        // Read before the lookup: a change that lands meanwhile makes the front entry unusable.
        let generation = self.invalidations.load(std::sync::atomic::Ordering::SeqCst);
        let found = self.lookup_cache(key_id).await;
        if let Lookup::Found(e) = &found {
            self.front_put(key_id, e, generation);
        }
        found
    }

    async fn lookup_cache(&self, key_id: &str) -> Lookup {
        // Hits skip building the fill future below.
        if let Some(e) = self.cache.get(key_id).await {
            return Lookup::Found(e);
        }
        let store = self.store.clone();
        let stale = self.stale.clone();
        let id = key_id.to_string();
        let invalidations = self.invalidations.clone();
        let r = self
            .cache
            .try_get_with(key_id.to_string(), async move {
                metrics::counter!(m::AUTH_CACHE_LOOKUPS).increment(1);
                let generation = invalidations.load(std::sync::atomic::Ordering::SeqCst);
                let fetched = store.get(&id).await;
                // moka does not cancel a fill that an invalidation overtook; detect it instead.
                let raced = invalidations.load(std::sync::atomic::Ordering::SeqCst) != generation;
                match fetched {
                    Ok(record) => {
                        match &record {
                            Some(r) => stale.insert(id.clone(), r.clone()),
                            None => stale.invalidate(&id),
                        }
                        Ok(Cached::new(record, false, raced))
                    }
                    Err(e) => {
                        tracing::warn!(error = %format!("{e:#}"), "key store lookup failed");
                        metrics::counter!(m::AUTH_STORE_ERRORS).increment(1);
                        match stale.get(&id) {
                            Some(r) => Ok(Cached::new(Some(r), true, raced)),
                            None => Err(e),
                        }
                    }
                }
            })
            .await;
        match r {
            Ok(e) => Lookup::Found(e),
            Err(_) => Lookup::StoreDown,
        }
    }

    fn refuse(
        &self,
        id: &str,
        reason: &'static str,
        project: &str,
        origin: &Origin,
        err: ApiError,
    ) -> ApiError {
        self.audit.refusal(
            id,
            reason,
            project,
            &origin.client_addr,
            origin.vpc_endpoint_id.as_deref(),
        );
        metrics::counter!(m::AUTH_REFUSED, "reason" => reason).increment(1);
        err
    }

    /// Authenticates and authorizes a request that wants `traces:write`.
    pub async fn authenticate(
        &self,
        credential: Option<&str>,
        origin: &Origin,
    ) -> Result<Arc<Principal>, ApiError> {
        self.authenticate_for(credential, origin, SCOPE_TRACES_WRITE)
            .await
    }

    /// Authenticates and authorizes a request that wants `scope` (one signal's `…:write`).
    pub async fn authenticate_for(
        &self,
        credential: Option<&str>,
        origin: &Origin,
        scope: &str,
    ) -> Result<Arc<Principal>, ApiError> {
        let Some(text) = credential else {
            return Err(self.refuse(
                "-",
                "missing_credential",
                "",
                origin,
                ApiError::unauthenticated(
                    "missing API key: send `Authorization: Bearer <key>` or `x-api-key: <key>`",
                ),
            ));
        };
        // API keys carry their type prefix: no need to scan them for JWT shape.
        let principal = if !text.starts_with(super::key::PREFIX) && looks_like_jwt(text) {
            self.principal_from_token(text, origin).await?
        } else {
            self.principal_from_api_key(text, origin).await?
        };
        self.authorize(principal, origin, scope)
    }

    async fn principal_from_token(
        &self,
        token: &str,
        origin: &Origin,
    ) -> Result<Arc<Principal>, ApiError> {
        let Some(v) = &self.tokens else {
            return Err(self.refuse(
                "jwt",
                "tokens_disabled",
                "",
                origin,
                ApiError::unauthenticated("tokens are not accepted by this gateway"),
            ));
        };
        match v.verify(token).await {
            Ok(c) => Ok(Arc::new(Principal {
                key_id: format!(
                    "jwt:{}",
                    c.jti.clone().or(c.sub.clone()).unwrap_or_default()
                ),
                org_id: c.org_id.clone(),
                workspace_id: c.workspace_id.clone().unwrap_or_default(),
                project_id: c.project_id.clone(),
                region: c.region.clone(),
                scopes: c.all_scopes(),
                quota: ProjectQuota {
                    spans_per_sec: c.spans_per_sec,
                    bytes_per_sec: c.bytes_per_sec,
                    burst_ms: None,
                },
                allowed_vpce_ids: vec![],
                allowed_cidrs: vec![],
            })),
            Err(e) => Err(self.refuse(
                "jwt",
                e.reason(),
                "",
                origin,
                ApiError::unauthenticated(format!("invalid token ({})", e.reason())),
            )),
        }
    }

    async fn principal_from_api_key(
        &self,
        text: &str,
        origin: &Origin,
    ) -> Result<Arc<Principal>, ApiError> {
        let key = KeyRef::parse(text).map_err(|e| {
            self.refuse(
                "-",
                "malformed_key",
                "",
                origin,
                ApiError::unauthenticated(format!("invalid API key: {e}")),
            )
        })?;
        let entry = match self.lookup(key.key_id).await {
            Lookup::Found(e) => e,
            Lookup::StoreDown => {
                return Err(ApiError::unavailable("key store unavailable, retry later"))
            }
        };
        let (Some(record), Some(principal)) = (&entry.record, &entry.principal) else {
            return Err(self.refuse(
                key.key_id,
                "unknown_key",
                "",
                origin,
                ApiError::unauthenticated("unknown API key"),
            ));
        };
        let fast = entry
            .verified
            .get()
            .map(|s| secrets_equal(s.as_bytes(), key.secret.as_bytes()))
            .unwrap_or(false);
        if !fast {
            let stored = hex::decode(&record.secret_hash).unwrap_or_default();
            if !key.verify(self.pepper.bytes(), &stored) {
                return Err(self.refuse(
                    key.key_id,
                    "bad_secret",
                    &record.project_id,
                    origin,
                    ApiError::unauthenticated("unknown API key"),
                ));
            }
            let _ = entry.verified.set(key.secret.to_string());
        }
        if record.revoked {
            return Err(self.refuse(
                key.key_id,
                "revoked",
                &record.project_id,
                origin,
                ApiError::unauthenticated("API key revoked"),
            ));
        }
        if entry.expires_at.is_some_and(|t| t <= chrono::Utc::now()) {
            return Err(self.refuse(
                key.key_id,
                "expired",
                &record.project_id,
                origin,
                ApiError::unauthenticated("API key expired"),
            ));
        }
        Ok(principal.clone())
    }

    fn authorize(
        &self,
        p: Arc<Principal>,
        origin: &Origin,
        scope: &str,
    ) -> Result<Arc<Principal>, ApiError> {
        if !p.scopes.iter().any(|s| s == scope) {
            return Err(self.refuse(
                &p.key_id,
                "missing_scope",
                &p.project_id,
                origin,
                ApiError::forbidden(format!("credential lacks the {scope} scope")),
            ));
        }
        if p.region != self.region {
            return Err(self.refuse(
                &p.key_id,
                "wrong_region",
                &p.project_id,
                origin,
                ApiError::forbidden(format!(
                    "credential belongs to region {:?}; this gateway serves region {:?}",
                    p.region, self.region
                )),
            ));
        }
        if !p.allowed_cidrs.is_empty() {
            let ok = origin.client_ip.is_some_and(|ip| {
                p.allowed_cidrs
                    .iter()
                    .filter_map(|c| c.parse::<ipnet::IpNet>().ok())
                    .any(|n| n.contains(&ip))
            });
            if !ok {
                return Err(self.refuse(
                    &p.key_id,
                    "source_not_allowed",
                    &p.project_id,
                    origin,
                    ApiError::forbidden("credential is not allowed from this source address"),
                ));
            }
        }
        if !p.allowed_vpce_ids.is_empty() {
            let ok = origin
                .vpc_endpoint_id
                .as_ref()
                .is_some_and(|v| p.allowed_vpce_ids.contains(v));
            if !ok {
                return Err(self.refuse(
                    &p.key_id,
                    "vpce_not_allowed",
                    &p.project_id,
                    origin,
                    ApiError::forbidden("credential is not allowed from this VPC endpoint"),
                ));
            }
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::file_store::FileKeyStore;
    use crate::auth::key::ApiKey;
    use crate::auth::service::{KeyService, NewKey};

    fn setup(cfg: AuthConfig) -> (tempfile::TempDir, KeyService, Arc<Authenticator>) {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn KeyStore> =
            Arc::new(FileKeyStore::open(&dir.path().join("keys.json")).unwrap());
        let pepper = Pepper::from_file(&dir.path().join("pepper"), true).unwrap();
        let svc = KeyService {
            store: store.clone(),
            pepper: pepper.clone(),
            audit: Audit::off(),
        };
        let auth = Authenticator::new(store, pepper, &cfg, "eu", None, Audit::off());
        (dir, svc, auth)
    }

    #[tokio::test]
    async fn accepts_known_refuses_unknown_tampered_revoked_and_policy() {
        let (_d, svc, auth) = setup(AuthConfig {
            cache_ttl_ms: 60_000,
            ..Default::default()
        });
        let o = Origin {
            client_ip: Some("10.1.2.3".parse().unwrap()),
            ..Default::default()
        };
        let (_, text) = svc.create(NewKey::for_project("p1", "eu")).await.unwrap();
        let p = auth.authenticate(Some(&text), &o).await.unwrap();
        assert_eq!(p.project_id, "p1");
        // cached fast path
        assert_eq!(
            auth.authenticate(Some(&text), &o).await.unwrap().project_id,
            "p1"
        );
        let (other, _) = ApiKey::generate();
        assert_eq!(
            auth.authenticate(Some(&other.to_text()), &o)
                .await
                .unwrap_err()
                .http_status(),
            401
        );
        assert_eq!(
            auth.authenticate(None, &o).await.unwrap_err().http_status(),
            401
        );
        assert_eq!(
            auth.authenticate(Some("tg_garbage"), &o)
                .await
                .unwrap_err()
                .http_status(),
            401
        );
        // wrong secret for a known id, after the right one was cached
        let key = ApiKey::parse(&text).unwrap();
        let forged = ApiKey::regenerate(&key.key_id).unwrap();
        assert_eq!(
            auth.authenticate(Some(&forged), &o)
                .await
                .unwrap_err()
                .http_status(),
            401
        );

        let (_, us) = svc.create(NewKey::for_project("p2", "us")).await.unwrap();
        let e = auth.authenticate(Some(&us), &o).await.unwrap_err();
        assert_eq!(e.http_status(), 403);
        assert!(e.message.contains("\"us\""));
        let mut spec = NewKey::for_project("p3", "eu");
        spec.scopes = vec!["metrics:write".into()];
        let (_, noscope) = svc.create(spec).await.unwrap();
        assert_eq!(
            auth.authenticate(Some(&noscope), &o)
                .await
                .unwrap_err()
                .http_status(),
            403
        );
        let mut spec = NewKey::for_project("p4", "eu");
        spec.allowed_cidrs = vec!["192.168.0.0/16".into()];
        let (_, cidr) = svc.create(spec).await.unwrap();
        assert_eq!(
            auth.authenticate(Some(&cidr), &o)
                .await
                .unwrap_err()
                .http_status(),
            403
        );
        let mut spec = NewKey::for_project("p5", "eu");
        spec.expires_in = Some(chrono::Duration::seconds(-1));
        let (_, old) = svc.create(spec).await.unwrap();
        assert_eq!(
            auth.authenticate(Some(&old), &o)
                .await
                .unwrap_err()
                .http_status(),
            401
        );

        // revocation through the store invalidates the cached entry
        svc.revoke(&key.key_id).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            auth.authenticate(Some(&text), &o)
                .await
                .unwrap_err()
                .message,
            "API key revoked"
        );
    }

    #[tokio::test]
    async fn rotation_invalidates_old_secret() {
        let (_d, svc, auth) = setup(AuthConfig::default());
        let o = Origin::default();
        let (rec, old) = svc.create(NewKey::for_project("p", "eu")).await.unwrap();
        auth.authenticate(Some(&old), &o).await.unwrap();
        let (_, new) = svc.rotate(&rec.key_id).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(auth.authenticate(Some(&new), &o).await.is_ok());
        assert_eq!(
            auth.authenticate(Some(&old), &o)
                .await
                .unwrap_err()
                .http_status(),
            401
        );
    }
}
