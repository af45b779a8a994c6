//! Command line: `serve` (the default), `keys create`, `archive cat`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use prost::Message;
use tracegate_proto::otlp::collector::trace::v1::ExportTraceServiceRequest;

use crate::archive::local::LocalArchive;
use crate::auth::file_store::FileKeyStore;
use crate::config::{Config, Overrides};

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
}

#[derive(Args, Debug, Default, Clone)]
pub struct CommonArgs {
    /// TOML config file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Data directory [default: ./tracegate-data].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
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

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Create an API key for a project; the secret is printed once, alone on the last line.
    Create {
        #[arg(long)]
        project: String,
        #[command(flatten)]
        common: CommonArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum ArchiveCommand {
    /// Print every archived span as one JSON line.
    Cat {
        #[arg(long)]
        project: Option<String>,
        #[command(flatten)]
        common: CommonArgs,
    },
}

impl CommonArgs {
    pub fn load(&self) -> Result<Config> {
        let o = Overrides {
            data_dir: self.data_dir.clone(),
            ..Default::default()
        };
        Ok(Config::load(self.config.as_deref(), &o)?)
    }
}

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

/// On first start (no keys yet) creates project `default` with one key and prints it once.
pub fn bootstrap_first_key(
    cfg: &Config,
    http: SocketAddr,
    grpc: SocketAddr,
    out: &mut impl Write,
) -> Result<()> {
    let store = FileKeyStore::open(&cfg.server.data_dir)?;
    if !store.is_empty()? {
        return Ok(());
    }
    let (rec, key) = store.create_key("default")?;
    writeln!(
        out,
        "\ntracegate: first start — created project \"{project}\" and API key {id}.\n\
         The key is shown only this once (only its hash is stored); keep it:\n\n    {key}\n\n\
         Send a first span:\n\n\
         curl -sS http://{http}/v1/traces \\\n  -H 'Authorization: Bearer {key}' \\\n  -H 'Content-Type: application/json' \\\n  \
         -d '{{\"resourceSpans\":[{{\"resource\":{{\"attributes\":[{{\"key\":\"service.name\",\"value\":{{\"stringValue\":\"hello\"}}}}]}},\"scopeSpans\":[{{\"spans\":[{{\"traceId\":\"5b8efff798038103d269b633813fc60c\",\"spanId\":\"eee19b7ec3c1b174\",\"name\":\"hello\",\"kind\":1,\"startTimeUnixNano\":\"1700000000000000000\",\"endTimeUnixNano\":\"1700000001000000000\"}}]}}]}}]}}'\n\n\
         Or point any OpenTelemetry SDK at it:\n\n\
         export OTEL_EXPORTER_OTLP_ENDPOINT=http://{http}\n\
         export OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf     # or grpc with endpoint http://{grpc}\n\
         export OTEL_EXPORTER_OTLP_HEADERS='authorization=Bearer {key}'\n\n\
         See what arrived:  tracegate archive cat --data-dir {dir}\n",
        project = rec.project_id,
        id = rec.key_id,
        dir = cfg.server.data_dir.display(),
    )?;
    Ok(())
}

pub fn keys_create(project: &str, common: &CommonArgs, out: &mut impl Write) -> Result<()> {
    let cfg = common.load()?;
    let store = FileKeyStore::open(&cfg.server.data_dir)?;
    let (rec, key) = store.create_key(project)?;
    writeln!(out, "project: {}", rec.project_id)?;
    writeln!(out, "key_id: {}", rec.key_id)?;
    writeln!(out, "{key}")?;
    Ok(())
}

pub fn archive_cat(project: Option<&str>, common: &CommonArgs, out: &mut impl Write) -> Result<()> {
    let cfg = common.load()?;
    let archive = LocalArchive::new(&cfg.server.data_dir, cfg.writer.compression_level);
    for path in archive.list(project)? {
        for batch in LocalArchive::read_object(&path)? {
            if project.is_some_and(|p| p != batch.project_id) {
                continue;
            }
            let req = ExportTraceServiceRequest::decode(batch.otlp_request.clone())
                .with_context(|| format!("decoding OTLP payload in {}", path.display()))?;
            for rs in &req.resource_spans {
                for ss in &rs.scope_spans {
                    for span in &ss.spans {
                        let line = serde_json::json!({
                            "project_id": batch.project_id,
                            "org_id": batch.org_id,
                            "batch_id": hex::encode(&batch.batch_id),
                            "received_at_unix_nano": batch.received_at_unix_nano,
                            "resource": rs.resource,
                            "scope": ss.scope,
                            "span": span,
                        });
                        serde_json::to_writer(&mut *out, &line)?;
                        out.write_all(b"\n")?;
                    }
                }
            }
        }
    }
    out.flush()?;
    Ok(())
}
