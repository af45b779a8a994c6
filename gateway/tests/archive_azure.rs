//! The encrypted archive on Azure Blob Storage (issue 23, item 5), against Azurite, Microsoft's
//! emulator, from npm (scripts/cloud-emulators.sh):
//! - through the real binary: every span archived once and read back, nothing in clear in
//!   Azurite's storage, and no per-object key header (Azure's customer-managed keys are the
//!   account's or the container's default encryption scope; tracegate refuses
//!   `archive.kms_key_id` for `az://`);
//! - the store as a library: a group written twice keeps its first object and adds none
//!   (`If-None-Match: *`).

mod common;

use std::sync::Arc;

use common::*;

#[test]
fn azure_archive_and_create_only_objects() {
    let emu = CloudEmulator::start("azure");
    let run = archive_through_gateway(&emu, &[], "x-ms-encryption-scope");
    assert!(run.objects.iter().all(|(_, scope)| scope.is_none()));

    // The same group twice: one object. Set before any other thread reads the environment
    // (this binary's only test, and no child process runs from here on).
    for (k, v) in emu.env_for(&emu.endpoint, "lib") {
        std::env::set_var(k, v);
    }
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = tracegate::config::Config::default();
    cfg.server.data_dir = dir.path().to_path_buf();
    cfg.archive.url = format!("az://{AZURE_CONTAINER}/lib");
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
