//! Key lifecycle (create, list, revoke, rotate) on any store, with audit events. The secret is
//! generated here, returned once, and only its keyed hash is stored.

use std::sync::Arc;

use anyhow::{bail, Result};
use serde_json::json;

use super::key::ApiKey;
use super::pepper::Pepper;
use super::record::{validate_name, KeyRecord, DEFAULT_SCOPES};
use super::store::KeyStore;
use crate::audit::Audit;

pub const DEFAULT_ORG: &str = "default";

/// What `keys create` asks for.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub org_id: String,
    pub workspace_id: String,
    pub project_id: String,
    pub region: String,
    pub scopes: Vec<String>,
    pub spans_per_sec: Option<u64>,
    pub bytes_per_sec: Option<u64>,
    pub burst_ms: Option<u64>,
    pub allowed_vpce_ids: Vec<String>,
    pub allowed_cidrs: Vec<String>,
    pub expires_in: Option<chrono::Duration>,
}

impl NewKey {
    pub fn for_project(project: &str, region: &str) -> Self {
        Self {
            org_id: DEFAULT_ORG.into(),
            workspace_id: "default".into(),
            project_id: project.into(),
            region: region.into(),
            scopes: DEFAULT_SCOPES.iter().map(|s| s.to_string()).collect(),
            spans_per_sec: None,
            bytes_per_sec: None,
            burst_ms: None,
            allowed_vpce_ids: vec![],
            allowed_cidrs: vec![],
            expires_in: None,
        }
    }
}

pub struct KeyService {
    pub store: Arc<dyn KeyStore>,
    pub pepper: Pepper,
    pub audit: Audit,
}

impl KeyService {
    pub async fn create(&self, spec: NewKey) -> Result<(KeyRecord, String)> {
        validate_name("project", &spec.project_id)?;
        validate_name("org", &spec.org_id)?;
        validate_name("workspace", &spec.workspace_id)?;
        validate_name("region", &spec.region)?;
        if spec.scopes.is_empty() {
            bail!("a key needs at least one scope");
        }
        for c in &spec.allowed_cidrs {
            c.parse::<ipnet::IpNet>()
                .map_err(|e| anyhow::anyhow!("bad CIDR {c:?}: {e}"))?;
        }
        for v in &spec.allowed_vpce_ids {
            if !v.starts_with("vpce-") || !v[5..].bytes().all(|b| b.is_ascii_alphanumeric()) {
                bail!("bad VPC endpoint id {v:?} (expected vpce-<alphanumerics>)");
            }
        }
        let (key, text) = ApiKey::generate();
        let now = chrono::Utc::now();
        let record = KeyRecord {
            key_id: key.key_id.clone(),
            org_id: spec.org_id,
            workspace_id: spec.workspace_id,
            project_id: spec.project_id,
            secret_hash: hex::encode(key.hash(self.pepper.bytes())),
            scopes: spec.scopes,
            region: spec.region,
            allowed_vpce_ids: spec.allowed_vpce_ids,
            allowed_cidrs: spec.allowed_cidrs,
            spans_per_sec: spec.spans_per_sec,
            bytes_per_sec: spec.bytes_per_sec,
            burst_ms: spec.burst_ms,
            expires_at: spec.expires_in.map(|d| (now + d).to_rfc3339()),
            revoked: false,
            created_at: now.to_rfc3339(),
            last_rotated_at: None,
        };
        self.store.insert(record.clone()).await?;
        self.audit.event(
            "key.created",
            json!({"key_id": record.key_id, "org_id": record.org_id, "project_id": record.project_id,
                   "region": record.region, "scopes": record.scopes, "store": self.store.kind()}),
        );
        Ok((record, text))
    }

    pub async fn list(&self) -> Result<Vec<KeyRecord>> {
        self.store.list().await
    }

    async fn existing(&self, key_id: &str) -> Result<KeyRecord> {
        match self.store.get(key_id).await? {
            Some(r) => Ok(r),
            None => bail!("no key with id {key_id}"),
        }
    }

    pub async fn revoke(&self, key_id: &str) -> Result<KeyRecord> {
        let mut r = self.existing(key_id).await?;
        r.revoked = true;
        self.store.update(r.clone()).await?;
        self.audit.event(
            "key.revoked",
            json!({"key_id": r.key_id, "project_id": r.project_id, "store": self.store.kind()}),
        );
        Ok(r)
    }

    /// New secret for the same key id; the old secret stops working at once.
    pub async fn rotate(&self, key_id: &str) -> Result<(KeyRecord, String)> {
        let mut r = self.existing(key_id).await?;
        if r.revoked {
            bail!("key {key_id} is revoked; create a new one");
        }
        let text = ApiKey::regenerate(key_id)?;
        let key = ApiKey::parse(&text)?;
        r.secret_hash = hex::encode(key.hash(self.pepper.bytes()));
        r.last_rotated_at = Some(chrono::Utc::now().to_rfc3339());
        self.store.update(r.clone()).await?;
        self.audit.event(
            "key.rotated",
            json!({"key_id": r.key_id, "project_id": r.project_id, "store": self.store.kind()}),
        );
        Ok((r, text))
    }
}
