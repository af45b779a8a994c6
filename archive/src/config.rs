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
    /// `file:///path` or `s3://bucket/prefix` (env `TRACEGATE_ARCHIVE__URL`). Empty: the local
    /// directory `<data_dir>/archive`.
    pub url: String,
    /// Who wraps the per-object data keys: `keyring` or `aws-kms`.
    pub key_provider: KeyProviderKind,
    /// The keyring file; default `<data_dir>/archive-keyring.json` (created on first start).
    pub keyring_path: Option<PathBuf>,
    /// The deployment's KMS key (id, ARN or alias): SSE-KMS of S3 objects and, with
    /// `key_provider = "aws-kms"`, the envelope KEK of tenants without a key of their own.
    pub kms_key_id: Option<String>,
    /// Customer-managed KMS keys per tenant: `"<org>"` or `"<org>/<project>"` → key id/ARN (the
    /// project entry wins). Used for SSE-KMS and, with `aws-kms`, as the envelope KEK.
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
        self.parsed_url(data_dir)
            .map_err(|m| inv("archive.url", m))?;
        if self.timeout_ms == 0 {
            return Err(inv("archive.timeout_ms", "must be greater than 0".into()));
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
    if let Some(rest) = url.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !bucket_ok {
            return Err(format!("{url:?}: {bucket:?} is not a valid S3 bucket name"));
        }
        let prefix = prefix.trim_matches('/');
        if prefix
            .split('/')
            .any(|s| s == "." || s == ".." || (s.is_empty() && !prefix.is_empty()))
        {
            return Err(format!("{url:?}: bad prefix {prefix:?}"));
        }
        return Ok(ArchiveUrl::S3 {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
        });
    }
    Err(format!(
        "{url:?}: must be file:///path or s3://bucket/prefix"
    ))
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
