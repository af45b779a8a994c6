//! `[dedup]`: retry-safe ingest (docs/architecture.md, "Duplicates"). Both writers read it: the
//! Kafka writer per partition, the embedded writer for its queue.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ConfigError;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DedupConfig {
    /// A request that repeats one of the same tenant stored less than this long before (by the
    /// gateways' receive times) is acknowledged and not stored again. 0 turns it off: every
    /// copy is stored. Longer than any exporter's retry budget (the OTel Collector's
    /// exporters give up after 5 minutes, the SDKs sooner).
    pub window_secs: u64,
    /// Memory for the window, per writer process (`tracegate_pipeline::dedup::ENTRY_BYTES`
    /// per request remembered). Over it requests are forgotten early
    /// (`tracegate_dedup_evicted_early_total`), which shortens the window: the oldest of the
    /// tenant remembered most, so a tenant that floods the window shortens its own, never
    /// that of a tenant holding less than an equal share.
    pub max_bytes: usize,
}

impl Default for DedupConfig {
    fn default() -> Self {
        Self {
            window_secs: 900,
            // 256 MiB / 112 B: 2.4 M requests, i.e. 2 600 requests/s per writer for 15 minutes.
            max_bytes: 256 * 1024 * 1024,
        }
    }
}

impl DedupConfig {
    /// The window, or None when retry-safe ingest is off.
    pub fn window(&self) -> Option<Duration> {
        (self.window_secs > 0).then(|| Duration::from_secs(self.window_secs))
    }

    /// Requests the window may hold.
    pub fn max_entries(&self) -> usize {
        (self.max_bytes / tracegate_pipeline::dedup::ENTRY_BYTES).max(1)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.window_secs > 7 * 24 * 3600 {
            return Err(ConfigError::Invalid {
                key: "dedup.window_secs",
                message: format!("{} is over a week", self.window_secs),
            });
        }
        if self.window_secs > 0 && self.max_bytes < 1024 * 1024 {
            return Err(ConfigError::Invalid {
                key: "dedup.max_bytes",
                message: format!(
                    "{} is under 1 MiB: the window would forget requests within seconds",
                    self.max_bytes
                ),
            });
        }
        Ok(())
    }
}
