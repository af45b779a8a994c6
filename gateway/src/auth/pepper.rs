//! The server-side pepper: the HMAC key under which API key secrets are hashed. From
//! `auth.pepper` (hex, e.g. via `TRACEGATE_AUTH__PEPPER` from a secret manager) or
//! `auth.pepper_file`; the embedded default creates `<data dir>/pepper` (mode 0600) once.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use rand::RngCore;

pub const MIN_PEPPER_BYTES: usize = 32;

/// A pepper; `Debug` never prints it.
#[derive(Clone)]
pub struct Pepper(Vec<u8>);

impl std::fmt::Debug for Pepper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pepper(<redacted>)")
    }
}

impl Pepper {
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn from_hex(hex_text: &str) -> Result<Self> {
        let b = hex::decode(hex_text.trim()).context("auth.pepper must be hex")?;
        if b.len() < MIN_PEPPER_BYTES {
            bail!("auth.pepper must be at least {MIN_PEPPER_BYTES} bytes (64 hex chars)");
        }
        Ok(Self(b))
    }

    /// Reads the pepper file; with `create`, makes a new random one if it does not exist.
    pub fn from_file(path: &Path, create: bool) -> Result<Self> {
        match fs::read(path) {
            Ok(p) if p.len() >= MIN_PEPPER_BYTES => return Ok(Self(p)),
            Ok(_) => bail!(
                "{} is shorter than {MIN_PEPPER_BYTES} bytes",
                path.display()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {}
            Err(e) => return Err(e).with_context(|| format!("reading pepper {}", path.display())),
        }
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let mut pepper = vec![0u8; MIN_PEPPER_BYTES];
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
                tracegate_archive::fsutil::sync_dir(path.parent().unwrap_or(Path::new(".")))?;
                Ok(Self(pepper))
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                // The other process is writing it; give it a moment.
                for _ in 0..50 {
                    let p = fs::read(path)?;
                    if p.len() >= MIN_PEPPER_BYTES {
                        return Ok(Self(p));
                    }
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                bail!("{} stayed incomplete", path.display())
            }
            Err(e) => Err(e).with_context(|| format!("creating {}", path.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_is_created_once_and_hex_is_checked() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("pepper");
        let a = Pepper::from_file(&p, true).unwrap();
        let b = Pepper::from_file(&p, false).unwrap();
        assert_eq!(a.bytes(), b.bytes());
        assert!(Pepper::from_file(&d.path().join("nope"), false).is_err());
        assert!(Pepper::from_hex("abcd").is_err());
        assert!(Pepper::from_hex(&"ab".repeat(32)).is_ok());
        assert!(!format!("{a:?}").contains(&hex::encode(a.bytes())));
    }
}
