//! `[archive]`: where archive objects go and which keys protect them (docs/configuration.md).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracegate_pipeline::tenant::validate_name;

/// A setting of `[archive]` that cannot work; the gateway reports it as its own configuration
/// error, naming `key`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct InvalidSetting {
    pub key: &'static str,
    pub message: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
pub enum KeyProviderKind {
    /// Local keyring file (embedded default).
    #[default]
    #[serde(rename = "keyring")]
    Keyring,
    /// AWS KMS GenerateDataKey / Decrypt.
    #[serde(rename = "aws-kms")]
    AwsKms,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ArchiveConfig {
    /// `file:///path`, `s3://bucket/prefix`, `gs://bucket/prefix` (Google Cloud Storage) or
    /// `az://container/prefix` (Azure Blob Storage) (env `TRACEGATE_ARCHIVE__URL`). Empty: the
    /// local directory `<data_dir>/archive`.
    pub url: String,
    /// Who wraps the per-object data keys: `keyring` or `aws-kms`.
    pub key_provider: KeyProviderKind,
    /// The keyring file; default `<data_dir>/archive-keyring.json` (created on first start).
    pub keyring_path: Option<PathBuf>,
    /// The deployment's customer-managed key, as the store names it: on S3 an AWS KMS key (id,
    /// ARN or alias) for SSE-KMS and, with `key_provider = "aws-kms"`, the envelope KEK of
    /// tenants without a key of their own; on GCS a Cloud KMS key name (CMEK,
    /// `projects/…/locations/…/keyRings/…/cryptoKeys/…`). Not for Azure, whose customer-managed
    /// keys are set on the account or as the container's default encryption scope.
    pub kms_key_id: Option<String>,
    /// Customer-managed keys per tenant: `"<org>"` or `"<org>/<project>"` → a key as above (the
    /// project entry wins).
    pub tenant_kms_key_ids: BTreeMap<String, String>,
    /// Bound on one S3 or KMS request attempt (a few retries follow within 3× this).
    pub timeout_ms: u64,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            key_provider: KeyProviderKind::Keyring,
            keyring_path: None,
            kms_key_id: None,
            tenant_kms_key_ids: BTreeMap::new(),
            timeout_ms: 10_000,
        }
    }
}

/// A parsed `archive.url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArchiveUrl {
    Local(PathBuf),
    S3 { bucket: String, prefix: String },
    Gcs { bucket: String, prefix: String },
    Azure { container: String, prefix: String },
}

impl ArchiveConfig {
    pub fn keyring_path(&self, data_dir: &Path) -> PathBuf {
        self.keyring_path
            .clone()
            .unwrap_or_else(|| data_dir.join("archive-keyring.json"))
    }

    pub fn parsed_url(&self, data_dir: &Path) -> Result<ArchiveUrl, String> {
        parse_url(&self.url, data_dir)
    }

    /// The KMS key for a tenant: its own (project, then org), else the deployment's.
    pub fn kms_key_for(&self, org: &str, project: &str) -> Option<&str> {
        self.tenant_kms_key_ids
            .get(&format!("{org}/{project}"))
            .or_else(|| self.tenant_kms_key_ids.get(org))
            .or(self.kms_key_id.as_ref())
            .map(String::as_str)
    }

    pub fn validate(&self, data_dir: &Path) -> Result<(), InvalidSetting> {
        let inv = |key: &'static str, message: String| InvalidSetting { key, message };
        if self.timeout_ms == 0 {
            return Err(inv("archive.timeout_ms", "must be greater than 0".into()));
        }
        let url = self
            .parsed_url(data_dir)
            .map_err(|m| inv("archive.url", m))?;
        if self.key_provider == KeyProviderKind::AwsKms
            && matches!(url, ArchiveUrl::Gcs { .. } | ArchiveUrl::Azure { .. })
        {
            return Err(inv(
                "archive.key_provider",
                "\"aws-kms\" goes with s3:// or file:// archives: on gs:// the keys of \
                 archive.kms_key_id / tenant_kms_key_ids are Cloud KMS keys (CMEK), and on \
                 gs:// and az:// the envelope keys come from the keyring"
                    .into(),
            ));
        }
        let keyed = self.kms_key_id.is_some() || !self.tenant_kms_key_ids.is_empty();
        if keyed && matches!(url, ArchiveUrl::Azure { .. }) {
            return Err(inv(
                "archive.kms_key_id",
                "is not used with az:// archives: set the customer-managed key on the storage \
                 account, or make an encryption scope the container's default (overrides \
                 denied); every object is also envelope-encrypted by tracegate"
                    .into(),
            ));
        }
        if self.key_provider == KeyProviderKind::AwsKms && self.kms_key_id.is_none() {
            return Err(inv(
                "archive.kms_key_id",
                "is required when archive.key_provider = \"aws-kms\" (the key of tenants \
                 without one in archive.tenant_kms_key_ids)"
                    .into(),
            ));
        }
        if matches!(&self.kms_key_id, Some(k) if k.trim().is_empty()) {
            return Err(inv("archive.kms_key_id", "must not be empty".into()));
        }
        for (tenant, key) in &self.tenant_kms_key_ids {
            let ok = match tenant.split_once('/') {
                Some((o, p)) => {
                    validate_name("org", o).is_ok() && validate_name("project", p).is_ok()
                }
                None => validate_name("org", tenant).is_ok(),
            };
            if !ok || key.trim().is_empty() {
                return Err(inv(
                    "archive.tenant_kms_key_ids",
                    format!(
                        "entry {tenant:?}: keys are \"<org>\" or \"<org>/<project>\", values \
                         non-empty KMS key ids"
                    ),
                ));
            }
        }
        Ok(())
    }
}

fn parse_url(url: &str, data_dir: &Path) -> Result<ArchiveUrl, String> {
    let url = url.trim();
    if url.is_empty() {
        return Ok(ArchiveUrl::Local(data_dir.join("archive")));
    }
    if let Some(path) = url.strip_prefix("file://") {
        if !path.starts_with('/') {
            return Err(format!(
                "{url:?}: a file URL needs an absolute path (file:///var/lib/tracegate/archive)"
            ));
        }
        return Ok(ArchiveUrl::Local(PathBuf::from(path)));
    }
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    if !matches!(scheme, "s3" | "gs" | "az") {
        return Err(format!(
            "{url:?}: must be file:///path, s3://bucket/prefix, gs://bucket/prefix or \
             az://container/prefix"
        ));
    }
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    // S3 and GCS bucket names: 3-63 of [a-z0-9.-] (GCS allows '_' too); Azure containers:
    // 3-63 of [a-z0-9-].
    let allowed = |b: u8| {
        b.is_ascii_lowercase()
            || b.is_ascii_digit()
            || b == b'-'
            || (b == b'.' && scheme != "az")
            || (b == b'_' && scheme == "gs")
    };
    let bucket_ok = (3..=63).contains(&bucket.len()) && bucket.bytes().all(allowed);
    if !bucket_ok {
        let what = if scheme == "az" {
            "Azure container"
        } else {
            "bucket"
        };
        return Err(format!("{url:?}: {bucket:?} is not a valid {what} name"));
    }
    let prefix = prefix.trim_matches('/');
    if prefix
        .split('/')
        .any(|s| s == "." || s == ".." || (s.is_empty() && !prefix.is_empty()))
    {
        return Err(format!("{url:?}: bad prefix {prefix:?}"));
    }
    let (bucket, prefix) = (bucket.to_string(), prefix.to_string());
    Ok(match scheme {
        "s3" => ArchiveUrl::S3 { bucket, prefix },
        "gs" => ArchiveUrl::Gcs { bucket, prefix },
        _ => ArchiveUrl::Azure {
            container: bucket,
            prefix,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let d = Path::new("/data");
        assert_eq!(
            parse_url("", d).unwrap(),
            ArchiveUrl::Local("/data/archive".into())
        );
        assert_eq!(
            parse_url("file:///x/y", d).unwrap(),
            ArchiveUrl::Local("/x/y".into())
        );
        assert_eq!(
            parse_url("s3://my-bucket/a/b/", d).unwrap(),
            ArchiveUrl::S3 {
                bucket: "my-bucket".into(),
                prefix: "a/b".into()
            }
        );
        assert_eq!(
            parse_url("s3://my-bucket", d).unwrap(),
            ArchiveUrl::S3 {
                bucket: "my-bucket".into(),
                prefix: "".into()
            }
        );
        assert!(parse_url("s3://B/x", d).is_err());
        assert!(parse_url("s3://bucket/a/../b", d).is_err());
        assert!(parse_url("file://rel", d).is_err());
        assert!(parse_url("gs://x", d).is_err());
        assert_eq!(
            parse_url("gs://my_bucket/t", d).unwrap(),
            ArchiveUrl::Gcs {
                bucket: "my_bucket".into(),
                prefix: "t".into()
            }
        );
        assert_eq!(
            parse_url("az://archive/traces/eu", d).unwrap(),
            ArchiveUrl::Azure {
                container: "archive".into(),
                prefix: "traces/eu".into()
            }
        );
        assert!(parse_url("az://my.container", d).is_err());
        assert!(parse_url("ftp://bucket", d).is_err());
    }

    #[test]
    fn cloud_keys_fit_their_store() {
        let d = Path::new("/d");
        let c = |url: &str, provider, key: Option<&str>| ArchiveConfig {
            url: url.into(),
            key_provider: provider,
            kms_key_id: key.map(str::to_string),
            ..Default::default()
        };
        let cmek = "projects/p/locations/l/keyRings/r/cryptoKeys/k";
        c("gs://b-1/x", KeyProviderKind::Keyring, Some(cmek))
            .validate(d)
            .unwrap();
        c("az://archive/x", KeyProviderKind::Keyring, None)
            .validate(d)
            .unwrap();
        let e = c("az://archive/x", KeyProviderKind::Keyring, Some("scope"))
            .validate(d)
            .unwrap_err();
        assert_eq!(e.key, "archive.kms_key_id");
        for url in ["gs://b-1/x", "az://archive/x"] {
            let e = c(url, KeyProviderKind::AwsKms, Some("k"))
                .validate(d)
                .unwrap_err();
            assert_eq!(e.key, "archive.key_provider", "{url}");
        }
    }

    #[test]
    fn tenant_key_precedence_and_validation() {
        let mut c = ArchiveConfig {
            kms_key_id: Some("deploy".into()),
            ..Default::default()
        };
        c.tenant_kms_key_ids.insert("acme".into(), "org-key".into());
        c.tenant_kms_key_ids
            .insert("acme/prod".into(), "proj-key".into());
        assert_eq!(c.kms_key_for("acme", "prod"), Some("proj-key"));
        assert_eq!(c.kms_key_for("acme", "dev"), Some("org-key"));
        assert_eq!(c.kms_key_for("other", "x"), Some("deploy"));
        c.validate(Path::new("/d")).unwrap();
        c.tenant_kms_key_ids.insert("a/b/c".into(), "k".into());
        let e = c.validate(Path::new("/d")).unwrap_err().to_string();
        assert!(e.contains("archive.tenant_kms_key_ids"), "{e}");
        let c = ArchiveConfig {
            key_provider: KeyProviderKind::AwsKms,
            ..Default::default()
        };
        let e = c.validate(Path::new("/d")).unwrap_err().to_string();
        assert!(e.contains("archive.kms_key_id"), "{e}");
    }
}
