//! The request path's view of auth: key text in, tenant out. Parses the key (shape and checksum
//! first, so junk never reaches the cache), then looks the record up through a bounded `moka`
//! cache with an absolute TTL, a shorter TTL for unknown keys, and request coalescing (N
//! concurrent requests with one uncached key cause one store lookup).

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::future::Cache;
use moka::Expiry;

use super::file_store::{FileKeyStore, KeyRecord};
use super::key::ApiKey;
use crate::config::AuthConfig;
use crate::error::ApiError;
use crate::metrics as m;

/// Who sent a request: stamped on every batch. Nothing the client sends can change it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub key_id: String,
    pub org_id: String,
    pub project_id: String,
}

type Entry = Option<Arc<KeyRecord>>;

struct TtlPolicy {
    positive: Duration,
    negative: Duration,
}

impl Expiry<String, Entry> for TtlPolicy {
    fn expire_after_create(&self, _k: &String, v: &Entry, _now: Instant) -> Option<Duration> {
        Some(if v.is_some() {
            self.positive
        } else {
            self.negative
        })
    }
}

pub struct Authenticator {
    store: Arc<FileKeyStore>,
    cache: Cache<String, Entry>,
}

impl Authenticator {
    pub fn new(store: Arc<FileKeyStore>, cfg: &AuthConfig) -> Self {
        let cache = Cache::builder()
            .max_capacity(cfg.cache_max_keys)
            .expire_after(TtlPolicy {
                positive: Duration::from_millis(cfg.cache_ttl_ms),
                negative: Duration::from_millis(cfg.negative_cache_ttl_ms.max(1)),
            })
            .build();
        Self { store, cache }
    }

    /// Extracts the key from `Authorization: Bearer <key>` or `x-api-key: <key>`.
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

    pub async fn authenticate(&self, key_text: Option<&str>) -> Result<Principal, ApiError> {
        let Some(text) = key_text else {
            return Err(ApiError::unauthenticated(
                "missing API key: send `Authorization: Bearer <key>` or `x-api-key: <key>`",
            ));
        };
        let key = ApiKey::parse(text)
            .map_err(|e| ApiError::unauthenticated(format!("invalid API key: {e}")))?;
        let store = self.store.clone();
        let id = key.key_id.clone();
        let entry = self
            .cache
            .try_get_with(key.key_id.clone(), async move {
                metrics::counter!(m::AUTH_CACHE_LOOKUPS).increment(1);
                store.lookup(&id).map(|r| r.map(Arc::new))
            })
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "key store lookup failed");
                ApiError::unavailable("key store unavailable, retry later")
            })?;
        let Some(record) = entry else {
            return Err(ApiError::unauthenticated("unknown API key"));
        };
        let stored = hex::decode(&record.secret_hash).unwrap_or_default();
        if record.revoked || !key.verify(self.store.pepper(), &stored) {
            return Err(ApiError::unauthenticated("unknown API key"));
        }
        Ok(Principal {
            key_id: record.key_id.clone(),
            org_id: record.org_id.clone(),
            project_id: record.project_id.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepts_known_and_refuses_unknown_and_tampered() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(FileKeyStore::open(dir.path()).unwrap());
        let (_, text) = store.create_key("p1").unwrap();
        let auth = Authenticator::new(store.clone(), &AuthConfig::default());
        let p = auth.authenticate(Some(&text)).await.unwrap();
        assert_eq!(p.project_id, "p1");
        let (other, _) = ApiKey::generate();
        let e = auth.authenticate(Some(&other.to_text())).await.unwrap_err();
        assert_eq!(e.http_status(), 401);
        assert_eq!(
            auth.authenticate(None).await.unwrap_err().http_status(),
            401
        );
        assert_eq!(
            auth.authenticate(Some("tg_garbage"))
                .await
                .unwrap_err()
                .http_status(),
            401
        );
    }

    #[test]
    fn header_extraction() {
        let mut h = http::HeaderMap::new();
        h.insert("authorization", "Bearer abc".parse().unwrap());
        assert_eq!(Authenticator::key_from_headers(&h), Some("abc"));
        let mut h = http::HeaderMap::new();
        h.insert("x-api-key", "xyz".parse().unwrap());
        assert_eq!(Authenticator::key_from_headers(&h), Some("xyz"));
        let mut h = http::HeaderMap::new();
        h.insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(Authenticator::key_from_headers(&h), None);
    }
}
