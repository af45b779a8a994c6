//! Command line: `serve` (the default), `keys …`, `archive ls|cat|replay|rotate-key|keys`,
//! `migrate`.

use std::io::Write;
use std::net::SocketAddr;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use std::sync::Arc;

use crate::audit::Audit;
use crate::auth::file_store::FileKeyStore;
use crate::auth::record::KeyRecord;
use crate::auth::service::{KeyService, NewKey};
use crate::config::{Config, Overrides};

pub mod common;
pub use common::CommonArgs;

#[derive(Parser, Debug)]
#[command(
    name = "tracegate",
    version,
    about = "OpenTelemetry trace ingestion gateway"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the gateway (the default when no command is given).
    Serve(ServeArgs),
    /// Manage API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Read the archive.
    Archive {
        #[command(subcommand)]
        command: ArchiveCommand,
    },
    /// Create or upgrade the ClickHouse schema (`[clickhouse]` config; idempotent, versioned).
    Migrate(MigrateArgs),
    /// Run the Kafka consumer-group writer (needs a `[kafka]` section).
    Write(WriteArgs),
    /// Check a configuration (file, `TRACEGATE_*` environment, flags) without running
    /// anything: lists every problem (exit 2), and the keys set in more than one place.
    Validate(CommonArgs),
}

/// `tracegate validate`: every problem on stderr, one per line; the keys set twice and the
/// verdict on stdout. Returns whether the configuration is valid (the exit code: 0 or 2).
pub fn validate(args: &CommonArgs, out: &mut impl Write) -> Result<bool> {
    let overrides = Overrides {
        data_dir: args.data_dir.clone(),
        ..Default::default()
    };
    let report = Config::check(args.config.as_deref(), &overrides);
    for line in &report.overridden {
        writeln!(out, "note: {line}")?;
    }
    let source = args
        .config
        .as_ref()
        .map_or("defaults and environment".to_string(), |p| {
            p.display().to_string()
        });
    if report.problems.is_empty() {
        writeln!(out, "{source}: the configuration is valid")?;
        return Ok(true);
    }
    let mut err = std::io::stderr().lock();
    for line in &report.problems {
        writeln!(err, "error: {line}")?;
    }
    let n = report.problems.len();
    writeln!(
        out,
        "{source}: {n} problem{}",
        if n == 1 { "" } else { "s" }
    )?;
    Ok(false)
}

#[derive(Args, Debug, Default)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Create the schema on this ClickHouse cluster: replicated `<table>_local` tables ON
    /// CLUSTER and `Distributed` tables under the usual names (overrides clickhouse.cluster).
    #[arg(long, value_name = "NAME")]
    pub cluster: Option<String>,
    #[command(subcommand)]
    pub command: Option<MigrateCommand>,
}

#[derive(Subcommand, Debug)]
pub enum MigrateCommand {
    /// Create a ClickHouse role that reads only one tenant's rows of every tracegate table
    /// (row policies on OrgId/ProjectId), and optionally a user with only that role. The
    /// configured ClickHouse user needs ACCESS MANAGEMENT. Idempotent.
    TenantReader {
        /// Organization of the tenant.
        #[arg(long)]
        org: String,
        /// Project of the tenant.
        #[arg(long)]
        project: String,
        /// Also create this ClickHouse user, holding only the tenant's role.
        #[arg(long, requires = "password_file")]
        user: Option<String>,
        /// File holding the new user's password (a trailing newline is ignored).
        #[arg(long, value_name = "FILE")]
        password_file: Option<std::path::PathBuf>,
    },
}

impl MigrateArgs {
    /// `tracegate migrate [tenant-reader …]`.
    pub async fn run(self, out: &mut impl Write) -> Result<()> {
        let mut cfg = self.common.load()?;
        if let (Some(name), Some(ch)) = (self.cluster, cfg.clickhouse.as_mut()) {
            ch.cluster = Some(name);
            ch.validate()?;
        }
        let Some(MigrateCommand::TenantReader {
            org,
            project,
            user,
            password_file,
        }) = self.command
        else {
            return crate::clickhouse::schema::migrate_command(&cfg, out).await;
        };
        let ch = cfg.clickhouse.as_ref().context(
            "tracegate migrate needs a [clickhouse] section (clickhouse.url, e.g. TRACEGATE_CLICKHOUSE__URL)",
        )?;
        let password = match &password_file {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read {}", p.display()))?
                    .trim_end_matches(['\n', '\r'])
                    .to_string(),
            ),
            None => None,
        };
        let t = crate::clickhouse::tenant_access::TenantReader {
            org,
            project,
            user: user.clone(),
            password,
        };
        let role = crate::clickhouse::tenant_access::create(ch, &t).await?;
        writeln!(out, "role: {role}")?;
        if let Some(u) = user {
            writeln!(out, "user: {u}")?;
        }
        Ok(())
    }
}

#[derive(Args, Debug, Default)]
pub struct WriteArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Admin listen address (/metrics, /healthz, /readyz) [default: kafka.writer_admin_addr].
    #[arg(long)]
    pub admin_addr: Option<SocketAddr>,
}

impl WriteArgs {
    pub fn load(&self) -> Result<Config> {
        let mut cfg = self.common.load()?;
        let Some(k) = cfg.kafka.as_mut() else {
            anyhow::bail!(
                "configuration error: `kafka`: tracegate write needs a [kafka] section \
                 (kafka.brokers, kafka.topic; env TRACEGATE_KAFKA__BROKERS)"
            );
        };
        if let Some(a) = self.admin_addr {
            k.writer_admin_addr = a;
        }
        Ok(cfg)
    }
}

#[derive(Args, Debug, Default)]
pub struct ServeArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// OTLP/gRPC listen address [default: 127.0.0.1:4317].
    #[arg(long)]
    pub grpc_addr: Option<SocketAddr>,
    /// OTLP/HTTP listen address [default: 127.0.0.1:4318].
    #[arg(long)]
    pub http_addr: Option<SocketAddr>,
    /// Admin listen address (/metrics, /healthz, /readyz) [default: 127.0.0.1:8888].
    #[arg(long)]
    pub admin_addr: Option<SocketAddr>,
}

#[derive(Args, Debug, Default, Clone)]
pub struct StoreArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Key store: file (default, from the config) or postgres.
    #[arg(long, value_parser = ["file", "postgres"])]
    pub store: Option<String>,
    /// PostgreSQL URL for --store postgres (a role that may write api_keys).
    /// Default: auth.database_url (`TRACEGATE_AUTH__DATABASE_URL`).
    #[arg(long)]
    pub database_url: Option<String>,
}

// Parsed once per process: the size difference between variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Create an API key; prints `key_id: <id>` and then the secret, once, alone on the last line.
    Create {
        /// Project the key writes to: every span it sends is stamped with it.
        #[arg(long)]
        project: String,
        /// Organization of the project.
        #[arg(long, default_value = "default")]
        org: String,
        /// Workspace of the project.
        #[arg(long, default_value = "default")]
        workspace: String,
        /// Region of the key [default: gateway.region].
        #[arg(long)]
        region: Option<String>,
        /// Comma-separated scopes.
        #[arg(
            long,
            default_value = "traces:write,logs:write,metrics:write",
            value_delimiter = ','
        )]
        scopes: Vec<String>,
        /// Quota of the project: spans per second (over it: 429 with Retry-After) [default: none].
        #[arg(long)]
        spans_per_sec: Option<u64>,
        /// Quota of the project: decompressed request bytes per second [default: none].
        #[arg(long)]
        bytes_per_sec: Option<u64>,
        /// Bucket size as milliseconds of quota [default: 1000].
        #[arg(long)]
        burst_ms: Option<u64>,
        /// Allowed AWS VPC endpoint ids (comma-separated; empty = any).
        #[arg(long, value_delimiter = ',')]
        vpce: Vec<String>,
        /// Allowed source CIDRs (comma-separated; empty = any).
        #[arg(long, value_delimiter = ',')]
        cidr: Vec<String>,
        /// Lifetime, e.g. 90d, 12h, 30m, 45s.
        #[arg(long, value_parser = parse_duration)]
        expires_in: Option<chrono::Duration>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List keys (never secrets).
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Revoke a key by id.
    Revoke {
        /// The key's id (`keys list`), not its secret.
        key_id: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// New secret for a key id (the old one stops working); the secret is the last line.
    Rotate {
        /// The key's id (`keys list`), not its secret.
        key_id: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Apply the PostgreSQL key store migrations (idempotent).
    Migrate {
        #[command(flatten)]
        store: StoreArgs,
    },
}

fn parse_duration(s: &str) -> Result<chrono::Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = num
        .parse()
        .map_err(|_| format!("bad duration {s:?} (e.g. 90d, 12h, 30m, 45s)"))?;
    match unit {
        "d" => Ok(chrono::Duration::days(n)),
        "h" => Ok(chrono::Duration::hours(n)),
        "m" => Ok(chrono::Duration::minutes(n)),
        "s" | "" => Ok(chrono::Duration::seconds(n)),
        _ => Err(format!("bad duration unit in {s:?} (use d, h, m or s)")),
    }
}

pub use crate::archive::cmd::ArchiveCommand;

impl ServeArgs {
    pub fn load(&self) -> Result<Config> {
        let o = Overrides {
            grpc_addr: self.grpc_addr,
            http_addr: self.http_addr,
            admin_addr: self.admin_addr,
            data_dir: self.common.data_dir.clone(),
        };
        Ok(Config::load(self.common.config.as_deref(), &o)?)
    }
}

impl StoreArgs {
    fn config(&self) -> Result<Config> {
        let mut cfg = self.common.load()?;
        match self.store.as_deref() {
            Some("postgres") => cfg.auth.store = crate::config::StoreKind::Postgres,
            Some(_) => cfg.auth.store = crate::config::StoreKind::File,
            None => {}
        }
        if let Some(url) = &self.database_url {
            cfg.auth.database_url = Some(url.clone());
        }
        if cfg.auth.store == crate::config::StoreKind::Postgres && cfg.auth.database_url.is_none() {
            anyhow::bail!("--store postgres needs --database-url (or auth.database_url)");
        }
        Ok(cfg)
    }

    async fn service(&self) -> Result<(Config, KeyService)> {
        let cfg = self.config()?;
        let store = crate::app::open_key_store(&cfg).await?;
        // A file store creates its pepper on first use; a shared store must be given one.
        let create = cfg.auth.store == crate::config::StoreKind::File;
        let pepper = crate::app::load_pepper(&cfg, create)?;
        let audit = Audit::from_config(&cfg)?;
        Ok((
            cfg,
            KeyService {
                store,
                pepper,
                audit,
            },
        ))
    }
}

fn print_record(out: &mut impl Write, r: &KeyRecord) -> Result<()> {
    writeln!(
        out,
        "{}\torg={}\tproject={}\tregion={}\tscopes={}\trevoked={}\texpires={}\tspans/s={}\tbytes/s={}",
        r.key_id,
        r.org_id,
        r.project_id,
        r.region,
        r.scopes.join(","),
        r.revoked,
        r.expires_at.as_deref().unwrap_or("never"),
        r.spans_per_sec.map(|v| v.to_string()).unwrap_or_else(|| "-".into()),
        r.bytes_per_sec.map(|v| v.to_string()).unwrap_or_else(|| "-".into()),
    )?;
    Ok(())
}

pub async fn keys(cmd: KeysCommand, out: &mut impl Write) -> Result<()> {
    match cmd {
        KeysCommand::Create {
            project,
            org,
            workspace,
            region,
            scopes,
            spans_per_sec,
            bytes_per_sec,
            burst_ms,
            vpce,
            cidr,
            expires_in,
            store,
        } => {
            let (cfg, svc) = store.service().await?;
            let spec = NewKey {
                org_id: org,
                workspace_id: workspace,
                project_id: project,
                region: region.unwrap_or(cfg.gateway.region.clone()),
                scopes,
                spans_per_sec,
                bytes_per_sec,
                burst_ms,
                allowed_vpce_ids: vpce,
                allowed_cidrs: cidr,
                expires_in,
            };
            let (rec, key) = svc.create(spec).await?;
            writeln!(out, "project: {}", rec.project_id)?;
            writeln!(out, "region: {}", rec.region)?;
            writeln!(out, "key_id: {}", rec.key_id)?;
            writeln!(out, "{key}")?;
        }
        KeysCommand::List { store } => {
            let (_, svc) = store.service().await?;
            for r in svc.list().await? {
                print_record(out, &r)?;
            }
        }
        KeysCommand::Revoke { key_id, store } => {
            let (_, svc) = store.service().await?;
            let r = svc.revoke(&key_id).await?;
            writeln!(out, "revoked: {}", r.key_id)?;
        }
        KeysCommand::Rotate { key_id, store } => {
            let (_, svc) = store.service().await?;
            let (r, key) = svc.rotate(&key_id).await?;
            writeln!(out, "key_id: {}", r.key_id)?;
            writeln!(out, "{key}")?;
        }
        KeysCommand::Migrate { store } => {
            let cfg = store.config()?;
            let url = cfg
                .auth
                .database_url
                .as_deref()
                .context("--database-url is required")?;
            let applied = crate::auth::postgres::PgKeyStore::migrate(url).await?;
            writeln!(out, "migrations applied: {applied:?}")?;
        }
    }
    out.flush()?;
    Ok(())
}

/// On first start (no keys yet) creates project `default` with one key and prints it once.
pub async fn bootstrap_first_key(
    cfg: &Config,
    http: SocketAddr,
    grpc: SocketAddr,
    out: &mut impl Write,
) -> Result<()> {
    if cfg.auth.store != crate::config::StoreKind::File {
        return Ok(());
    }
    let store = Arc::new(FileKeyStore::open(&cfg.key_file_path())?);
    if !store.is_empty()? {
        return Ok(());
    }
    let svc = KeyService {
        store,
        pepper: crate::app::load_pepper(cfg, true)?,
        audit: Audit::from_config(cfg)?,
    };
    let (rec, key) = svc
        .create(NewKey::for_project("default", &cfg.gateway.region))
        .await?;
    let scheme = |l| match cfg.tls.resolve(l) {
        Ok(Some(_)) => "https",
        _ => "http",
    };
    writeln!(
        out,
        "\ntracegate: first start — created project \"{project}\" and API key {id}.\n\
         The key is shown only this once (only its hash is stored); keep it:\n\n    {key}\n\n\
         Send a first span:\n\n\
         curl -sS {hs}://{http}/v1/traces \\\n  -H 'Authorization: Bearer {key}' \\\n  -H 'Content-Type: application/json' \\\n  \
         -d '{{\"resourceSpans\":[{{\"resource\":{{\"attributes\":[{{\"key\":\"service.name\",\"value\":{{\"stringValue\":\"hello\"}}}}]}},\"scopeSpans\":[{{\"spans\":[{{\"traceId\":\"5b8efff798038103d269b633813fc60c\",\"spanId\":\"eee19b7ec3c1b174\",\"name\":\"hello\",\"kind\":1,\"startTimeUnixNano\":\"1700000000000000000\",\"endTimeUnixNano\":\"1700000001000000000\"}}]}}]}}]}}'\n\n\
         Or point any OpenTelemetry SDK at it:\n\n\
         export OTEL_EXPORTER_OTLP_ENDPOINT={hs}://{http}\n\
         export OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf     # or grpc with endpoint {gs}://{grpc}\n\
         export OTEL_EXPORTER_OTLP_HEADERS='authorization=Bearer {key}'\n\n\
         See what arrived:  tracegate archive cat --data-dir {dir}\n",
        project = rec.project_id,
        id = rec.key_id,
        dir = cfg.server.data_dir.display(),
        hs = scheme(crate::netconfig::OtlpListener::Http),
        gs = scheme(crate::netconfig::OtlpListener::Grpc),
    )?;
    Ok(())
}

/// `tracegate archive …` (implemented in `crate::archive::cmd`).
pub fn archive(cmd: ArchiveCommand, out: &mut impl Write) -> Result<()> {
    crate::archive::cmd::run(cmd, out)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every flag and argument of every subcommand says what it is for in `--help`.
    #[test]
    fn every_argument_has_help_text() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in cmd.get_arguments() {
                let id = a.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                if a.get_help().is_none() && a.get_long_help().is_none() {
                    missing.push(format!("{path} --{id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&super::Cli::command(), "tracegate", &mut missing);
        assert!(missing.is_empty(), "arguments without help: {missing:?}");
    }
}
