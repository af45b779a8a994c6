//! Configuration: parse (defaults → TOML file → `TRACEGATE_<SECTION>__<KEY>` env → CLI flags),
//! then validate. Unknown keys and bad values stop start-up with an error naming the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use tracegate_otlp::SpanLimits;

pub mod check;
pub mod cors;
pub mod dedup;
pub mod error;
pub mod log;
mod validate;

pub use crate::netconfig::{ProxyProtocolConfig, TlsConfig};
pub use dedup::DedupConfig;
pub use error::{zstd_level, ConfigError};
pub use log::{LogConfig, LogFormat};

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub gateway: GatewayConfig,
    pub server: ServerConfig,
    pub limits: LimitsConfig,
    pub auth: AuthConfig,
    pub tokens: TokensConfig,
    pub audit: AuditConfig,
    pub writer: WriterConfig,
    /// Retry-safe ingest: the window in which a repeated request is not stored again.
    pub dedup: DedupConfig,
    /// stderr's log format.
    pub log: LogConfig,
    /// Archive location and keys (`tracegate_archive::config`).
    pub archive: tracegate_archive::config::ArchiveConfig,
    /// Kafka transport: present → `serve` produces to Kafka; `write` consumes from it.
    pub kafka: Option<crate::kafka::config::KafkaConfig>,
    pub tls: TlsConfig,
    pub proxy_protocol: ProxyProtocolConfig,
    /// ClickHouse sink; on when `clickhouse.url` is set (see `crate::clickhouse::config`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clickhouse: Option<crate::clickhouse::config::ClickHouseConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// The region this gateway serves. Keys of another region are refused (403): data never
    /// lands in the wrong region. Keys created without `--region` get this one.
    pub region: String,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            region: "local".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    #[default]
    File,
    Postgres,
}

/// Control-plane tokens (JWT, EdDSA only) verified offline against a JWKS.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TokensConfig {
    /// JWKS source: a file path or an http(s) URL. Empty = tokens disabled.
    pub jwks: String,
    pub issuer: String,
    pub audience: String,
    /// Tokens whose `exp - iat` exceeds this are refused.
    pub max_lifetime_secs: u64,
    /// Clock skew tolerated on exp/nbf.
    pub leeway_secs: u64,
    pub refresh_interval_secs: u64,
    /// An unknown `kid` triggers a refetch at most this often.
    pub min_refetch_interval_secs: u64,
}

impl Default for TokensConfig {
    fn default() -> Self {
        Self {
            jwks: String::new(),
            issuer: String::new(),
            audience: "tracegate".into(),
            max_lifetime_secs: 3600,
            leeway_secs: 30,
            refresh_interval_secs: 300,
            min_refetch_interval_secs: 30,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// `stdout`, `file`, or `off`.
    pub sink: String,
    /// For `sink = "file"`; default `<data_dir>/audit.log`.
    pub path: Option<PathBuf>,
    /// Refused authentications are aggregated per (key id, reason) over this window.
    pub aggregate_window_ms: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            sink: "file".into(),
            path: None,
            aggregate_window_ms: 10_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub data_dir: PathBuf,
    /// How long SIGTERM waits for in-flight requests before closing connections.
    pub shutdown_timeout_ms: u64,
    /// A request body that stalls longer than this is answered 408 and its bytes released.
    pub body_timeout_ms: u64,
    /// After its first 5 s a body must average at least this many bytes per second, or it is
    /// refused (400) and its connection freed; 0 = no minimum.
    pub min_body_bytes_per_sec: u64,
    /// Open connections per OTLP listener. At the limit a new connection makes the longest-idle
    /// one close, or is refused at once when none is idle (never left in the kernel backlog):
    /// each connection holds up to ~64 KiB of HTTP/1.1 read buffer or 1 MiB of HTTP/2
    /// flow-control window, plus TLS buffers, outside `limits.max_inflight_bytes`
    /// (docs/operations.md, Memory).
    pub max_connections: usize,
    /// Open connections per client address (behind PROXY protocol: the header's address) and
    /// listener, shed the same way; 0 = no limit.
    pub max_connections_per_client: usize,
    /// From accept to the first request's complete head (PROXY header, TLS handshake, h2
    /// preface included); a connection that has not sent one by then is closed. Also hyper's
    /// HTTP/1.1 header-read timeout for later requests.
    pub request_head_timeout_ms: u64,
    /// A connection with no request in flight for this long is closed (h2: GOAWAY).
    pub idle_timeout_ms: u64,
    /// A connection older than this is closed gracefully (h2: GOAWAY); 0 = no limit.
    pub max_connection_age_ms: u64,
    /// Browser pages allowed to send spans to OTLP/HTTP (`server::cors`).
    pub cors: cors::CorsConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            grpc_addr: ([127, 0, 0, 1], 4317).into(),
            http_addr: ([127, 0, 0, 1], 4318).into(),
            admin_addr: ([127, 0, 0, 1], 8888).into(),
            data_dir: PathBuf::from("./tracegate-data"),
            shutdown_timeout_ms: 30_000,
            body_timeout_ms: 30_000,
            min_body_bytes_per_sec: 1024,
            max_connections: 4096,
            max_connections_per_client: 1024,
            request_head_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            max_connection_age_ms: 1_800_000,
            cors: cors::CorsConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Cap on one request's size after decompression (HTTP 413 / RESOURCE_EXHAUSTED).
    pub max_request_bytes: usize,
    /// Global bound on decompressed bytes of requests in flight (HTTP 503 / UNAVAILABLE over it).
    pub max_inflight_bytes: usize,
    /// One project's share of `max_inflight_bytes` (HTTP 429 / RESOURCE_EXHAUSTED + RetryInfo
    /// over it). 0: a quarter of `max_inflight_bytes`. Never less than `max_request_bytes`, so
    /// one request alone always fits its project's share.
    pub max_inflight_bytes_per_project: usize,
    /// Attributes per span, resource, scope, event and link.
    pub max_attributes: usize,
    /// Size of one attribute value (strings and bytes), counted whole, nested values included.
    pub max_attribute_value_bytes: usize,
    /// Nesting depth of AnyValue (arrays and kvlists). Values deeper than this are rejected.
    pub max_attribute_depth: usize,
    pub max_events_per_span: usize,
    pub max_links_per_span: usize,
    /// Requests decoded and validated at once; more wait their turn, oldest first. 0: one per
    /// CPU this process may run on.
    pub decode_concurrency: usize,
    /// Bytes of one project's bodies read and waiting for a decode slot before its next body
    /// waits, unread, in the socket (HTTP/1.1; 0: no bound). Keeps a burst's backlog in the
    /// clients' sockets instead of the gateway's memory (ingest/readahead.rs).
    pub read_ahead_bytes_per_project: usize,
    /// Heap made resident at start-up (0: off; at most 1 GiB and twice `max_inflight_bytes`).
    /// A burst that needs more memory than the heap has held so far otherwise pays a page
    /// fault per 4 KiB while it is behind. RSS starts near this much; the process then uses
    /// one malloc arena (docs/operations.md, Memory).
    pub prefault_bytes: usize,
}

impl LimitsConfig {
    /// `max_inflight_bytes_per_project` with 0 resolved, at least one request, at most all.
    pub fn project_inflight_limit(&self) -> usize {
        let share = match self.max_inflight_bytes_per_project {
            0 => self.max_inflight_bytes / 4,
            n => n,
        };
        share
            .max(self.max_request_bytes)
            .min(self.max_inflight_bytes)
    }

    /// `decode_concurrency` with 0 resolved to the CPUs this process may run on (its affinity
    /// mask, so a gateway pinned to one core decodes one request at a time).
    pub fn decode_slots(&self) -> usize {
        match self.decode_concurrency {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        }
    }

    /// The per-span limits the OTLP checks take (`tracegate_otlp`).
    pub fn span_limits(&self) -> SpanLimits {
        SpanLimits {
            max_attributes: self.max_attributes,
            max_attribute_value_bytes: self.max_attribute_value_bytes,
            max_attribute_depth: self.max_attribute_depth,
            max_events_per_span: self.max_events_per_span,
            max_links_per_span: self.max_links_per_span,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let span = SpanLimits::default();
        Self {
            max_request_bytes: 32 * 1024 * 1024,
            max_inflight_bytes: 256 * 1024 * 1024,
            max_inflight_bytes_per_project: 0,
            max_attributes: span.max_attributes,
            max_attribute_value_bytes: span.max_attribute_value_bytes,
            max_attribute_depth: span.max_attribute_depth,
            max_events_per_span: span.max_events_per_span,
            max_links_per_span: span.max_links_per_span,
            decode_concurrency: 0,
            read_ahead_bytes_per_project: 16 * 1024 * 1024,
            prefault_bytes: 0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// `file` (embedded default) or `postgres`.
    pub store: StoreKind,
    /// Key file of the `file` store; default `<data_dir>/keys.json`.
    pub file_path: Option<PathBuf>,
    /// How often the key file is checked for changes.
    pub file_poll_ms: u64,
    /// PostgreSQL URL of the `postgres` store (the gateway needs only a read-only role).
    pub database_url: Option<String>,
    /// File holding `database_url` (a mounted secret, e.g. with the password in it). Read at
    /// start-up; setting both is an error.
    pub database_url_file: Option<PathBuf>,
    /// Pepper as hex (e.g. from `TRACEGATE_AUTH__PEPPER`); wins over `pepper_file`.
    pub pepper: Option<String>,
    /// Pepper file; default `<data_dir>/pepper`, created on first start.
    pub pepper_file: Option<PathBuf>,
    /// Absolute time-to-live of a cached key record (not extended by reads).
    pub cache_ttl_ms: u64,
    /// Time-to-live of a cached "unknown key" answer.
    pub negative_cache_ttl_ms: u64,
    pub cache_max_keys: u64,
    /// While the store is unreachable, a record older than its TTL is still used for this long.
    pub stale_grace_ms: u64,
    /// Resource attribute keys that claim a tenant; overwritten with the authenticated tenant.
    pub tenant_attribute_keys: Vec<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            store: StoreKind::File,
            file_path: None,
            file_poll_ms: 1_000,
            database_url: None,
            database_url_file: None,
            pepper: None,
            pepper_file: None,
            cache_ttl_ms: 60_000,
            negative_cache_ttl_ms: 5_000,
            cache_max_keys: 100_000,
            stale_grace_ms: 600_000,
            tenant_attribute_keys: vec![
                "tracegate.org_id".into(),
                "tracegate.workspace_id".into(),
                "tracegate.project_id".into(),
            ],
        }
    }
}

impl Config {
    /// What opening the archive takes from this configuration (`tracegate_archive::store`).
    pub fn archive_settings(&self) -> tracegate_archive::store::Settings {
        tracegate_archive::store::Settings {
            archive: self.archive.clone(),
            data_dir: self.server.data_dir.clone(),
            compression_level: self.writer.compression_level,
        }
    }

    pub fn key_file_path(&self) -> PathBuf {
        self.auth
            .file_path
            .clone()
            .unwrap_or_else(|| self.server.data_dir.join("keys.json"))
    }
    pub fn pepper_file_path(&self) -> PathBuf {
        self.auth
            .pepper_file
            .clone()
            .unwrap_or_else(|| self.server.data_dir.join("pepper"))
    }
    pub fn audit_path(&self) -> PathBuf {
        self.audit
            .path
            .clone()
            .unwrap_or_else(|| self.server.data_dir.join("audit.log"))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WriterConfig {
    /// A group is flushed when it holds this many spans…
    pub max_batch_spans: usize,
    /// …or this many bytes…
    pub max_batch_bytes: usize,
    /// …or when its first batch has waited this long.
    pub max_wait_ms: u64,
    /// Batches waiting for the writer (their bytes are also bounded by `max_inflight_bytes`).
    pub queue_capacity: usize,
    /// zstd level of archive objects.
    pub compression_level: i32,
    /// Groups the embedded writer writes at once (compression, encryption and fsync of one
    /// group overlap with the next).
    pub max_concurrent_writes: usize,
}

impl Default for WriterConfig {
    fn default() -> Self {
        Self {
            max_batch_spans: 50_000,
            max_batch_bytes: 64 * 1024 * 1024,
            max_wait_ms: 5,
            queue_capacity: 4096,
            // Level 1: on realistic spans (random ids and values) it compresses ~5.8x at
            // ~1 GB/s, where level 3 gives ~4.4x at ~0.4 GB/s (docs/configuration.md).
            compression_level: 1,
            max_concurrent_writes: 4,
        }
    }
}

/// Command-line values that override the file and environment.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Overrides {
    pub grpc_addr: Option<SocketAddr>,
    pub http_addr: Option<SocketAddr>,
    pub admin_addr: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
}

impl Overrides {
    /// The config keys the flags given set, in the order they are merged.
    pub fn keys(&self) -> Vec<&'static str> {
        [
            ("server.grpc_addr", self.grpc_addr.is_some()),
            ("server.http_addr", self.http_addr.is_some()),
            ("server.admin_addr", self.admin_addr.is_some()),
            ("server.data_dir", self.data_dir.is_some()),
        ]
        .into_iter()
        .filter_map(|(k, given)| given.then_some(k))
        .collect()
    }

    /// `fig` with the flags given merged over it (they win over everything else).
    pub fn merge_into(&self, mut fig: Figment) -> Figment {
        if let Some(v) = self.grpc_addr {
            fig = fig.merge(("server.grpc_addr", v));
        }
        if let Some(v) = self.http_addr {
            fig = fig.merge(("server.http_addr", v));
        }
        if let Some(v) = self.admin_addr {
            fig = fig.merge(("server.admin_addr", v));
        }
        if let Some(v) = &self.data_dir {
            fig = fig.merge(("server.data_dir", v));
        }
        fig
    }
}

/// The configuration's environment variables: only `TRACEGATE_<SECTION>__<KEY>` is config;
/// other TRACEGATE_* variables (e.g. used by scripts) are not ours to refuse.
fn env() -> Env {
    Env::prefixed("TRACEGATE_")
        .filter(|k| k.as_str().contains("__"))
        .split("__")
}

impl Config {
    /// Parses defaults, the optional TOML file, `TRACEGATE_*` env vars and overrides, then
    /// validates.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        Self::load_with_env(file, overrides, env())
    }

    /// Every problem of the configuration (`tracegate validate`), not only the first.
    pub fn check(file: Option<&Path>, overrides: &Overrides) -> check::Report {
        check::check(&check::Sources {
            file,
            env: env(),
            overrides,
        })
    }

    fn load_with_env(
        file: Option<&Path>,
        overrides: &Overrides,
        env: Env,
    ) -> Result<Self, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::Parse(format!(
                    "config file {} does not exist",
                    path.display()
                )));
            }
            fig = fig.merge(Toml::file_exact(path));
            // The environment hides the file's values it overrides: check the file on its own
            // first, so a bad value there is an error, not ignored.
            Figment::from(Serialized::defaults(Config::default()))
                .merge(Toml::file_exact(path))
                .extract::<Config>()
                .map_err(|e| ConfigError::Parse(error::describe_figment(&e)))?;
        }
        fig = fig.merge(env);
        // A flag hides the value it overrides from the extraction below: check the file and the
        // environment on their own first, so a bad value there is an error, not ignored.
        if !overrides.keys().is_empty() {
            fig.extract::<Config>()
                .map_err(|e| ConfigError::Parse(error::describe_figment(&e)))?;
        }
        let fig = overrides.merge_into(fig);
        let mut cfg: Config = fig
            .extract()
            .map_err(|e| ConfigError::Parse(error::describe_figment(&e)))?;
        cfg.read_secret_files()?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads the secrets that are configured as files (`*_file` keys: a secret store mounts them)
    /// into their values, so that no secret needs to be in the config file in clear. Each value
    /// may come from the file or from its own key (file / env), not both. The pepper, the archive
    /// keyring and the TLS keys are files already (`auth.pepper_file`, `archive.keyring_path`,
    /// `tls.key_file`) and are read where they are used.
    pub fn read_secret_files(&mut self) -> Result<(), ConfigError> {
        fn read(key: &'static str, path: &Path) -> Result<String, ConfigError> {
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Invalid {
                key,
                message: format!("cannot read {}: {e}", path.display()),
            })?;
            // Secret files usually end with a newline; the secret itself does not.
            let value = text.trim_end_matches(['\n', '\r']).to_string();
            if value.is_empty() {
                return Err(ConfigError::Invalid {
                    key,
                    message: format!("{} is empty", path.display()),
                });
            }
            Ok(value)
        }
        fn both(key: &'static str, other: &str) -> ConfigError {
            ConfigError::Invalid {
                key,
                message: format!("set either {key} or {other}, not both"),
            }
        }
        if let Some(path) = &self.auth.database_url_file {
            if self.auth.database_url.is_some() {
                return Err(both("auth.database_url_file", "auth.database_url"));
            }
            self.auth.database_url = Some(read("auth.database_url_file", path)?);
        }
        if let Some(ch) = &mut self.clickhouse {
            if let Some(path) = &ch.password_file {
                if !ch.password.is_empty() {
                    return Err(both("clickhouse.password_file", "clickhouse.password"));
                }
                ch.password = read("clickhouse.password_file", path)?;
            }
        }
        if let Some(k) = &mut self.kafka {
            if let Some(path) = &k.sasl.password_file {
                if !k.sasl.password.is_empty() {
                    return Err(both("kafka.sasl.password_file", "kafka.sasl.password"));
                }
                k.sasl.password = read("kafka.sasl.password_file", path)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error `Config::load` gives for the environment as it is now (in a `figment::Jail`).
    fn load_err() -> String {
        Config::load(None, &Overrides::default())
            .unwrap_err()
            .to_string()
    }

    /// The configs shipped under deploy/ load and validate: a key renamed or a bound tightened
    /// here must not leave them broken (Helm's are embedded in values.yaml as `config: |`).
    #[test]
    fn deploy_configs_load() {
        let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
        let dir = tempfile::tempdir().unwrap();
        let mut files = vec![
            deploy.join("kubernetes/base/gateway.toml"),
            deploy.join("kubernetes/base/writer.toml"),
            deploy.join("compose/tracegate.toml"),
        ];
        let values = std::fs::read_to_string(deploy.join("helm/tracegate/values.yaml")).unwrap();
        let mut block: Option<String> = None;
        for line in values.lines().chain(std::iter::once("end:")) {
            if let Some(b) = block.as_mut() {
                if line.is_empty() || line.starts_with("    ") {
                    b.push_str(line.strip_prefix("    ").unwrap_or(line));
                    b.push('\n');
                    continue;
                }
                let path = dir.path().join(format!("helm-{}.toml", files.len()));
                std::fs::write(&path, block.take().unwrap()).unwrap();
                files.push(path);
            }
            if line == "  config: |" {
                block = Some(String::new());
            }
        }
        assert_eq!(files.len(), 5, "two configs in values.yaml");
        // Parse and validate only: `load_with_env` also reads the mounted secret files, which
        // exist only in the pod.
        for f in &files {
            let cfg: Config = Figment::from(Serialized::defaults(Config::default()))
                .merge(Toml::file_exact(f))
                .extract()
                .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            cfg.validate()
                .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        }
    }

    /// An env provider that sees no variables, so tests do not depend on the caller's env.
    fn no_env() -> Env {
        Env::prefixed("TRACEGATE_UNIT_TEST_NOTHING_").split("__")
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail dictates the closure type
    fn env_vars_override_and_unknown_env_keys_are_named() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("TRACEGATE_LIMITS__MAX_ATTRIBUTES", "7");
            jail.set_env("TRACEGATE_TEST_TIMEOUT", "9"); // not `<SECTION>__<KEY>`: not ours
            let c = Config::load(None, &Overrides::default()).unwrap();
            assert_eq!(c.limits.max_attributes, 7);
            jail.set_env("TRACEGATE_LIMITS__NOPE", "7");
            let err = load_err();
            assert!(err.contains("nope"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn a_bad_value_hidden_by_a_flag_is_still_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "[server]\nhttp_addr = \"bogus\"\n").unwrap();
        let flag = Overrides {
            http_addr: Some(([127, 0, 0, 1], 0).into()),
            ..Default::default()
        };
        let err = Config::load_with_env(Some(&p), &flag, no_env())
            .unwrap_err()
            .to_string();
        assert!(err.contains("c.toml:2:1: `server.http_addr`"), "{err}");
        std::fs::write(&p, "[server]\nhttp_addr = \"127.0.0.1:9\"\n").unwrap();
        let c = Config::load_with_env(Some(&p), &flag, no_env()).unwrap();
        assert_eq!(c.server.http_addr.port(), 0, "the flag wins");
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail dictates the closure type
    fn a_bad_value_in_the_file_hidden_by_the_environment_is_still_an_error() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("c.toml", "[server]\nhttp_addr = \"bogus\"\n")?;
            jail.set_env("TRACEGATE_SERVER__HTTP_ADDR", "127.0.0.1:9");
            let p = jail.directory().join("c.toml");
            let err = Config::load(Some(&p), &Overrides::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains("c.toml:2:1: `server.http_addr`"), "{err}");
            jail.create_file("c.toml", "[server]\nhttp_addr = \"127.0.0.1:8\"\n")?;
            let c = Config::load(Some(&p), &Overrides::default()).unwrap();
            assert_eq!(c.server.http_addr.port(), 9, "the environment wins");
            Ok(())
        });
    }

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn unknown_key_in_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "[limits]\nmax_atributes = 3\n").unwrap();
        let err = Config::load_with_env(Some(&p), &Overrides::default(), no_env())
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_atributes"), "{err}");
    }

    #[test]
    fn wrong_type_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "[server]\nhttp_addr = \"not an address\"\n").unwrap();
        let err = Config::load_with_env(Some(&p), &Overrides::default(), no_env())
            .unwrap_err()
            .to_string();
        assert!(err.contains("http_addr"), "{err}");
    }

    #[test]
    fn invalid_relation_names_key() {
        let mut c = Config::default();
        c.limits.max_inflight_bytes = 1;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("limits.max_inflight_bytes"), "{err}");
    }

    #[test]
    fn decode_concurrency_defaults_to_the_cpus_and_is_bounded() {
        let mut c = Config::default();
        let cpus = std::thread::available_parallelism().unwrap().get();
        assert_eq!(c.limits.decode_slots(), cpus);
        c.limits.decode_concurrency = 3;
        assert_eq!(c.limits.decode_slots(), 3);
        c.validate().unwrap();
        c.limits.decode_concurrency = 5000;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("limits.decode_concurrency"), "{err}");
    }

    #[test]
    fn prefault_is_bounded_by_what_requests_in_flight_can_use() {
        let mut c = Config::default();
        assert_eq!(c.limits.prefault_bytes, 0);
        c.limits.prefault_bytes = 2 * c.limits.max_inflight_bytes;
        c.validate().unwrap();
        c.limits.prefault_bytes += 1;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("limits.prefault_bytes"), "{err}");
        c.limits.max_inflight_bytes = 4 << 30;
        c.limits.prefault_bytes = (1 << 30) + 1;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("limits.prefault_bytes"), "{err}");
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail dictates the closure type
    fn writer_compression_level_takes_zstd_fast_levels() {
        figment::Jail::expect_with(|jail| {
            assert_eq!(
                Config::load(None, &Overrides::default())
                    .unwrap()
                    .writer
                    .compression_level,
                1
            );
            jail.set_env("TRACEGATE_WRITER__COMPRESSION_LEVEL", "-3");
            let c = Config::load(None, &Overrides::default()).unwrap();
            assert_eq!(c.writer.compression_level, -3);
            for bad in ["0", "-8", "20"] {
                jail.set_env("TRACEGATE_WRITER__COMPRESSION_LEVEL", bad);
                let err = load_err();
                assert!(err.contains("writer.compression_level"), "{bad}: {err}");
            }
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail dictates the closure type
    fn clickhouse_section_from_env_and_errors_name_keys() {
        figment::Jail::expect_with(|jail| {
            assert!(Config::load(None, &Overrides::default())
                .unwrap()
                .clickhouse
                .is_none());
            jail.set_env("TRACEGATE_CLICKHOUSE__URL", "http://127.0.0.1:8123");
            jail.set_env("TRACEGATE_CLICKHOUSE__PASSWORD", "pw");
            let c = Config::load(None, &Overrides::default()).unwrap();
            let ch = c.clickhouse.unwrap();
            assert_eq!(ch.password, "pw");
            assert_eq!(ch.database, "tracegate");
            jail.set_env("TRACEGATE_CLICKHOUSE__URL", "ftp://x");
            let err = load_err();
            assert!(err.contains("clickhouse.url"), "{err}");
            jail.set_env("TRACEGATE_CLICKHOUSE__URL", "http://127.0.0.1:8123");
            jail.set_env("TRACEGATE_CLICKHOUSE__DATABASE", "bad-name");
            let err = load_err();
            assert!(err.contains("clickhouse.database"), "{err}");
            jail.set_env("TRACEGATE_CLICKHOUSE__DATABASE", "ok");
            // Insert blocks: zstd at a fast level unless told otherwise; levels are checked.
            let codec = || {
                let ch = Config::load(None, &Overrides::default())
                    .unwrap()
                    .clickhouse;
                crate::clickhouse::sink::codec(&ch.unwrap())
            };
            assert_eq!(codec(), clickhouse::Compression::Zstd(-3));
            jail.set_env("TRACEGATE_CLICKHOUSE__COMPRESSION", "lz4");
            assert_eq!(codec(), clickhouse::Compression::Lz4);
            jail.set_env("TRACEGATE_CLICKHOUSE__ZSTD_LEVEL", "0");
            let err = load_err();
            assert!(err.contains("clickhouse.zstd_level"), "{err}");
            jail.set_env("TRACEGATE_CLICKHOUSE__ZSTD_LEVEL", "-1");
            jail.set_env("TRACEGATE_CLICKHOUSE__MAX_INSERT_ROWZ", "1");
            let err = load_err();
            assert!(err.contains("max_insert_rowz"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn secrets_are_read_from_files_and_conflicts_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let dsn = dir.path().join("dsn");
        let pw = dir.path().join("ch-password");
        std::fs::write(&dsn, "postgres://reader:s3cr%40t@db:5432/keys\n").unwrap();
        std::fs::write(&pw, "ch pass word\r\n").unwrap();
        let p = dir.path().join("c.toml");
        let toml = format!(
            "[auth]\nstore = \"postgres\"\ndatabase_url_file = {:?}\n\
             [clickhouse]\nurl = \"http://127.0.0.1:8123\"\npassword_file = {:?}\n",
            dsn.display().to_string(),
            pw.display().to_string()
        );
        std::fs::write(&p, &toml).unwrap();
        let c = Config::load_with_env(Some(&p), &Overrides::default(), no_env()).unwrap();
        // Only the trailing newline is dropped; inner spaces belong to the secret.
        assert_eq!(
            c.auth.database_url.as_deref(),
            Some("postgres://reader:s3cr%40t@db:5432/keys")
        );
        assert_eq!(c.clickhouse.as_ref().unwrap().password, "ch pass word");

        // A secret given both ways is refused, naming the key.
        std::fs::write(&p, format!("{toml}password = \"inline\"\n")).unwrap();
        let err = Config::load_with_env(Some(&p), &Overrides::default(), no_env())
            .unwrap_err()
            .to_string();
        assert!(err.contains("clickhouse.password_file"), "{err}");
        let both = toml.replace(
            "store = \"postgres\"\n",
            "store = \"postgres\"\ndatabase_url = \"postgres://x@y/z\"\n",
        );
        std::fs::write(&p, both).unwrap();
        let err = Config::load_with_env(Some(&p), &Overrides::default(), no_env())
            .unwrap_err()
            .to_string();
        assert!(err.contains("auth.database_url_file"), "{err}");

        // A missing or empty file stops start-up, naming the key.
        std::fs::remove_file(&dsn).unwrap();
        std::fs::write(&p, &toml).unwrap();
        let err = Config::load_with_env(Some(&p), &Overrides::default(), no_env())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("auth.database_url_file") && err.contains("cannot read"),
            "{err}"
        );
        std::fs::write(&dsn, "\n").unwrap();
        let err = Config::load_with_env(Some(&p), &Overrides::default(), no_env())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("auth.database_url_file") && err.contains("empty"),
            "{err}"
        );
    }

    #[test]
    fn overrides_win() {
        let o = Overrides {
            http_addr: Some("127.0.0.1:9999".parse().unwrap()),
            ..Default::default()
        };
        let c = Config::load_with_env(None, &o, no_env()).unwrap();
        assert_eq!(c.server.http_addr.port(), 9999);
    }
}
