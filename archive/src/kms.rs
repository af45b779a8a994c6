//! AWS KMS as the key-encryption-key provider, through the official AWS SDK (`aws-sdk-kms`):
//! `GenerateDataKey` (AES_256) for each new object and `Decrypt` to read one, both with the
//! object's encryption context, so KMS itself refuses to unwrap a data key for another tenant or
//! group (and CloudTrail records which tenant's data was decrypted).
//!
//! Region, endpoint (`AWS_ENDPOINT_URL_KMS`) and credentials come from the SDK's usual sources
//! (`aws.rs`).

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::DataKeySpec;
use zeroize::Zeroizing;

use crate::crypto::{DataKey, EncryptionContext, DATA_KEY_LEN};

#[derive(Clone, Debug)]
pub struct Kms {
    client: aws_sdk_kms::Client,
}

/// A data key from GenerateDataKey.
pub struct GeneratedKey {
    pub plaintext: DataKey,
    pub wrapped: Vec<u8>,
    /// The key ARN KMS reports (recorded in the object header).
    pub key_id: String,
}

fn context_map(ctx: &EncryptionContext) -> HashMap<String, String> {
    ctx.0.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

impl Kms {
    /// Builds a client from the environment. `timeout` bounds one attempt; the SDK retries
    /// transient errors (3 attempts in all).
    pub async fn from_env(timeout: Duration) -> Self {
        let conf = crate::aws::sdk_config(timeout).await;
        Self {
            client: aws_sdk_kms::Client::new(&conf),
        }
    }

    pub async fn generate(&self, key_id: &str, ctx: &EncryptionContext) -> Result<GeneratedKey> {
        let out = self
            .client
            .generate_data_key()
            .key_id(key_id)
            .key_spec(DataKeySpec::Aes256)
            .set_encryption_context(Some(context_map(ctx)))
            .send()
            .await
            .map_err(|e| {
                use aws_sdk_kms::error::ProvideErrorMetadata;
                match e.code().map(str::to_string) {
                    Some(code) => anyhow::anyhow!(
                        "KMS GenerateDataKey with key {key_id} refused: {code}{}",
                        e.message().map(|m| format!(": {m}")).unwrap_or_default()
                    ),
                    None => anyhow::anyhow!(
                        "KMS GenerateDataKey with key {key_id} failed: {}",
                        aws_sdk_kms::error::DisplayErrorContext(e)
                    ),
                }
            })?;
        let pt = out
            .plaintext()
            .context("KMS GenerateDataKey returned no plaintext")?;
        if pt.as_ref().len() != DATA_KEY_LEN {
            bail!(
                "KMS GenerateDataKey returned a {}-byte key, want {DATA_KEY_LEN}",
                pt.as_ref().len()
            );
        }
        let mut plaintext = Zeroizing::new([0u8; DATA_KEY_LEN]);
        plaintext.copy_from_slice(pt.as_ref());
        let wrapped = out
            .ciphertext_blob()
            .context("KMS GenerateDataKey returned no ciphertext")?
            .as_ref()
            .to_vec();
        Ok(GeneratedKey {
            plaintext,
            wrapped,
            key_id: out.key_id().unwrap_or(key_id).to_string(),
        })
    }

    pub async fn decrypt(
        &self,
        key_id: &str,
        wrapped: &[u8],
        ctx: &EncryptionContext,
    ) -> Result<DataKey> {
        let out = self
            .client
            .decrypt()
            .key_id(key_id)
            .ciphertext_blob(Blob::new(wrapped.to_vec()))
            .set_encryption_context(Some(context_map(ctx)))
            .send()
            .await
            .map_err(|e| {
                use aws_sdk_kms::error::ProvideErrorMetadata;
                match e.code().map(str::to_string) {
                    Some(code)
                        if code == "InvalidCiphertextException"
                            || code == "IncorrectKeyException" =>
                    {
                        anyhow::anyhow!(
                            "integrity check failed: KMS refused to decrypt the data key with key \
                             {key_id} for context {ctx} ({code}: the header was modified, or the \
                             object belongs to another tenant or group)"
                        )
                    }
                    Some(code) => anyhow::anyhow!(
                        "KMS refused to decrypt the data key with key {key_id} for context {ctx} \
                         ({code}{}: the caller may not use this key, or the header was modified)",
                        e.message().map(|m| format!(": {m}")).unwrap_or_default()
                    ),
                    None => anyhow::anyhow!(
                        "KMS Decrypt with key {key_id} failed: {}",
                        aws_sdk_kms::error::DisplayErrorContext(e)
                    ),
                }
            })?;
        let pt = out
            .plaintext()
            .context("KMS Decrypt returned no plaintext")?;
        if pt.as_ref().len() != DATA_KEY_LEN {
            bail!(
                "integrity check failed: KMS returned a {}-byte data key, want {DATA_KEY_LEN}",
                pt.as_ref().len()
            );
        }
        let mut dk = Zeroizing::new([0u8; DATA_KEY_LEN]);
        dk.copy_from_slice(pt.as_ref());
        Ok(dk)
    }
}
