//! `tracegate archive ls|cat|replay|rotate-key|keys`: work on every backend (local directory,
//! S3) and decrypt with whichever provider wrapped each object.

use std::io::Write;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use chrono::NaiveDate;
use clap::Subcommand;
use prost::Message;
use tracegate_proto::otlp::collector::logs::v1::ExportLogsServiceRequest;
use tracegate_proto::otlp::collector::metrics::v1::ExportMetricsServiceRequest;
use tracegate_proto::otlp::collector::trace::v1::ExportTraceServiceRequest;
use tracegate_proto::v1::Signal;

use super::replay;
use crate::cli::common::CommonArgs;
use crate::config::Config;
use tracegate_archive::keyring::Keyring;
use tracegate_archive::store::{ArchiveStore, Filter};
use tracegate_pipeline::Sink;

#[derive(Subcommand, Debug)]
pub enum ArchiveCommand {
    /// List archive objects (decrypting each): location, bytes, format, key, batches, spans.
    Ls {
        /// Only this project's objects.
        #[arg(long)]
        project: Option<String>,
        /// First UTC date (YYYY-MM-DD) of the object keys to include.
        #[arg(long, value_parser = parse_date)]
        from: Option<NaiveDate>,
        /// Last UTC date (YYYY-MM-DD) to include.
        #[arg(long, value_parser = parse_date)]
        to: Option<NaiveDate>,
        /// The ClickHouse dead-letter area instead of the archive.
        #[arg(long)]
        dead_letters: bool,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Print every archived span (or log record, or metric: `--signal`) as one JSON line.
    Cat {
        /// Only this project's spans.
        #[arg(long)]
        project: Option<String>,
        /// Which signal to print.
        #[arg(long, value_enum, default_value_t = SignalArg::Traces)]
        signal: SignalArg,
        /// First UTC date (YYYY-MM-DD) of the object keys to include.
        #[arg(long, value_parser = parse_date)]
        from: Option<NaiveDate>,
        /// Last UTC date (YYYY-MM-DD) to include.
        #[arg(long, value_parser = parse_date)]
        to: Option<NaiveDate>,
        /// The ClickHouse dead-letter area instead of the archive.
        #[arg(long)]
        dead_letters: bool,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Re-send archived groups through the writer's sinks (ClickHouse) with their original
    /// group ids, so their dedup tokens match and data already there is not duplicated.
    Replay {
        /// First UTC date (YYYY-MM-DD), inclusive.
        #[arg(long, value_parser = parse_date)]
        from: NaiveDate,
        /// Last UTC date (YYYY-MM-DD), inclusive.
        #[arg(long, value_parser = parse_date)]
        to: NaiveDate,
        /// Only groups holding this project (replayed whole).
        #[arg(long)]
        project: Option<String>,
        /// Read, decrypt and rebuild the groups, but send nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Add a new key to the local keyring and make it the one new objects use (older keys stay
    /// for reading). Prints the new key id.
    RotateKey {
        #[command(flatten)]
        common: CommonArgs,
    },
    /// List the local keyring's keys (ids and dates, never key material).
    Keys {
        #[command(flatten)]
        common: CommonArgs,
    },
}

/// `archive cat --signal`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SignalArg {
    Traces,
    Logs,
    Metrics,
}

impl SignalArg {
    fn of(self) -> Signal {
        match self {
            SignalArg::Traces => Signal::Traces,
            SignalArg::Logs => Signal::Logs,
            SignalArg::Metrics => Signal::Metrics,
        }
    }
}

fn parse_date(s: &str) -> Result<NaiveDate, String> {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|e| format!("{s:?} is not YYYY-MM-DD: {e}"))
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// The sinks a replay sends to: every configured sink of the writer except the archive itself
/// (today: ClickHouse, when `clickhouse.url` is set).
pub fn replay_sinks(cfg: &Config) -> Result<Vec<Arc<dyn Sink>>> {
    let mut sinks: Vec<Arc<dyn Sink>> = vec![];
    if let Some(ch) = &cfg.clickhouse {
        let dead_letter = Arc::new(ArchiveStore::open_dead_letters(
            &cfg.archive_settings(),
            true,
        )?);
        sinks.push(Arc::new(crate::clickhouse::sink::ClickHouseSink::new(
            ch,
            dead_letter,
        )?));
    }
    Ok(sinks)
}

pub fn run(cmd: ArchiveCommand, out: &mut impl Write) -> Result<()> {
    match cmd {
        ArchiveCommand::Ls {
            project,
            from,
            to,
            dead_letters,
            common,
        } => {
            let cfg = common.load()?;
            let f = Filter { project, from, to };
            let store = open_for_reading(&cfg, dead_letters)?;
            runtime()?.block_on(ls(&store, &f, out))
        }
        ArchiveCommand::Cat {
            project,
            signal,
            from,
            to,
            dead_letters,
            common,
        } => {
            let cfg = common.load()?;
            let f = Filter { project, from, to };
            let store = open_for_reading(&cfg, dead_letters)?;
            runtime()?.block_on(cat(&store, &f, signal.of(), out))
        }
        ArchiveCommand::Replay {
            from,
            to,
            project,
            dry_run,
            common,
        } => {
            if from > to {
                bail!("--from {from} is after --to {to}");
            }
            let cfg = common.load()?;
            runtime()?.block_on(async {
                let sinks = if dry_run { vec![] } else { replay_sinks(&cfg)? };
                if !dry_run && sinks.is_empty() {
                    bail!(
                        "nothing to replay into: no sink besides the archive is configured \
                         (replay sends to ClickHouse: set clickhouse.url; --dry-run only reads \
                         and checks the groups)"
                    );
                }
                run_replay(&cfg, from, to, project.as_deref(), &sinks, out).await
            })
        }
        ArchiveCommand::RotateKey { common } => {
            let cfg = common.load()?;
            let path = cfg.archive.keyring_path(&cfg.server.data_dir);
            let id = Keyring::rotate(&path)?;
            writeln!(out, "keyring: {}", path.display())?;
            writeln!(out, "{id}")?;
            Ok(())
        }
        ArchiveCommand::Keys { common } => {
            let cfg = common.load()?;
            let path = cfg.archive.keyring_path(&cfg.server.data_dir);
            let kr = Keyring::open(&path, false)?;
            for k in kr.keys()? {
                writeln!(
                    out,
                    "{}\tcreated={}\t{}",
                    k.id,
                    k.created_at,
                    if k.active { "active" } else { "read-only" }
                )?;
            }
            Ok(())
        }
    }
}

/// The archive, or its ClickHouse dead-letter area, for `ls` and `cat`.
/// The archive `ls` and `cat` read. A local archive whose data dir does not exist is an error:
/// printing nothing would make a mistyped `--data-dir` look like "no spans arrived".
fn open_for_reading(cfg: &Config, dead_letters: bool) -> Result<ArchiveStore> {
    let store = if dead_letters {
        ArchiveStore::open_dead_letters(&cfg.archive_settings(), false)?
    } else {
        ArchiveStore::open(&cfg.archive_settings(), false)?
    };
    let dir = &cfg.server.data_dir;
    if store.describe().starts_with("file://") && !dir.is_dir() {
        bail!("the data dir {} does not exist (--data-dir)", dir.display());
    }
    Ok(store)
}

/// Said on stderr when nothing matched, so an empty answer is not mistaken for a failure.
fn none_found(store: &ArchiveStore, f: &Filter) {
    let filter = match (&f.project, f.from, f.to) {
        (None, None, None) => String::new(),
        (p, from, to) => format!(
            " for project {} from {} to {}",
            p.as_deref().unwrap_or("any"),
            from.map_or("the start".into(), |d| d.to_string()),
            to.map_or("now".into(), |d| d.to_string())
        ),
    };
    eprintln!(
        "tracegate: no archive objects in {}{filter}",
        store.describe()
    );
}

async fn ls(store: &ArchiveStore, f: &Filter, out: &mut impl Write) -> Result<()> {
    let objects = store.list(f).await?;
    if objects.is_empty() {
        none_found(store, f);
    }
    let mut failed = 0usize;
    for o in &objects {
        match store.read(o).await {
            Ok(c) => {
                let spans: u64 = c.batches.iter().map(|(_, b)| u64::from(b.span_count)).sum();
                writeln!(
                    out,
                    "{}\t{}\tv{}\t{}\tbatches={}\tspans={spans}",
                    o.location,
                    o.size,
                    c.format,
                    match (&c.provider, &c.key_id) {
                        (Some(p), Some(k)) => format!("{p}:{k}"),
                        _ => "plain".to_string(),
                    },
                    c.batches.len()
                )?;
            }
            Err(e) => {
                failed += 1;
                eprintln!("tracegate: error: {e:#}");
            }
        }
    }
    out.flush()?;
    if failed > 0 {
        bail!(
            "{failed} of {} objects could not be read (see above)",
            objects.len()
        );
    }
    Ok(())
}

async fn cat(store: &ArchiveStore, f: &Filter, signal: Signal, out: &mut impl Write) -> Result<()> {
    let objects = store.list(f).await?;
    if objects.is_empty() {
        none_found(store, f);
    }
    for o in objects {
        let c = store.read(&o).await?;
        for (_, batch) in &c.batches {
            if f.project.as_deref().is_some_and(|p| p != batch.project_id)
                || batch.signal() != signal
            {
                continue;
            }
            let plain = tracegate_otlp::envelope::plain_request(
                batch,
                tracegate_otlp::envelope::MAX_PLAIN_BYTES,
            )
            .with_context(|| format!("reading the OTLP payload in {}", o.location))?;
            let context = || format!("decoding OTLP payload in {}", o.location);
            let head = serde_json::json!({
                "project_id": batch.project_id,
                "org_id": batch.org_id,
                "batch_id": hex::encode(&batch.batch_id),
                "received_at_unix_nano": batch.received_at_unix_nano,
            });
            let mut line = |resource, scope, item: (&str, serde_json::Value)| -> Result<()> {
                let mut l = head.clone();
                l["resource"] = resource;
                l["scope"] = scope;
                l[item.0] = item.1;
                serde_json::to_writer(&mut *out, &l)?;
                out.write_all(b"\n")?;
                Ok(())
            };
            match signal {
                Signal::Traces => {
                    let req = ExportTraceServiceRequest::decode(plain).with_context(context)?;
                    for rs in &req.resource_spans {
                        for ss in &rs.scope_spans {
                            for span in &ss.spans {
                                let (r, s) = (json(&rs.resource), json(&ss.scope));
                                line(r, s, ("span", json(span)))?;
                            }
                        }
                    }
                }
                Signal::Metrics => {
                    let req = ExportMetricsServiceRequest::decode(plain).with_context(context)?;
                    for rm in &req.resource_metrics {
                        for sm in &rm.scope_metrics {
                            for metric in &sm.metrics {
                                let (r, s) = (json(&rm.resource), json(&sm.scope));
                                line(r, s, ("metric", json(metric)))?;
                            }
                        }
                    }
                }
                Signal::Logs => {
                    let req = ExportLogsServiceRequest::decode(plain).with_context(context)?;
                    for rl in &req.resource_logs {
                        for sl in &rl.scope_logs {
                            for record in &sl.log_records {
                                let (r, s) = (json(&rl.resource), json(&sl.scope));
                                line(r, s, ("log", json(record)))?;
                            }
                        }
                    }
                }
            }
        }
    }
    out.flush()?;
    Ok(())
}

fn json(v: &impl serde::Serialize) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

async fn run_replay(
    cfg: &Config,
    from: NaiveDate,
    to: NaiveDate,
    project: Option<&str>,
    sinks: &[Arc<dyn Sink>],
    out: &mut impl Write,
) -> Result<()> {
    let store = ArchiveStore::open(&cfg.archive_settings(), false)?;
    // Every tenant's objects: a group is replayed whole.
    let objects = store
        .list(&Filter {
            project: None,
            from: Some(from),
            to: Some(to),
        })
        .await?;
    let groups = replay::plan(objects, project);
    let r = replay::replay(&store, &groups, sinks, |l| {
        let _ = writeln!(out, "{l}");
        let _ = out.flush();
    })
    .await;
    writeln!(
        out,
        "replay: groups={} objects={} batches={} spans={} failed={}{}",
        r.groups,
        r.objects,
        r.batches,
        r.spans,
        r.failed,
        if sinks.is_empty() { " (dry run)" } else { "" }
    )?;
    out.flush()?;
    if r.failed > 0 {
        bail!("{} group(s) could not be replayed (see above)", r.failed);
    }
    Ok(())
}
