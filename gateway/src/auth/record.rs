//! The API key record: what a key may do and for whom. Shared by every key store.

use serde::{Deserialize, Serialize};

/// Scope that allows sending traces.
pub const SCOPE_TRACES_WRITE: &str = "traces:write";
/// Scope that allows sending logs (OTLP `/v1/logs`, `LogsService`).
pub const SCOPE_LOGS_WRITE: &str = "logs:write";
/// Scope that allows sending metrics.
pub const SCOPE_METRICS_WRITE: &str = "metrics:write";
/// What a new key may do unless told otherwise: every signal an OpenTelemetry SDK exports by
/// default. Keys made before logs existed keep `traces:write` alone, and send traces only.
pub const DEFAULT_SCOPES: &[&str] = &[SCOPE_TRACES_WRITE, SCOPE_LOGS_WRITE, SCOPE_METRICS_WRITE];

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default)]
pub struct KeyRecord {
    pub key_id: String,
    pub org_id: String,
    pub workspace_id: String,
    pub project_id: String,
    /// Hex of `HMAC-SHA256(pepper, secret)`; never the secret.
    pub secret_hash: String,
    pub scopes: Vec<String>,
    /// Region whose gateways may accept this key's data.
    pub region: String,
    /// AWS VPC endpoint ids the key may be used from (empty = any).
    pub allowed_vpce_ids: Vec<String>,
    /// Source CIDRs the key may be used from (empty = any).
    pub allowed_cidrs: Vec<String>,
    /// Per-project quotas carried by the key (None = unlimited).
    pub spans_per_sec: Option<u64>,
    pub bytes_per_sec: Option<u64>,
    /// Bucket size as this many milliseconds of quota (default 1000 = one second's worth).
    pub burst_ms: Option<u64>,
    /// RFC 3339; None = never expires.
    pub expires_at: Option<String>,
    pub revoked: bool,
    pub created_at: String,
    pub last_rotated_at: Option<String>,
}

impl KeyRecord {
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }

    pub fn expired_at(&self, now: chrono::DateTime<chrono::Utc>) -> bool {
        match &self.expires_at {
            None => false,
            Some(t) => match chrono::DateTime::parse_from_rfc3339(t) {
                Ok(t) => t <= now,
                // An unreadable expiry fails closed.
                Err(_) => true,
            },
        }
    }
}

/// The rule for tenant ids and names (`tracegate_pipeline::tenant`).
pub use tracegate_pipeline::tenant::validate_name;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_and_scopes() {
        let now = chrono::Utc::now();
        let mut r = KeyRecord {
            scopes: vec![SCOPE_TRACES_WRITE.into()],
            ..Default::default()
        };
        assert!(r.has_scope("traces:write") && !r.has_scope("admin"));
        assert!(!r.expired_at(now));
        r.expires_at = Some((now - chrono::Duration::seconds(1)).to_rfc3339());
        assert!(r.expired_at(now));
        r.expires_at = Some("garbage".into());
        assert!(r.expired_at(now));
    }
}
