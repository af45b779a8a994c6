//! The archive, the system of record (docs/archive-format.md): every object envelope-encrypted
//! per tenant, written once, readable by anyone holding the keys and nothing else.
//! - `crypto`: the v2 object (AES-256-GCM under a per-object data key, key commitment, the
//!   tenant's encryption context); `format`: the v1 (plain) object, read only;
//! - `keyring`, `kms`, chosen by `keys`: who wraps the data keys (a local keyring, or AWS KMS
//!   with customer-managed keys per tenant);
//! - `store`: the stores (a local directory or S3 through object_store, conditional put) and
//!   the `Sink` (`tracegate_pipeline`) writers hand groups to; `layout`: where an object's key
//!   puts it; `http`: S3 over the gateway's reqwest/rustls/ring stack;
//! - `config`: `[archive]`; `fsutil`: durable file writes (also used by the gateway's keyring
//!   and pepper files and the writer's quarantine);
//! - `local` (tests only): the v1 writer that makes old objects for the read-compatibility test.
//!
//! The `stores` feature (on by default) adds `store`, `keys`, `kms` and `http`; without it the
//! crate is the formats, the keyring and the layout, for the fuzz targets.
//!
//! No dependency on the gateway: its writers, `tracegate archive`, the load tool's `verify`
//! and the fuzz targets build on this crate.

#[cfg(feature = "stores")]
pub mod aws;
#[cfg(feature = "stores")]
pub mod cloud;
pub mod config;
pub mod crypto;
pub mod format;
pub mod fsutil;
#[cfg(feature = "stores")]
pub mod http;
pub mod keyring;
#[cfg(feature = "stores")]
pub mod keys;
#[cfg(feature = "stores")]
pub mod kms;
pub mod layout;
// The v1 (unencrypted) object writer survives only to make v1 objects for the read-compatibility
// test: nothing shipped writes v1 any more.
#[cfg(test)]
pub mod local;
#[cfg(feature = "stores")]
pub mod store;
