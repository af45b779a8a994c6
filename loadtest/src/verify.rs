//! `loadtest verify`: reads what a store holds for one run and compares it with the report:
//! every acked span must be there (else: loss), spans of refused requests may be missing,
//! spans never sent must not appear, and copies beyond the first are duplicates.
//!
//! Sources:
//! - the archive, through the gateway's own reader (`tracegate_archive::store`; `--config` reads
//!   the file's `[archive]` and `server.data_dir`, not `TRACEGATE_*` overrides): a local
//!   directory or S3, v1 and v2 objects, keyring or AWS KMS. An object that cannot be read
//!   (corrupt, wrong key, wrong place) is reported and fails the check.
//! - ClickHouse over HTTP: `SELECT SpanId, count() FROM <db>.otel_traces WHERE TraceId LIKE
//!   '<run id hex>%' GROUP BY SpanId`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use prost::Message;
use serde::{Deserialize, Serialize};
use tracegate_proto::otlp::collector::trace::v1::ExportTraceServiceRequest;

use crate::ids::{self, Decoded};

/// What verify needs from a report.
#[derive(Debug, Deserialize)]
pub struct ReportIds {
    pub run_id: String,
    pub ids_unique: bool,
    pub acked_ranges: Vec<[u64; 2]>,
    #[serde(default)]
    pub refused_ranges: Vec<[u64; 2]>,
    #[serde(default)]
    pub unknown_ranges: Vec<[u64; 2]>,
    /// The run's configuration (for its signal).
    #[serde(default)]
    pub config: serde_json::Value,
}

pub fn read_report(path: &std::path::Path) -> Result<ReportIds> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let r: ReportIds = serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not a loadtest report", path.display()))?;
    if !r.ids_unique {
        bail!(
            "{}: the run used --body-pool, so its span ids repeat and cannot be verified",
            path.display()
        );
    }
    let signal = r.config["signal"].as_str().unwrap_or("traces");
    if signal != "traces" {
        bail!(
            "{}: the run sent {signal}; verify counts spans (in otel_traces or the archive) only",
            path.display()
        );
    }
    Ok(r)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    NotSent,
    Acked,
    Refused,
    Unknown,
}

/// Per-sequence-number expectations and counts (one byte each).
pub struct Tally {
    max_seq: u64,
    class: Vec<Class>,
    seen: Vec<u8>,
    pub malformed: u64,
    pub unexpected: u64,
    pub unexpected_examples: Vec<u64>,
    pub other_runs: u64,
}

impl Tally {
    pub fn new(r: &ReportIds) -> Result<Tally> {
        let max_seq = r
            .acked_ranges
            .iter()
            .chain(&r.refused_ranges)
            .chain(&r.unknown_ranges)
            .map(|x| x[1])
            .max()
            .unwrap_or(0);
        if max_seq > 2_000_000_000 {
            bail!("run of {max_seq} spans is too large to verify in memory");
        }
        let mut class = vec![Class::NotSent; max_seq as usize + 1];
        for (ranges, c) in [
            (&r.acked_ranges, Class::Acked),
            (&r.refused_ranges, Class::Refused),
            (&r.unknown_ranges, Class::Unknown),
        ] {
            for [a, b] in ranges {
                if *a == 0 || a > b {
                    bail!("bad range [{a}, {b}] in the report");
                }
                for s in *a..=*b {
                    class[s as usize] = c;
                }
            }
        }
        Ok(Tally {
            max_seq,
            seen: vec![0; class.len()],
            class,
            malformed: 0,
            unexpected: 0,
            unexpected_examples: vec![],
            other_runs: 0,
        })
    }

    pub fn add(&mut self, run_id: u64, trace_id: &[u8], span_id: &[u8], copies: u64) {
        match ids::decode(run_id, trace_id, span_id) {
            Decoded::Other => self.other_runs += copies,
            Decoded::Malformed => self.malformed += copies,
            Decoded::Ours(seq) => {
                if seq > self.max_seq || self.class[seq as usize] == Class::NotSent {
                    self.unexpected += copies;
                    if self.unexpected_examples.len() < 10 {
                        self.unexpected_examples.push(seq);
                    }
                } else {
                    let s = &mut self.seen[seq as usize];
                    *s = s.saturating_add(copies.min(255) as u8);
                }
            }
        }
    }

    pub fn summary(&self, source: String, store_dedups: &str, errors: Vec<String>) -> Summary {
        let mut s = Summary {
            source,
            store_dedups: store_dedups.into(),
            ..Default::default()
        };
        for seq in 1..=self.max_seq as usize {
            let seen = u64::from(self.seen[seq]);
            match self.class[seq] {
                Class::NotSent => continue,
                Class::Acked => {
                    s.acked_expected += 1;
                    if seen == 0 {
                        s.missing_acked += 1;
                        if s.missing_examples.len() < 10 {
                            s.missing_examples.push(seq as u64);
                        }
                    } else {
                        s.acked_found += 1;
                    }
                }
                Class::Refused => {
                    s.refused_spans += 1;
                    if seen > 0 {
                        s.refused_present += 1;
                    }
                }
                Class::Unknown => {
                    s.unknown_spans += 1;
                    if seen > 0 {
                        s.unknown_present += 1;
                    }
                }
            }
            if seen > 1 {
                s.duplicated_spans += 1;
                s.duplicate_copies += seen - 1;
                if s.duplicate_examples.len() < 10 {
                    s.duplicate_examples.push(seq as u64);
                }
            }
        }
        s.unexpected_spans = self.unexpected;
        s.unexpected_examples = self.unexpected_examples.clone();
        s.malformed_ids = self.malformed;
        s.other_runs_spans = self.other_runs;
        s.read_errors = errors;
        s
    }
}

#[derive(Debug, Default, Serialize)]
pub struct Summary {
    pub source: String,
    pub acked_expected: u64,
    pub acked_found: u64,
    /// Acked spans that are not in the store: loss.
    pub missing_acked: u64,
    pub missing_examples: Vec<u64>,
    /// Spans of refused requests (may be absent) and how many are there anyway.
    pub refused_spans: u64,
    pub refused_present: u64,
    /// Spans of requests with an unknown outcome (errors, timeouts).
    pub unknown_spans: u64,
    pub unknown_present: u64,
    /// Spans stored more than once, and the extra copies.
    pub duplicated_spans: u64,
    pub duplicate_copies: u64,
    pub duplicate_examples: Vec<u64>,
    /// Whether this store removes duplicates by itself.
    pub store_dedups: String,
    /// Spans of this run with sequence numbers never sent.
    pub unexpected_spans: u64,
    pub unexpected_examples: Vec<u64>,
    /// Spans of this run whose ids do not follow the layout.
    pub malformed_ids: u64,
    pub other_runs_spans: u64,
    pub read_errors: Vec<String>,
    pub ok: bool,
}

impl Summary {
    pub fn judge(&mut self, fail_on_duplicates: bool) {
        self.ok = self.missing_acked == 0
            && self.unexpected_spans == 0
            && self.malformed_ids == 0
            && self.read_errors.is_empty()
            && !(fail_on_duplicates && self.duplicate_copies > 0);
    }
}

/// Every span of one OTLP request: (trace_id, span_id).
fn request_ids(otlp: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let req = ExportTraceServiceRequest::decode(otlp).context("decoding the OTLP request")?;
    Ok(req
        .resource_spans
        .into_iter()
        .flat_map(|rs| rs.scope_spans)
        .flat_map(|ss| ss.spans)
        .map(|s| (s.trace_id, s.span_id))
        .collect())
}

pub struct ArchiveSource {
    pub config: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    pub project: Option<String>,
}

pub async fn from_archive(
    src: &ArchiveSource,
    run_id: u64,
    tally: &mut Tally,
) -> Result<(String, Vec<String>)> {
    use tracegate_archive::store::{ArchiveStore, Filter, Settings};
    let settings = match (&src.config, &src.data_dir) {
        (Some(file), dir) => Settings::from_config_file(file, dir.as_deref())?,
        (None, Some(dir)) => Settings::local(dir),
        (None, None) => anyhow::bail!("give --data-dir D or --config FILE"),
    };
    let store = ArchiveStore::open(&settings, false)?;
    let objects = store
        .list(&Filter {
            project: src.project.clone(),
            from: None,
            to: None,
        })
        .await?;
    let mut errors = vec![];
    for o in &objects {
        match store.read(o).await {
            Ok(c) => {
                for (_, b) in c.batches {
                    let plain = tracegate_otlp::envelope::plain_request(
                        &b,
                        tracegate_otlp::envelope::MAX_PLAIN_BYTES,
                    );
                    match plain
                        .map_err(anyhow::Error::from)
                        .and_then(|p| request_ids(&p))
                    {
                        Ok(spans) => {
                            for (t, s) in spans {
                                tally.add(run_id, &t, &s, 1);
                            }
                        }
                        Err(e) => errors.push(format!("{}: {e:#}", o.location)),
                    }
                }
            }
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    Ok((
        format!("archive {} ({} objects)", store.describe(), objects.len()),
        errors,
    ))
}

pub struct ClickHouseSource {
    pub url: String,
    pub database: String,
    pub table: String,
    pub user: Option<String>,
    pub password: Option<String>,
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn sql_ident(s: &str) -> Result<&str> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        bail!("bad identifier {s:?}");
    }
    Ok(s)
}

pub async fn from_clickhouse(
    src: &ClickHouseSource,
    run_id: u64,
    tally: &mut Tally,
) -> Result<String> {
    let q = format!(
        "SELECT TraceId, SpanId, count() FROM {}.{} WHERE TraceId LIKE '{}%' \
         GROUP BY TraceId, SpanId FORMAT TabSeparated",
        sql_ident(&src.database)?,
        sql_ident(&src.table)?,
        ids::run_id_hex(run_id)
    );
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(300))
        .no_proxy()
        .build()?;
    let mut rb = client.post(src.url.trim_end_matches('/').to_string() + "/");
    if let Some(u) = &src.user {
        rb = rb.header("X-ClickHouse-User", u);
    }
    if let Some(p) = &src.password {
        rb = rb.header("X-ClickHouse-Key", p);
    }
    let resp = rb
        .body(q)
        .send()
        .await
        .with_context(|| format!("querying {}", src.url))?;
    let status = resp.status();
    let text = resp.text().await?;
    if !status.is_success() {
        bail!(
            "ClickHouse answered {status}: {}",
            text.chars().take(500).collect::<String>()
        );
    }
    let mut rows = 0u64;
    for line in text.lines().filter(|l| !l.is_empty()) {
        let mut f = line.split('\t');
        let (Some(t), Some(s), Some(n)) = (f.next(), f.next(), f.next()) else {
            bail!("unexpected ClickHouse row {line:?}");
        };
        let n: u64 = n.parse().with_context(|| format!("row {line:?}"))?;
        match (unhex(t), unhex(s)) {
            (Some(t), Some(s)) => tally.add(run_id, &t, &s, n),
            _ => tally.malformed += n,
        }
        rows += 1;
    }
    Ok(format!(
        "clickhouse {} {}.{} ({rows} distinct spans)",
        src.url, src.database, src.table
    ))
}

/// Counts by class, for the human-readable line.
pub fn line(s: &Summary) -> String {
    let mut m = BTreeMap::new();
    m.insert("acked_expected", s.acked_expected);
    m.insert("acked_found", s.acked_found);
    m.insert("missing_acked", s.missing_acked);
    m.insert("duplicate_copies", s.duplicate_copies);
    m.insert("unexpected", s.unexpected_spans);
    m.insert("malformed", s.malformed_ids);
    m.insert("refused_present", s.refused_present);
    m.insert("read_errors", s.read_errors.len() as u64);
    let kv: Vec<String> = m.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!(
        "loadtest verify {} {}",
        if s.ok { "OK" } else { "FAILED" },
        kv.join(" ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> ReportIds {
        ReportIds {
            run_id: "1".into(),
            ids_unique: true,
            acked_ranges: vec![[1, 16]],
            refused_ranges: vec![[17, 24]],
            unknown_ranges: vec![],
            config: serde_json::Value::Null,
        }
    }

    fn add(t: &mut Tally, run: u64, seq: u64, copies: u64) {
        let root = ids::trace_root(seq, 1 + (seq - 1) / 8 * 8);
        // The tally checks for run 1; `run` is the run the span was sent by.
        t.add(1, &ids::trace_id(run, root), &ids::span_id(seq), copies);
    }

    #[test]
    fn loss_duplicates_and_strangers_are_found() {
        let mut t = Tally::new(&report()).unwrap();
        for seq in 1..=16 {
            if seq != 5 {
                add(&mut t, 1, seq, 1);
            }
        }
        add(&mut t, 1, 9, 2); // two more copies of 9
        add(&mut t, 1, 18, 1); // refused but present: allowed
        add(&mut t, 1, 30, 1); // never sent
        add(&mut t, 2, 3, 1); // another run
        let mut s = t.summary("test".into(), "no", vec![]);
        s.judge(false);
        assert_eq!(s.acked_expected, 16);
        assert_eq!(s.missing_acked, 1);
        assert_eq!(s.missing_examples, vec![5]);
        assert_eq!(s.duplicated_spans, 1, "{s:?}");
        assert_eq!(s.duplicate_copies, 2);
        assert_eq!(s.refused_present, 1);
        assert_eq!(s.unexpected_spans, 1);
        assert_eq!(s.other_runs_spans, 1);
        assert!(!s.ok);

        let mut t = Tally::new(&report()).unwrap();
        for seq in 1..=16 {
            add(&mut t, 1, seq, 1);
        }
        let mut s = t.summary("test".into(), "no", vec![]);
        s.judge(true);
        assert!(s.ok, "{s:?}");
    }
}
