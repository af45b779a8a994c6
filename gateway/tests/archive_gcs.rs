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

    // The same group twice: one object.
    assert_create_only(&emu, &format!("gs://{GCS_BUCKET}/lib"));
}
