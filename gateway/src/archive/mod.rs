//! The archive: the object formats (`format`: v1, plain; `crypto`: v2, envelope-encrypted),
//! key-encryption-key providers (`keyring`, `kms`, chosen by `keys`), the stores (`store`: local
//! directory or S3 through object_store; `layout`: where an object's key puts it; `local`: the
//! v1 writer, for tests), replay, and the commands
//! behind `tracegate archive`. See docs/archive-format.md.

pub mod cmd;
pub mod config;
pub mod crypto;
pub mod format;
pub mod fsutil;
pub mod http;
pub mod keyring;
pub mod keys;
pub mod kms;
pub mod layout;
// The v1 (unencrypted) object writer survives only to make v1 objects for the read-compatibility
// test: nothing shipped writes v1 any more.
#[cfg(test)]
pub mod local;
pub mod replay;
pub mod store;
