//! The local keyring: key-encryption keys (KEKs) in a JSON file (mode 0600), the embedded
//! default KEK provider. `tracegate archive rotate-key` adds a key and makes it the active one:
//! new objects use the active key, older keys stay in the file so older objects still decrypt.
//! A running gateway notices a rotation on its next write (the file's mtime/size/inode are
//! checked before each wrap, and the file is re-read before reporting an unknown key id).
//!
//! A data key is wrapped as `salt[32] || nonce[12] || AES-256-GCM(wrap key, data key) || tag`,
//! with wrap key = HKDF-SHA256(KEK, salt, "tracegate/keyring/v1 wrap") (a fresh key per wrap, so
//! no nonce limit applies to the KEK) and AAD = "tracegate/keyring/v1", key id, encryption context.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::crypto::{
    aead_open, aead_seal, hkdf_sha256, random_bytes, DataKey, EncryptionContext, DATA_KEY_LEN,
    NONCE_LEN, TAG_LEN,
};
use crate::fsutil::write_atomic;

const WRAP_INFO: &[u8] = b"tracegate/keyring/v1 wrap";
const AAD_LABEL: &[u8] = b"tracegate/keyring/v1";
const SALT_LEN: usize = 32;
pub const WRAPPED_LEN: usize = SALT_LEN + NONCE_LEN + DATA_KEY_LEN + TAG_LEN;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct KeyringFile {
    version: u32,
    /// Id of the key used for new objects.
    active: String,
    keys: Vec<KeyEntry>,
}

#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    id: String,
    created_at: String,
    /// 32 bytes, hex.
    material: String,
}

impl std::fmt::Debug for KeyEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyEntry")
            .field("id", &self.id)
            .field("created_at", &self.created_at)
            .finish_non_exhaustive()
    }
}

/// Public view of one key (never the material).
#[derive(Debug, Clone, PartialEq)]
pub struct KeyInfo {
    pub id: String,
    pub created_at: String,
    pub active: bool,
}

type Stamp = (i64, i64, u64, u64); // mtime s, mtime ns, size, inode

struct Loaded {
    stamp: Stamp,
    file: KeyringFile,
}

pub struct Keyring {
    path: PathBuf,
    state: Mutex<Loaded>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring").field("path", &self.path).finish()
    }
}

fn stamp(path: &Path) -> Result<Stamp> {
    let m = std::fs::metadata(path).with_context(|| format!("keyring {}", path.display()))?;
    Ok((m.mtime(), m.mtime_nsec(), m.size(), m.ino()))
}

fn new_entry() -> Result<KeyEntry> {
    let now = chrono::Utc::now();
    let material = Zeroizing::new(random_bytes::<32>()?);
    Ok(KeyEntry {
        id: format!(
            "kr-{}-{}",
            now.format("%Y%m%d"),
            hex::encode(random_bytes::<4>()?)
        ),
        created_at: now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        material: hex::encode(&material[..]),
    })
}

fn read_file(path: &Path) -> Result<KeyringFile> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading keyring {}", path.display()))?;
    let f: KeyringFile = serde_json::from_str(&text)
        .with_context(|| format!("parsing keyring {}", path.display()))?;
    if f.version != 1 {
        bail!(
            "keyring {}: unsupported version {}",
            path.display(),
            f.version
        );
    }
    for k in &f.keys {
        material(k).with_context(|| format!("keyring {}", path.display()))?;
    }
    if !f.keys.iter().any(|k| k.id == f.active) {
        bail!(
            "keyring {}: active key {} is not in the file",
            path.display(),
            f.active
        );
    }
    Ok(f)
}

fn write_file(path: &Path, f: &KeyringFile) -> Result<()> {
    let text = Zeroizing::new(serde_json::to_vec_pretty(f)?);
    write_atomic(path, &text, 0o600)
}

fn material(k: &KeyEntry) -> Result<Zeroizing<[u8; 32]>> {
    let mut m = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(&k.material, &mut m[..])
        .map_err(|_| anyhow::anyhow!("key {} has malformed material (want 64 hex chars)", k.id))?;
    Ok(m)
}

fn aad(key_id: &str, ctx: &EncryptionContext) -> Vec<u8> {
    let mut a = AAD_LABEL.to_vec();
    a.extend_from_slice(&(key_id.len() as u16).to_le_bytes());
    a.extend_from_slice(key_id.as_bytes());
    a.extend_from_slice(&ctx.to_bytes());
    a
}

impl Keyring {
    /// Opens the keyring at `path`; with `create`, a missing file is created with one key.
    pub fn open(path: &Path, create: bool) -> Result<Self> {
        if create && !path.exists() {
            let e = new_entry()?;
            let f = KeyringFile {
                version: 1,
                active: e.id.clone(),
                keys: vec![e],
            };
            write_file(path, &f)?;
            tracing::info!(path = %path.display(), key = %f.active, "created the archive keyring");
        }
        let st = stamp(path)?;
        let file = read_file(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            state: Mutex::new(Loaded { stamp: st, file }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Adds a new key and makes it active (creating the file if missing); returns its id.
    pub fn rotate(path: &Path) -> Result<String> {
        let mut f = if path.exists() {
            read_file(path)?
        } else {
            KeyringFile {
                version: 1,
                active: String::new(),
                keys: vec![],
            }
        };
        let e = new_entry()?;
        f.active = e.id.clone();
        f.keys.push(e);
        write_file(path, &f)?;
        Ok(f.active)
    }

    /// Every key, oldest first.
    pub fn keys(&self) -> Result<Vec<KeyInfo>> {
        self.refresh(false)?;
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        Ok(s.file
            .keys
            .iter()
            .map(|k| KeyInfo {
                id: k.id.clone(),
                created_at: k.created_at.clone(),
                active: k.id == s.file.active,
            })
            .collect())
    }

    /// Re-reads the file if it changed (or always, with `force`).
    fn refresh(&self, force: bool) -> Result<()> {
        let st = stamp(&self.path)?;
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if force || st != s.stamp {
            s.file = read_file(&self.path)?;
            s.stamp = st;
        }
        Ok(())
    }

    /// Wraps `data_key` with the active key; returns (key id, wrapped key).
    pub fn wrap(&self, data_key: &DataKey, ctx: &EncryptionContext) -> Result<(String, Vec<u8>)> {
        self.refresh(false)?;
        let (id, kek) = {
            let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let k = s
                .file
                .keys
                .iter()
                .find(|k| k.id == s.file.active)
                .context("keyring has no active key")?;
            (k.id.clone(), material(k)?)
        };
        let salt = random_bytes::<SALT_LEN>()?;
        let nonce = random_bytes::<NONCE_LEN>()?;
        let mut wk = Zeroizing::new([0u8; 32]);
        hkdf_sha256(&kek[..], &salt, WRAP_INFO, &mut wk[..])?;
        let mut body = data_key.to_vec();
        aead_seal(&wk, nonce, &aad(&id, ctx), &mut body)?;
        let mut out = Vec::with_capacity(WRAPPED_LEN);
        out.extend_from_slice(&salt);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&body);
        Ok((id, out))
    }

    /// Unwraps a data key wrapped by key `key_id` for `ctx`.
    pub fn unwrap(&self, key_id: &str, wrapped: &[u8], ctx: &EncryptionContext) -> Result<DataKey> {
        let find = |s: &Loaded| {
            s.file
                .keys
                .iter()
                .find(|k| k.id == key_id)
                .map(material)
                .transpose()
        };
        let mut kek = {
            let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            find(&s)?
        };
        if kek.is_none() {
            // Rotated (or replaced) since we loaded it.
            self.refresh(true)?;
            let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            kek = find(&s)?;
        }
        let Some(kek) = kek else {
            bail!(
                "keyring key {key_id} is not in {} (the object was written with a key this \
                 keyring does not hold: wrong keyring file?)",
                self.path.display()
            );
        };
        if wrapped.len() != WRAPPED_LEN {
            bail!(
                "integrity check failed: wrapped data key has {} bytes, want {WRAPPED_LEN}",
                wrapped.len()
            );
        }
        let salt = &wrapped[..SALT_LEN];
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&wrapped[SALT_LEN..SALT_LEN + NONCE_LEN]);
        let mut wk = Zeroizing::new([0u8; 32]);
        hkdf_sha256(&kek[..], salt, WRAP_INFO, &mut wk[..])?;
        let mut body = Zeroizing::new(wrapped[SALT_LEN + NONCE_LEN..].to_vec());
        aead_open(&wk, nonce, &aad(key_id, ctx), &mut body).map_err(|_| {
            anyhow::anyhow!(
                "integrity check failed: keyring key {key_id} cannot unwrap the data key for \
                 context {ctx} (the header was modified, or the object belongs to another \
                 tenant or group)"
            )
        })?;
        let mut dk = Zeroizing::new([0u8; DATA_KEY_LEN]);
        dk.copy_from_slice(&body[..DATA_KEY_LEN]);
        Ok(dk)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::new_data_key;

    #[test]
    fn create_wrap_rotate_unwrap() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("keyring.json");
        let kr = Keyring::open(&p, true).unwrap();
        let mode = std::fs::metadata(&p).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let ctx = EncryptionContext::new("o", "p", "r", "g");
        let dk = new_data_key().unwrap();
        let (id1, w1) = kr.wrap(&dk, &ctx).unwrap();
        assert_eq!(w1.len(), WRAPPED_LEN);
        assert_eq!(*kr.unwrap(&id1, &w1, &ctx).unwrap(), *dk);

        // Rotation through the file (as the CLI does) is seen by the open keyring.
        let id2 = Keyring::rotate(&p).unwrap();
        assert_ne!(id1, id2);
        let (id, w2) = kr.wrap(&dk, &ctx).unwrap();
        assert_eq!(id, id2);
        assert_eq!(*kr.unwrap(&id1, &w1, &ctx).unwrap(), *dk);
        assert_eq!(*kr.unwrap(&id2, &w2, &ctx).unwrap(), *dk);
        let keys = kr.keys().unwrap();
        assert_eq!(keys.len(), 2);
        assert!(keys[1].active && !keys[0].active);

        // Another context, another key id, a flipped byte: all refused.
        let other = EncryptionContext::new("o2", "p", "r", "g");
        let e = kr.unwrap(&id1, &w1, &other).unwrap_err().to_string();
        assert!(e.contains("integrity check failed"), "{e}");
        assert!(kr.unwrap(&id2, &w1, &ctx).is_err());
        for i in 0..w1.len() {
            let mut bad = w1.clone();
            bad[i] ^= 0x80;
            assert!(kr.unwrap(&id1, &bad, &ctx).is_err());
        }
        let e = kr.unwrap("kr-nope", &w1, &ctx).unwrap_err().to_string();
        assert!(e.contains("not in"), "{e}");
        // The file never holds anything but hex material and ids.
        assert!(!std::fs::read_to_string(&p).unwrap().contains("secret"));
    }
}
