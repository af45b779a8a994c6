//! The encrypted archive on Azure Blob Storage (issue 23, item 5), against Azurite, Microsoft's
//! emulator, from npm (scripts/cloud-emulators.sh):
//! - through the real binary: every span archived once and read back, nothing in clear in
//!   Azurite's storage, and no per-object key header (Azure's customer-managed keys are the
//!   account's or the container's default encryption scope; tracegate refuses
//!   `archive.kms_key_id` for `az://`);
//! - the store as a library: a group written twice keeps its first object and adds none
//!   (`If-None-Match: *`).

mod common;

use common::*;

#[test]
fn azure_archive_and_create_only_objects() {
    let emu = CloudEmulator::start("azure");
    let run = archive_through_gateway(&emu, &[], "x-ms-encryption-scope");
    assert!(run.objects.iter().all(|(_, scope)| scope.is_none()));

    // The same group twice: one object.
    assert_create_only(&emu, &format!("az://{AZURE_CONTAINER}/lib"));
}
