//! The embedded key store: a JSON file of key records (hashed secrets only). Writers replace the
//! file atomically under an exclusive lock; readers reload it when it changes (polled), and
//! tell the authenticator so cached records are dropped at once — revoking a key in the file
//! takes effect without a restart.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use super::record::KeyRecord;
use super::store::{Change, KeyStore};

#[derive(Debug, Default, Serialize, Deserialize)]
struct KeyFile {
    version: u32,
    keys: Vec<KeyRecord>,
}

type Stamp = Option<(SystemTime, u64, u64)>;

struct Loaded {
    stamp: Stamp,
    by_id: HashMap<String, KeyRecord>,
}

pub struct FileKeyStore {
    path: PathBuf,
    lock_path: PathBuf,
    loaded: Mutex<Loaded>,
    changes: broadcast::Sender<Change>,
}

fn stamp(path: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let m = fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

impl FileKeyStore {
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let (changes, _) = broadcast::channel(64);
        let store = Self {
            path: path.to_path_buf(),
            lock_path: path.with_extension("lock"),
            loaded: Mutex::new(Loaded {
                stamp: None,
                by_id: HashMap::new(),
            }),
            changes,
        };
        store.reload_if_changed()?;
        Ok(store)
    }

    fn read_file(&self) -> Result<KeyFile> {
        match fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("parsing {}", self.path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(KeyFile {
                version: 1,
                keys: vec![],
            }),
            Err(e) => Err(e).with_context(|| format!("reading {}", self.path.display())),
        }
    }

    /// Re-reads the file if its mtime, size or inode changed. Returns whether it did.
    fn reload_if_changed(&self) -> Result<bool> {
        let now = stamp(&self.path);
        {
            let loaded = self.loaded.lock().expect("key store lock poisoned");
            if loaded.stamp.is_some() && loaded.stamp == now {
                return Ok(false);
            }
        }
        let file = self.read_file()?;
        let mut loaded = self.loaded.lock().expect("key store lock poisoned");
        loaded.by_id = file
            .keys
            .into_iter()
            .map(|r| (r.key_id.clone(), r))
            .collect();
        loaded.stamp = now;
        Ok(true)
    }

    /// Polls the file for changes and broadcasts `Change::All` when it changed.
    pub fn spawn_watcher(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let store = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(store) = store.upgrade() else { break };
                let s = store.clone();
                match tokio::task::spawn_blocking(move || s.reload_if_changed()).await {
                    Ok(Ok(true)) => {
                        tracing::info!(path = %store.path.display(), "key file changed; reloaded");
                        let _ = store.changes.send(Change::All);
                    }
                    Ok(Ok(false)) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(error = %format!("{e:#}"), "key file reload failed; keeping the previous keys")
                    }
                    Err(_) => {}
                }
            }
        })
    }

    fn modify(&self, f: impl FnOnce(&mut KeyFile) -> Result<()>) -> Result<()> {
        let _lock = FileLock::exclusive(&self.lock_path)?;
        let mut file = self.read_file()?;
        f(&mut file)?;
        file.version = 1;
        let bytes = serde_json::to_vec_pretty(&file)?;
        tracegate_archive::fsutil::write_atomic(&self.path, &bytes, 0o600)?;
        drop(_lock);
        self.reload_if_changed()?;
        let _ = self.changes.send(Change::All);
        Ok(())
    }

    pub fn get_sync(&self, key_id: &str) -> Result<Option<KeyRecord>> {
        self.reload_if_changed()?;
        Ok(self
            .loaded
            .lock()
            .expect("key store lock poisoned")
            .by_id
            .get(key_id)
            .cloned())
    }

    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.read_file()?.keys.is_empty())
    }

    pub fn insert_sync(&self, record: KeyRecord) -> Result<()> {
        self.modify(|f| {
            if f.keys.iter().any(|k| k.key_id == record.key_id) {
                bail!("key id {} already exists", record.key_id);
            }
            f.keys.push(record);
            Ok(())
        })
    }

    pub fn update_sync(&self, record: KeyRecord) -> Result<()> {
        self.modify(|f| {
            let Some(slot) = f.keys.iter_mut().find(|k| k.key_id == record.key_id) else {
                bail!("no key with id {}", record.key_id);
            };
            *slot = record;
            Ok(())
        })
    }

    pub fn list_sync(&self) -> Result<Vec<KeyRecord>> {
        Ok(self.read_file()?.keys)
    }
}

impl KeyStore for FileKeyStore {
    fn kind(&self) -> &'static str {
        "file"
    }
    fn get<'a>(&'a self, key_id: &'a str) -> BoxFuture<'a, Result<Option<KeyRecord>>> {
        Box::pin(async move { self.get_sync(key_id) })
    }
    fn insert(&self, record: KeyRecord) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move { self.insert_sync(record) })
    }
    fn update(&self, record: KeyRecord) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move { self.update_sync(record) })
    }
    fn list(&self) -> BoxFuture<'_, Result<Vec<KeyRecord>>> {
        Box::pin(async move { self.list_sync() })
    }
    fn subscribe(&self) -> Option<broadcast::Receiver<Change>> {
        Some(self.changes.subscribe())
    }
}

struct FileLock(fs::File);

impl FileLock {
    fn exclusive(path: &Path) -> Result<Self> {
        use std::os::fd::AsRawFd;
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(path)?;
        // SAFETY: flock on a valid fd owned by `f`.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        Ok(Self(f))
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        // SAFETY: as above.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str) -> KeyRecord {
        KeyRecord {
            key_id: id.into(),
            project_id: "p".into(),
            ..Default::default()
        }
    }

    #[test]
    fn second_handle_sees_inserts_and_updates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        let a = FileKeyStore::open(&path).unwrap();
        let b = FileKeyStore::open(&path).unwrap();
        assert!(a.is_empty().unwrap());
        a.insert_sync(rec("k1")).unwrap();
        assert!(a.insert_sync(rec("k1")).is_err());
        assert_eq!(b.get_sync("k1").unwrap().unwrap().project_id, "p");
        let mut r = rec("k1");
        r.revoked = true;
        a.update_sync(r).unwrap();
        assert!(b.get_sync("k1").unwrap().unwrap().revoked);
        assert!(a.update_sync(rec("nope")).is_err());
        assert_eq!(b.list_sync().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn watcher_broadcasts_external_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        let a = Arc::new(FileKeyStore::open(&path).unwrap());
        let mut rx = a.subscribe().unwrap();
        let _w = a.spawn_watcher(Duration::from_millis(20));
        // Another process writes the file.
        let other = FileKeyStore::open(&path).unwrap();
        other.insert_sync(rec("k2")).unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, Change::All);
        assert!(a.get_sync("k2").unwrap().is_some());
    }
}
