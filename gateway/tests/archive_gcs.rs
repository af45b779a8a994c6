//! The encrypted archive on Google Cloud Storage (issue 23, item 5), against gcp-storage-emulator
//! from PyPI (scripts/cloud-emulators.sh; deploy/testing/gcs_emulator.py adds the two XML-API
//! answers it lacks):
//! - through the real binary: every span archived once and read back, nothing in clear in the
//!   emulator's storage, and each object written under its tenant's Cloud KMS key (CMEK), else
//!   the deployment's: the `x-goog-encryption-kms-key-name` header, checked on the requests as
//!   they went on the wire (the emulator does not keep it);
//! - the store as a library: a group written twice keeps its first object and adds none (the
//!   create-only precondition).

mod common;

use std::sync::Arc;

use common::*;

const ACME: &str = "projects/p1/locations/europe-west1/keyRings/tracegate/cryptoKeys/acme";
const DEPLOY: &str = "projects/p1/locations/europe-west1/keyRings/tracegate/cryptoKeys/deploy";

#[test]
fn gcs_archive_with_cmek_per_tenant_and_create_only_objects() {
    let emu = CloudEmulator::start("gcs");
    let run = archive_through_gateway(
        &emu,
        &[
            ("TRACEGATE_ARCHIVE__KMS_KEY_ID".into(), DEPLOY.into()),
            (
                "TRACEGATE_ARCHIVE__TENANT_KMS_KEY_IDS".into(),
                format!("{{acme=\"{ACME}\"}}"),
            ),
        ],
        "x-goog-encryption-kms-key-name",
    );
    for (path, key) in &run.objects {
        let want = if path.contains("/arch/acme/web/") {
            ACME
        } else {
            assert!(path.contains("/arch/default/api/"), "{path}");
            DEPLOY
        };
        assert_eq!(key.as_deref(), Some(want), "{path}");
    }

    // The same group twice: one object. Set before any other thread reads the environment
    // (this binary's only test, and no child process runs from here on).
    for (k, v) in emu.env_for(&emu.endpoint, "lib") {
        std::env::set_var(k, v);
    }
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = tracegate::config::Config::default();
    cfg.server.data_dir = dir.path().to_path_buf();
    cfg.archive.url = format!("gs://{GCS_BUCKET}/lib");
    cfg.validate().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store =
            tracegate_archive::store::ArchiveStore::open(&cfg.archive_settings(), true).unwrap();
        let batch = tracegate_proto::v1::Batch {
            schema_version: 1,
            org_id: "acme".into(),
            project_id: "web".into(),
            batch_id: vec![7; 16].into(),
            span_count: 1,
            received_at_unix_nano: 1_700_000_000_000_000_000,
            ..Default::default()
        };
        let group = Arc::new(tracegate_pipeline::WriteGroup {
            id: "traces:1:5-6".into(),
            batches: vec![batch],
            class: Default::default(),
        });
        assert_eq!(store.write_group(group.clone()).await.unwrap().len(), 1);
        let again = store.write_group(group).await.unwrap();
        assert!(
            again.is_empty(),
            "the second write replaced the object: {again:?}"
        );
        let objs = store
            .list(&tracegate_archive::store::Filter::default())
            .await
            .unwrap();
        assert_eq!(objs.len(), 1);
    });
}
