//! The object stores behind `s3://`, `gs://` and `az://` archives, all through `object_store`
//! with our reqwest 0.12 connector (rustls + ring, `http.rs`), bounded timeouts and a few
//! retries, and each writing under a customer-managed key when one is configured for the
//! tenant (`archive.tenant_kms_key_ids`, else `archive.kms_key_id`):
//!
//! | store | credentials (the SDKs' usual sources) | the key |
//! |---|---|---|
//! | S3 | `AWS_*`, web identity (IRSA), IMDS | SSE-KMS (else the bucket's AWS-managed key) |
//! | GCS | `GOOGLE_SERVICE_ACCOUNT…`, else the metadata server (GKE Workload Identity) | CMEK: `x-goog-encryption-kms-key-name` (else the bucket's default key) |
//! | Azure | `AZURE_STORAGE_ACCOUNT_*`, workload identity (`AZURE_FEDERATED_TOKEN_FILE`), managed identity | the account's key, or the container's default encryption scope (both set in Azure) |
//!
//! Azure gets no per-object key: its encryption-scope header must be signed with the request,
//! and object_store signs before any header we can add (measured: Azurite refuses such a
//! request, AuthorizationFailure); `archive.kms_key_id` is refused for `az://` (config.rs).
//! All of it is on top of the client-side envelope encryption every object has.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use http::{HeaderMap, HeaderName, HeaderValue};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::{ClientConfigKey, ClientOptions, ObjectStore};

/// How a cloud archive's stores are built: one to read, and one writer per key.
#[derive(Clone)]
pub enum Cloud {
    S3(Box<AmazonS3Builder>),
    Gcs(Box<GoogleCloudStorageBuilder>),
    Azure(Box<MicrosoftAzureBuilder>),
}

fn retry(timeout: Duration) -> object_store::RetryConfig {
    object_store::RetryConfig {
        backoff: object_store::BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            base: 2.0,
        },
        max_retries: 3,
        retry_timeout: timeout * 3,
    }
}

/// Client options: timeouts, plain HTTP when an explicit local endpoint asks for it, and
/// `headers` on every request (the writers' key).
fn options(timeout: Duration, allow_http: bool, headers: HeaderMap) -> ClientOptions {
    let ms = format!("{}ms", timeout.as_millis());
    ClientOptions::new()
        .with_config(ClientConfigKey::Timeout, &ms)
        .with_config(ClientConfigKey::ConnectTimeout, &ms)
        .with_allow_http(allow_http)
        .with_default_headers(headers)
}

/// The first non-empty of the environment variables `keys`.
fn env_any(keys: &[&str]) -> Option<String> {
    keys.iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
}

/// `gcs_base_url` of the service account key (`GOOGLE_SERVICE_ACCOUNT_KEY`, or the file named
/// by `GOOGLE_SERVICE_ACCOUNT` / `GOOGLE_SERVICE_ACCOUNT_PATH` / `GOOGLE_APPLICATION_CREDENTIALS`).
fn gcs_base_url() -> Option<String> {
    let json = env_any(&["GOOGLE_SERVICE_ACCOUNT_KEY"]).or_else(|| {
        let path = env_any(&[
            "GOOGLE_SERVICE_ACCOUNT",
            "GOOGLE_SERVICE_ACCOUNT_PATH",
            "GOOGLE_APPLICATION_CREDENTIALS",
        ])?;
        std::fs::read_to_string(path).ok()
    })?;
    let v: serde_json::Value = serde_json::from_str(&json).ok()?;
    Some(v.get("gcs_base_url")?.as_str()?.to_string())
}

impl Cloud {
    pub fn s3(bucket: &str, timeout: Duration) -> Cloud {
        let ms = format!("{}ms", timeout.as_millis());
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_http_connector(crate::http::Reqwest012Connector { timeout })
            .with_config(AmazonS3ConfigKey::Client(ClientConfigKey::Timeout), &ms)
            .with_config(
                AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout),
                &ms,
            )
            .with_retry(retry(timeout));
        // An explicit plain-HTTP endpoint (a local S3-compatible store) is allowed as such.
        let endpoint = env_any(&["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT"]);
        if endpoint.is_some_and(|e| e.starts_with("http://")) {
            b = b.with_allow_http(true);
        }
        Cloud::S3(Box::new(b))
    }

    /// A GCS endpoint other than Google's (an emulator) comes from the service account JSON's
    /// `gcs_base_url`, as `object_store` reads it; plain HTTP is allowed for it then.
    pub fn gcs(bucket: &str, timeout: Duration) -> Cloud {
        let b = GoogleCloudStorageBuilder::from_env()
            .with_bucket_name(bucket)
            .with_http_connector(crate::http::Reqwest012Connector { timeout })
            .with_retry(retry(timeout));
        Cloud::Gcs(Box::new(b))
    }

    /// `AZURE_STORAGE_USE_EMULATOR=true` (with `AZURITE_BLOB_STORAGE_URL`) points it at Azurite.
    pub fn azure(container: &str, timeout: Duration) -> Cloud {
        let b = MicrosoftAzureBuilder::from_env()
            .with_container_name(container)
            .with_http_connector(crate::http::Reqwest012Connector { timeout })
            .with_retry(retry(timeout));
        Cloud::Azure(Box::new(b))
    }

    /// The store that reads and lists.
    pub fn reader(&self, timeout: Duration) -> Result<Arc<dyn ObjectStore>> {
        self.writer(None, timeout)
    }

    /// A store whose writes go under `key` (None: the store's default key; Azure: always).
    pub fn writer(&self, key: Option<&str>, timeout: Duration) -> Result<Arc<dyn ObjectStore>> {
        let header = |name: &'static str, key: &str| -> Result<HeaderMap> {
            let mut h = HeaderMap::new();
            h.insert(
                HeaderName::from_static(name),
                HeaderValue::from_str(key)
                    .context("the archive key is not a valid header value")?,
            );
            Ok(h)
        };
        Ok(match self {
            Cloud::S3(b) => {
                let b = match key {
                    Some(k) => (**b).clone().with_sse_kms_encryption(k),
                    None => (**b).clone().with_config(
                        "aws_server_side_encryption"
                            .parse::<AmazonS3ConfigKey>()
                            .context("S3 encryption config key")?,
                        "aws:kms",
                    ),
                };
                Arc::new(b.build().context("S3 client")?)
            }
            Cloud::Gcs(b) => {
                let headers = match key {
                    Some(k) => header("x-goog-encryption-kms-key-name", k)?,
                    None => HeaderMap::new(),
                };
                let local = gcs_base_url().is_some_and(|u| u.starts_with("http://"));
                let b = (**b)
                    .clone()
                    .with_client_options(options(timeout, local, headers));
                Arc::new(b.build().context("GCS client")?)
            }
            Cloud::Azure(b) => {
                let emulator = env_any(&["AZURE_STORAGE_USE_EMULATOR"]).as_deref() == Some("true");
                let b =
                    (**b)
                        .clone()
                        .with_client_options(options(timeout, emulator, HeaderMap::new()));
                Arc::new(b.build().context("Azure Blob client")?)
            }
        })
    }
}
