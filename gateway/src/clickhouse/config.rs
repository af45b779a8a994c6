//! `[clickhouse]` configuration (docs/configuration.md). Present only when configured: setting
//! `clickhouse.url` (e.g. `TRACEGATE_CLICKHOUSE__URL`) turns the ClickHouse sink on.

use serde::{Deserialize, Serialize};

use crate::config::error::{zstd_level, ConfigError};

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
pub enum Engine {
    /// A single server: deduplication through `non_replicated_deduplication_window`.
    #[default]
    MergeTree,
    /// Replicated tables (production clusters; ClickHouse Cloud's SharedMergeTree behaves the
    /// same): deduplication through `replicated_deduplication_window`.
    ReplicatedMergeTree,
}

/// How insert data is compressed: ClickHouse's native compressed blocks (`decompress=1`), whose
/// method byte tells the server the codec, so either works with every ClickHouse since 2017.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum InsertCompression {
    /// zstd at `zstd_level`. At the default fast level (-3) it compresses RowBinary spans
    /// ~1.3x faster than LZ4 here, to ~3.7x (docs/benchmarks.md, writer).
    #[default]
    Zstd,
    /// LZ4, ClickHouse's own default codec.
    Lz4,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClickHouseConfig {
    /// HTTP(S) endpoint, e.g. `http://127.0.0.1:8123` or `https://…clickhouse.cloud:8443`; or
    /// several, comma-separated, all `http://` or all `https://`: the replicas of one cluster,
    /// with failover between them (endpoints.rs). `tracegate migrate` uses the first.
    pub url: String,
    /// TLS for an `https://` URL: CA, client certificate, server name.
    pub tls: super::tls::ClickHouseTls,
    pub database: String,
    pub user: String,
    pub password: String,
    /// File holding the password (a mounted secret; trailing newline ignored). Read at start-up
    /// into `password`; setting both is an error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<std::path::PathBuf>,
    /// Table engine used by `tracegate migrate` for new tables.
    pub engine: Engine,
    /// A ClickHouse cluster (`remote_servers`): `tracegate migrate` creates the schema on it
    /// (`<table>_local` replicated ON CLUSTER, `Distributed` tables under the usual names;
    /// cluster.rs), and the writer inserts into the `_local` tables. `migrate --cluster` sets
    /// it for one run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// Retention in days (partitions older than this are dropped whole); 0 = keep forever.
    /// `tracegate migrate` applies changes to existing tables.
    pub ttl_days: u32,
    /// Inserts remembered per table for deduplication (set on the tables by `tracegate migrate`).
    pub deduplication_window: u64,
    /// Send the deterministic `insert_deduplication_token` (and `insert_deduplicate=1`).
    /// `false` makes every attempt a new insert (a unique token per attempt): it exists only to
    /// show what the tokens prevent (the crash test's negative control).
    pub insert_deduplication: bool,
    /// While ClickHouse inserts are on, the embedded writer gathers a group for at least this
    /// long (ClickHouse wants about one insert per second per table, or ≥ 5 000 rows)…
    pub insert_interval_ms: u64,
    /// …and one insert carries at most this many rows…
    pub max_insert_rows: usize,
    /// …and at most this many bytes of RowBinary (a group is split into several inserts).
    pub max_insert_bytes: usize,
    /// Attribute values longer than this go to `otel_traces_payloads` whole…
    pub payload_threshold_bytes: usize,
    /// …leaving a preview of this many bytes in the span's attribute map.
    pub payload_preview_bytes: usize,
    /// Time limit of one insert (sending and waiting for ClickHouse's answer).
    pub insert_timeout_ms: u64,
    /// First retry delay after a failed insert; doubles up to `retry_max_ms`.
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
    /// Codec of the insert's native blocks.
    pub compression: InsertCompression,
    /// zstd level of insert blocks (`compression = "zstd"`): 1..=19, or -7..=-1 for zstd's
    /// fast levels.
    pub zstd_level: i32,
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            tls: Default::default(),
            database: "tracegate".into(),
            user: "default".into(),
            password: String::new(),
            password_file: None,
            engine: Engine::MergeTree,
            cluster: None,
            ttl_days: 30,
            deduplication_window: 1000,
            insert_deduplication: true,
            insert_interval_ms: 1000,
            max_insert_rows: 200_000,
            max_insert_bytes: 128 * 1024 * 1024,
            payload_threshold_bytes: 16 * 1024,
            payload_preview_bytes: 256,
            insert_timeout_ms: 120_000,
            retry_initial_ms: 100,
            retry_max_ms: 5_000,
            compression: InsertCompression::Zstd,
            zstd_level: -3,
        }
    }
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

impl ClickHouseConfig {
    /// The endpoints of `url`, in order.
    pub fn urls(&self) -> Vec<&str> {
        self.url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect()
    }

    /// A `clickhouse` client for the first endpoint (the schema, `tenant-reader`).
    pub fn client(&self) -> anyhow::Result<clickhouse::Client> {
        let first = self.urls().first().copied().unwrap_or_default();
        self.client_for(first)
    }

    /// A `clickhouse` client for endpoint `url` (TLS for `https://`), with LZ4 compression
    /// (asks for compressed answers to queries). The schema and the sink both build theirs
    /// here. Fails when a TLS file cannot be read.
    pub fn client_for(&self, url: &str) -> anyhow::Result<clickhouse::Client> {
        let mut c = super::tls::client(url, &self.tls)?
            .with_user(&self.user)
            .with_compression(clickhouse::Compression::Lz4);
        if !self.password.is_empty() {
            c = c.with_password(&self.password);
        }
        Ok(c)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let urls = self.urls();
        if urls.is_empty() {
            return Err(invalid(
                "clickhouse.url",
                "is required when the [clickhouse] section is present",
            ));
        }
        let https = urls[0].starts_with("https://");
        let scheme = if https { "https://" } else { "http://" };
        for url in &urls {
            let ok_url = url.starts_with(scheme)
                && url.len() > scheme.len()
                && http::Uri::try_from(*url).is_ok();
            if !ok_url {
                return Err(invalid(
                    "clickhouse.url",
                    "must be an http:// or https:// URL, e.g. http://127.0.0.1:8123, or several \
                     separated by commas, all with the same scheme",
                ));
            }
        }
        self.tls.validate(https)?;
        if self.database.is_empty()
            || !self
                .database
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(invalid(
                "clickhouse.database",
                "must be a non-empty name of letters, digits and '_'",
            ));
        }
        if self.user.is_empty() {
            return Err(invalid("clickhouse.user", "must not be empty"));
        }
        if let Some(c) = &self.cluster {
            let ok = !c.is_empty()
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
            if !ok {
                return Err(invalid(
                    "clickhouse.cluster",
                    "must be a cluster name of letters, digits, '_', '-' and '.'",
                ));
            }
        }
        zstd_level("clickhouse.zstd_level", self.zstd_level)?;
        for (key, v) in [
            ("clickhouse.deduplication_window", self.deduplication_window),
            ("clickhouse.max_insert_rows", self.max_insert_rows as u64),
            ("clickhouse.max_insert_bytes", self.max_insert_bytes as u64),
            ("clickhouse.insert_timeout_ms", self.insert_timeout_ms),
            ("clickhouse.retry_initial_ms", self.retry_initial_ms),
            ("clickhouse.retry_max_ms", self.retry_max_ms),
        ] {
            if v == 0 {
                return Err(invalid(key, "must be greater than 0"));
            }
        }
        if self.payload_preview_bytes > self.payload_threshold_bytes {
            return Err(invalid(
                "clickhouse.payload_preview_bytes",
                "must not exceed clickhouse.payload_threshold_bytes",
            ));
        }
        if self.retry_max_ms < self.retry_initial_ms {
            return Err(invalid(
                "clickhouse.retry_max_ms",
                "must be at least clickhouse.retry_initial_ms",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_urls_share_one_scheme() {
        let cfg = |url: &str| ClickHouseConfig {
            url: url.into(),
            ..Default::default()
        };
        let c = cfg(" https://r1:8443 , https://r2:8443,");
        c.validate().unwrap();
        assert_eq!(c.urls(), ["https://r1:8443", "https://r2:8443"]);
        for bad in [
            "http://r1:8123,https://r2:8443",
            "http://r1:8123,r2:8123",
            ",",
        ] {
            let e = cfg(bad).validate().unwrap_err().to_string();
            assert!(e.contains("clickhouse.url"), "{bad}: {e}");
        }
    }
}
