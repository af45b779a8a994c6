//! The embedded key store: `<data dir>/keys.json` (records with hashed secrets) and
//! `<data dir>/pepper` (the HMAC key, mode 0600). Writers replace the file atomically under an
//! exclusive lock; the server re-reads it when it changed, so keys created by
//! `tracegate keys create` work without a restart.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use anyhow::{bail, Context, Result};
use rand::RngCore;
use serde::{Deserialize, Serialize};

use super::key::ApiKey;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KeyRecord {
    pub key_id: String,
    pub org_id: String,
    pub project_id: String,
    /// Hex of `HMAC-SHA256(pepper, secret)`.
    pub secret_hash: String,
    pub created_at: String,
    #[serde(default)]
    pub revoked: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct KeyFile {
    version: u32,
    keys: Vec<KeyRecord>,
}

struct Loaded {
    stamp: Option<(SystemTime, u64)>,
    by_id: HashMap<String, KeyRecord>,
}

pub struct FileKeyStore {
    path: PathBuf,
    lock_path: PathBuf,
    pepper: Vec<u8>,
    loaded: Mutex<Loaded>,
}

pub const DEFAULT_ORG: &str = "default";

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

impl FileKeyStore {
    /// Opens (creating the data dir and pepper if needed) the store in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self> {
        fs::create_dir_all(data_dir)
            .with_context(|| format!("creating data dir {}", data_dir.display()))?;
        let pepper = load_or_create_pepper(&data_dir.join("pepper"))?;
        let store = Self {
            path: data_dir.join("keys.json"),
            lock_path: data_dir.join("keys.lock"),
            pepper,
            loaded: Mutex::new(Loaded {
                stamp: None,
                by_id: HashMap::new(),
            }),
        };
        store.reload_if_changed()?;
        Ok(store)
    }

    pub fn pepper(&self) -> &[u8] {
        &self.pepper
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

    fn reload_if_changed(&self) -> Result<()> {
        let now = stamp(&self.path);
        let mut loaded = self.loaded.lock().expect("key store lock poisoned");
        if loaded.stamp.is_some() && loaded.stamp == now {
            return Ok(());
        }
        let file = self.read_file()?;
        loaded.by_id = file
            .keys
            .into_iter()
            .map(|r| (r.key_id.clone(), r))
            .collect();
        loaded.stamp = now;
        Ok(())
    }

    /// The record for `key_id`, re-reading the file first if it changed on disk.
    pub fn lookup(&self, key_id: &str) -> Result<Option<KeyRecord>> {
        self.reload_if_changed()?;
        let loaded = self.loaded.lock().expect("key store lock poisoned");
        Ok(loaded.by_id.get(key_id).cloned())
    }

    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.read_file()?.keys.is_empty())
    }

    /// Creates a key for `project` and returns the full key text (shown once, never stored).
    pub fn create_key(&self, project: &str) -> Result<(KeyRecord, String)> {
        validate_project_name(project)?;
        let _lock = FileLock::exclusive(&self.lock_path)?;
        let mut file = self.read_file()?;
        let (key, text) = ApiKey::generate();
        let record = KeyRecord {
            key_id: key.key_id.clone(),
            org_id: DEFAULT_ORG.to_string(),
            project_id: project.to_string(),
            secret_hash: hex::encode(key.hash(&self.pepper)),
            created_at: chrono::Utc::now().to_rfc3339(),
            revoked: false,
        };
        file.version = 1;
        file.keys.push(record.clone());
        let bytes = serde_json::to_vec_pretty(&file)?;
        crate::archive::fsutil::write_atomic(&self.path, &bytes, 0o600)?;
        drop(_lock);
        self.reload_if_changed()?;
        Ok((record, text))
    }
}

/// Project names end up in object paths and queries: keep them to a safe alphabet.
pub fn validate_project_name(project: &str) -> Result<()> {
    let ok = !project.is_empty()
        && project.len() <= 64
        && project
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !project.starts_with('.');
    if !ok {
        bail!("project name must be 1-64 chars of [A-Za-z0-9._-], not starting with '.'");
    }
    Ok(())
}

fn load_or_create_pepper(path: &Path) -> Result<Vec<u8>> {
    match fs::read(path) {
        Ok(p) if p.len() >= 32 => return Ok(p),
        Ok(_) => bail!("{} is shorter than 32 bytes", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let mut pepper = vec![0u8; 32];
    rand::rng().fill_bytes(&mut pepper);
    // create_new: two processes racing on first start must not end with different peppers.
    match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(mut f) => {
            f.write_all(&pepper)?;
            f.sync_all()?;
            crate::archive::fsutil::sync_dir(path.parent().unwrap_or(Path::new(".")))?;
            Ok(pepper)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            std::thread::sleep(std::time::Duration::from_millis(50));
            Ok(fs::read(path)?)
        }
        Err(e) => Err(e).with_context(|| format!("creating {}", path.display())),
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

    #[test]
    fn create_then_lookup_from_another_handle() {
        let dir = tempfile::tempdir().unwrap();
        let a = FileKeyStore::open(dir.path()).unwrap();
        let b = FileKeyStore::open(dir.path()).unwrap();
        assert!(a.is_empty().unwrap());
        let (rec, text) = a.create_key("proj-1").unwrap();
        let key = ApiKey::parse(&text).unwrap();
        let found = b
            .lookup(&key.key_id)
            .unwrap()
            .expect("second handle sees new key");
        assert_eq!(found, rec);
        assert!(key.verify(b.pepper(), &hex::decode(&found.secret_hash).unwrap()));
        // the secret is not in the file
        let raw = fs::read_to_string(dir.path().join("keys.json")).unwrap();
        assert!(!raw.contains(&text[20..60]));
    }

    #[test]
    fn project_names_are_checked() {
        assert!(validate_project_name("ok-name_1.x").is_ok());
        assert!(validate_project_name("../etc").is_err());
        assert!(validate_project_name("").is_err());
        assert!(validate_project_name("a/b").is_err());
    }
}
