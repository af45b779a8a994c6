//! Picks the key-encryption key for new objects (keyring or AWS KMS, the tenant's KMS key
//! else the deployment's) and unwraps data keys of existing objects with whichever provider
//! wrote them: an archive written with the keyring stays readable after moving to KMS.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::sync::OnceCell;

use crate::config::{ArchiveConfig, KeyProviderKind};
use crate::crypto::{new_data_key, DataKey, EncryptionContext, Header, Provider};
use crate::keyring::Keyring;
use crate::kms::Kms;

/// A data key for a new object and how it is wrapped.
pub struct NewKey {
    pub provider: Provider,
    pub key_id: String,
    pub wrapped: Vec<u8>,
    pub plaintext: DataKey,
}

pub struct KeyManager {
    cfg: ArchiveConfig,
    keyring_path: PathBuf,
    keyring: Mutex<Option<Arc<Keyring>>>,
    kms: OnceCell<Kms>,
    timeout: Duration,
}

impl KeyManager {
    pub fn new(cfg: &ArchiveConfig, data_dir: &std::path::Path) -> Self {
        Self {
            keyring_path: cfg.keyring_path(data_dir),
            cfg: cfg.clone(),
            keyring: Mutex::new(None),
            kms: OnceCell::new(),
            timeout: Duration::from_millis(cfg.timeout_ms),
        }
    }

    pub fn config(&self) -> &ArchiveConfig {
        &self.cfg
    }

    pub fn keyring_path(&self) -> &std::path::Path {
        &self.keyring_path
    }

    /// For a writer: with the keyring provider, opens (creating if missing) the keyring now, so
    /// a broken keyring stops start-up instead of the first write.
    pub fn prepare_for_writing(&self) -> Result<()> {
        if self.cfg.key_provider == KeyProviderKind::Keyring {
            self.keyring(true)?;
        }
        Ok(())
    }

    fn keyring(&self, create: bool) -> Result<Arc<Keyring>> {
        let mut k = self.keyring.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(k) = &*k {
            return Ok(k.clone());
        }
        if !create && !self.keyring_path.exists() {
            anyhow::bail!(
                "the object's data key is wrapped by the local keyring, but there is no keyring \
                 at {} (set archive.keyring_path)",
                self.keyring_path.display()
            );
        }
        let opened = Arc::new(Keyring::open(&self.keyring_path, create)?);
        *k = Some(opened.clone());
        Ok(opened)
    }

    async fn kms(&self) -> &Kms {
        self.kms.get_or_init(|| Kms::from_env(self.timeout)).await
    }

    /// A fresh data key for an object of tenant (org, project) with context `ctx`.
    pub async fn new_key(
        &self,
        org: &str,
        project: &str,
        ctx: &EncryptionContext,
    ) -> Result<NewKey> {
        match self.cfg.key_provider {
            KeyProviderKind::Keyring => {
                let kr = self.keyring(true)?;
                let plaintext = new_data_key()?;
                let (key_id, wrapped) = kr.wrap(&plaintext, ctx)?;
                Ok(NewKey {
                    provider: Provider::Keyring,
                    key_id,
                    wrapped,
                    plaintext,
                })
            }
            KeyProviderKind::AwsKms => {
                let key = self
                    .cfg
                    .kms_key_for(org, project)
                    .context("no KMS key for this tenant and no archive.kms_key_id")?;
                let g = self.kms().await.generate(key, ctx).await?;
                Ok(NewKey {
                    provider: Provider::AwsKms,
                    key_id: g.key_id,
                    wrapped: g.wrapped,
                    plaintext: g.plaintext,
                })
            }
        }
    }

    /// The data key of an object whose header is `h` (its context already checked against the
    /// object's location).
    pub async fn unwrap(&self, h: &Header) -> Result<DataKey> {
        match h.provider {
            Provider::Keyring => {
                let kr = self.keyring(false)?;
                kr.unwrap(&h.key_id, &h.wrapped_key, &h.context)
            }
            Provider::AwsKms => {
                self.kms()
                    .await
                    .decrypt(&h.key_id, &h.wrapped_key, &h.context)
                    .await
            }
        }
    }
}
