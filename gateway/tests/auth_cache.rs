//! The authenticator's cache under abuse, in-process against a counting key store:
//! unknown-key floods, bad checksums, coalescing, and store outages (stale grace).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::broadcast;
use tracegate::audit::Audit;
use tracegate::auth::authenticator::{Authenticator, Origin};
use tracegate::auth::file_store::FileKeyStore;
use tracegate::auth::key::ApiKey;
use tracegate::auth::pepper::Pepper;
use tracegate::auth::record::KeyRecord;
use tracegate::auth::service::{KeyService, NewKey};
use tracegate::auth::store::{Change, KeyStore};
use tracegate::config::AuthConfig;

/// Wraps a real store, counts lookups, can be slowed down or "taken down".
struct Counting {
    inner: FileKeyStore,
    lookups: AtomicU64,
    down: AtomicBool,
    delay: Duration,
    changes: broadcast::Sender<Change>,
}

impl KeyStore for Counting {
    fn kind(&self) -> &'static str {
        "counting"
    }
    fn get<'a>(&'a self, key_id: &'a str) -> BoxFuture<'a, anyhow::Result<Option<KeyRecord>>> {
        Box::pin(async move {
            self.lookups.fetch_add(1, Ordering::SeqCst);
            if self.down.load(Ordering::SeqCst) {
                anyhow::bail!("store down");
            }
            // Read first, answer late: like a query whose result is in flight.
            let r = self.inner.get(key_id).await;
            tokio::time::sleep(self.delay).await;
            r
        })
    }
    fn insert(&self, r: KeyRecord) -> BoxFuture<'_, anyhow::Result<()>> {
        self.inner.insert(r)
    }
    fn update(&self, r: KeyRecord) -> BoxFuture<'_, anyhow::Result<()>> {
        self.inner.update(r)
    }
    fn list(&self) -> BoxFuture<'_, anyhow::Result<Vec<KeyRecord>>> {
        self.inner.list()
    }
    fn subscribe(&self) -> Option<broadcast::Receiver<Change>> {
        Some(self.changes.subscribe())
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    store: Arc<Counting>,
    svc: KeyService,
    auth: Arc<Authenticator>,
}

fn setup(cfg: AuthConfig, delay: Duration) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Counting {
        inner: FileKeyStore::open(&dir.path().join("keys.json")).unwrap(),
        lookups: AtomicU64::new(0),
        down: AtomicBool::new(false),
        delay,
        changes: broadcast::channel(16).0,
    });
    let pepper = Pepper::from_file(&dir.path().join("pepper"), true).unwrap();
    let svc = KeyService {
        store: store.clone(),
        pepper: pepper.clone(),
        audit: Audit::off(),
    };
    let auth = Authenticator::new(store.clone(), pepper, &cfg, "local", None, Audit::off());
    Setup {
        _dir: dir,
        store,
        svc,
        auth,
    }
}

/// 1 000 000 requests using 1 000 distinct unknown keys cause at most 1 000 store lookups per
/// negative-cache TTL; 1 000 000 bad-checksum keys cause none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_key_flood_is_absorbed_by_the_negative_cache() {
    let s = setup(
        AuthConfig {
            negative_cache_ttl_ms: 600_000,
            ..Default::default()
        },
        Duration::ZERO,
    );
    let keys: Arc<Vec<String>> = Arc::new((0..1000).map(|_| ApiKey::generate().1).collect());
    let mut tasks = vec![];
    for t in 0..4u64 {
        let auth = s.auth.clone();
        let keys = keys.clone();
        tasks.push(tokio::spawn(async move {
            let o = Origin::default();
            let mut refused = 0u64;
            for i in 0..250_000u64 {
                let k = &keys[((i * 7 + t) % 1000) as usize];
                if auth.authenticate(Some(k), &o).await.is_err() {
                    refused += 1;
                }
            }
            refused
        }));
    }
    let mut refused = 0;
    for t in tasks {
        refused += t.await.unwrap();
    }
    assert_eq!(refused, 1_000_000);
    let lookups = s.store.lookups.load(Ordering::SeqCst);
    assert!(
        lookups <= 1000,
        "{lookups} store lookups for 1000 unknown keys"
    );
    assert!(
        lookups >= 1000,
        "every distinct key is looked up once: {lookups}"
    );

    let before = s.store.lookups.load(Ordering::SeqCst);
    let o = Origin::default();
    for k in keys.iter() {
        let mut bad = k.clone().into_bytes();
        let n = bad.len();
        bad[n - 1] = if bad[n - 1] == b'0' { b'1' } else { b'0' };
        let bad = String::from_utf8(bad).unwrap();
        for _ in 0..1000 {
            assert_eq!(
                s.auth
                    .authenticate(Some(&bad), &o)
                    .await
                    .unwrap_err()
                    .http_status(),
                401
            );
        }
    }
    assert_eq!(
        s.store.lookups.load(Ordering::SeqCst),
        before,
        "bad checksums must not reach the store"
    );
}

/// N concurrent requests with one uncached key cause one store lookup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_are_coalesced() {
    let s = setup(AuthConfig::default(), Duration::from_millis(200));
    let (_, key) = s
        .svc
        .create(NewKey::for_project("p", "local"))
        .await
        .unwrap();
    let mut tasks = vec![];
    for _ in 0..200 {
        let auth = s.auth.clone();
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            auth.authenticate(Some(&key), &Origin::default()).await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap().project_id, "p");
    }
    assert_eq!(s.store.lookups.load(Ordering::SeqCst), 1);
}

/// Store outage: cached keys keep working past their TTL (stale grace); a key never seen
/// gets a retryable 503, not 401; when the store is back, the new key works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_outage_keeps_cached_keys_and_answers_503_for_new_ones() {
    let s = setup(
        AuthConfig {
            cache_ttl_ms: 100,
            negative_cache_ttl_ms: 50,
            stale_grace_ms: 60_000,
            ..Default::default()
        },
        Duration::ZERO,
    );
    let o = Origin::default();
    let (_, known) = s
        .svc
        .create(NewKey::for_project("p", "local"))
        .await
        .unwrap();
    let (_, fresh) = s
        .svc
        .create(NewKey::for_project("q", "local"))
        .await
        .unwrap();
    s.auth.authenticate(Some(&known), &o).await.unwrap();
    s.store.down.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(250)).await; // past the TTL
    for _ in 0..20 {
        assert_eq!(
            s.auth
                .authenticate(Some(&known), &o)
                .await
                .unwrap()
                .project_id,
            "p"
        );
    }
    let e = s.auth.authenticate(Some(&fresh), &o).await.unwrap_err();
    assert_eq!(e.http_status(), 503);
    assert!(e.retry_after.is_some());
    s.store.down.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        s.auth
            .authenticate(Some(&fresh), &o)
            .await
            .unwrap()
            .project_id,
        "q"
    );
}

/// A revocation notice that arrives while the record is being fetched must not leave the
/// pre-revocation record cached for a whole TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidation_during_fetch_is_not_overwritten_by_the_fill() {
    let s = setup(
        AuthConfig {
            cache_ttl_ms: 600_000,
            ..Default::default()
        },
        Duration::from_millis(300),
    );
    let (rec, key) = s
        .svc
        .create(NewKey::for_project("p", "local"))
        .await
        .unwrap();
    let auth = s.auth.clone();
    let k = key.clone();
    let first = tokio::spawn(async move { auth.authenticate(Some(&k), &Origin::default()).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Revoked while the lookup above is in flight (it may have read the old record).
    let mut r = rec.clone();
    r.revoked = true;
    s.store.inner.update_sync(r).unwrap();
    s.store
        .changes
        .send(Change::Key(rec.key_id.clone()))
        .unwrap();
    let _ = first.await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let e = s
        .auth
        .authenticate(Some(&key), &Origin::default())
        .await
        .unwrap_err();
    assert_eq!(e.message, "API key revoked");
}
