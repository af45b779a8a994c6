//! Cached API key validation: the per-request cost of auth once a key is in the cache (parse +
//! checksum, cache hit, constant-time secret compare, policy checks). Target ≤ 200 ns.
//! Run: `cargo bench -p tracegate-benches --bench auth`.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use tracegate::audit::Audit;
use tracegate::auth::authenticator::{Authenticator, Origin};
use tracegate::auth::file_store::FileKeyStore;
use tracegate::auth::pepper::Pepper;
use tracegate::auth::service::{KeyService, NewKey};
use tracegate::auth::store::KeyStore;
use tracegate::config::AuthConfig;

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (auth, key) = rt.block_on(async {
        let store: Arc<dyn KeyStore> =
            Arc::new(FileKeyStore::open(&dir.path().join("keys.json")).unwrap());
        let pepper = Pepper::from_file(&dir.path().join("pepper"), true).unwrap();
        let svc = KeyService {
            store: store.clone(),
            pepper: pepper.clone(),
            audit: Audit::off(),
        };
        let (_, key) = svc
            .create(NewKey::for_project("bench", "local"))
            .await
            .unwrap();
        let auth = Authenticator::new(
            store,
            pepper,
            &AuthConfig::default(),
            "local",
            None,
            Audit::off(),
        );
        let origin = Origin::default();
        auth.authenticate(Some(&key), &origin).await.unwrap();
        (auth, key)
    });
    let origin = Origin {
        client_ip: Some("127.0.0.1".parse().unwrap()),
        client_addr: "127.0.0.1:1".into(),
        vpc_endpoint_id: None,
    };
    c.bench_function("auth/cached_api_key", |b| {
        b.to_async(&rt)
            .iter(|| async { auth.authenticate(Some(&key), &origin).await.unwrap() })
    });
    c.bench_function("auth/bad_checksum_refused", |b| {
        let mut bad = key.clone().into_bytes();
        let n = bad.len();
        bad[n - 1] = if bad[n - 1] == b'0' { b'1' } else { b'0' };
        let bad = String::from_utf8(bad).unwrap();
        b.to_async(&rt)
            .iter(|| async { auth.authenticate(Some(&bad), &origin).await.unwrap_err() })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
