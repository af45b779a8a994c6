//! The key-store seam. Stores are plain record CRUD; hashing, caching and policy live in the
//! authenticator and the key service, so every store behaves the same.

use futures_util::future::BoxFuture;
use tokio::sync::broadcast;

use super::record::KeyRecord;

/// A change the store tells its readers about, so cached records can be dropped early.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// One key changed (revoked, rotated, updated).
    Key(String),
    /// Anything may have changed (file reloaded, notifications possibly missed).
    All,
}

pub trait KeyStore: Send + Sync + 'static {
    /// A short name for logs and metrics ("file", "postgres").
    fn kind(&self) -> &'static str;
    fn get<'a>(&'a self, key_id: &'a str) -> BoxFuture<'a, anyhow::Result<Option<KeyRecord>>>;
    fn insert(&self, record: KeyRecord) -> BoxFuture<'_, anyhow::Result<()>>;
    /// Replaces the record with the same key id (revoke, rotate). Errors if it does not exist.
    fn update(&self, record: KeyRecord) -> BoxFuture<'_, anyhow::Result<()>>;
    fn list(&self) -> BoxFuture<'_, anyhow::Result<Vec<KeyRecord>>>;
    /// Change notifications, when the store can push them.
    fn subscribe(&self) -> Option<broadcast::Receiver<Change>>;
}
