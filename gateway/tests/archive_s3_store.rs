//! The archive store as a library against moto's S3 + KMS (one test in this binary, because it
//! points the process's own AWS_* environment at moto):
//! - the same group archived twice (a writer retry, a Kafka range re-read) makes one object: the
//!   second conditional put (`If-None-Match: *`) is refused and counted as done;
//! - KMS refuses to unwrap a data key under another tenant's encryption context.

mod common;

use std::sync::Arc;

use common::*;
use tracegate::config::Config;
use tracegate_archive::config::KeyProviderKind;
use tracegate_archive::crypto::{self, EncryptionContext};
use tracegate_archive::store::{ArchiveStore, Filter};
use tracegate_pipeline::WriteGroup;
use tracegate_proto::v1::Batch;

fn batch(project: &str, n: u8) -> Batch {
    Batch {
        schema_version: 1,
        org_id: "acme".into(),
        project_id: project.into(),
        region: "local".into(),
        batch_id: vec![n; 16].into(),
        span_count: 1,
        received_at_unix_nano: 1_700_000_000_000_000_000,
        ..Default::default()
    }
}

#[test]
fn same_group_twice_is_one_object_and_kms_binds_the_context() {
    let moto = Moto::start();
    moto.create_bucket("tg-store");
    let kms_key = moto.create_kms_key();
    for (k, v) in moto.env() {
        // Set before any other thread of this test binary reads the environment (this is its
        // only test).
        std::env::set_var(k, v);
    }
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::default();
    cfg.server.data_dir = dir.path().to_path_buf();
    cfg.archive.url = "s3://tg-store/p".into();
    cfg.archive.key_provider = KeyProviderKind::AwsKms;
    cfg.archive.kms_key_id = Some(kms_key.clone());
    cfg.validate().unwrap();

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = ArchiveStore::open(&cfg.archive_settings(), true).unwrap();
        let group = Arc::new(WriteGroup {
            id: "traces:3:100-102".into(),
            batches: vec![batch("web", 1), batch("api", 2), batch("web", 3)],
            class: Default::default(),
        });
        let first = store.write_group(group.clone()).await.unwrap();
        assert_eq!(first.len(), 2);
        assert!(first
            .iter()
            .all(|w| w.sse_kms_key_id.as_deref() == Some(kms_key.as_str())));
        // Rewritten (same id, same batches): no new object, and the first one is kept.
        let again = store.write_group(group.clone()).await.unwrap();
        assert!(again.is_empty(), "{again:?}");
        let keys = moto.list_keys("tg-store", "p/");
        assert_eq!(
            keys,
            vec![
                "p/acme/api/2023/11/14/traces_3_100-102.tga".to_string(),
                "p/acme/web/2023/11/14/traces_3_100-102.tga".to_string(),
            ]
        );
        let objs = store.list(&Filter::default()).await.unwrap();
        let web = objs.iter().find(|o| o.project == "web").unwrap();
        let c = store.read(web).await.unwrap();
        assert_eq!(c.group_id, "traces:3:100-102");
        assert_eq!(
            c.batches.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            vec![0, 2]
        );

        // KMS itself refuses the data key under another tenant's context.
        let bytes = moto.get_object("tg-store", web.location.as_ref());
        let parsed = crypto::parse(&bytes).unwrap();
        let mut h = parsed.header.clone();
        h.context = EncryptionContext::new("acme", "api", "local", "traces:3:100-102");
        let e = format!("{:#}", store.keys().unwrap(&h).await.unwrap_err());
        assert!(e.contains("integrity check failed"), "{e}");
        assert!(e.contains("InvalidCiphertextException"), "{e}");
        // With its own context it unwraps.
        store.keys().unwrap(&parsed.header).await.unwrap();
    });
}
