//! The ClickHouse sink (docs/clickhouse.md, "Writer").
//!
//! A group is encoded to RowBinary on the blocking pool (never on the async workers), cut into
//! inserts of at most `max_insert_rows` / `max_insert_bytes` at batch boundaries, and each insert
//! is sent in ClickHouse's native compressed blocks (`blocks.rs`, zstd or LZ4, `decompress=1`)
//! by the `clickhouse` crate with `insert_deduplication_token = <group id>#<n>`. The cut
//! depends only on the group's content, so a group written again (a retry, or a Kafka range
//! re-read after a writer crash) produces the same inserts with the same tokens and ClickHouse
//! drops the copies.
//!
//! Every signal goes the same way: a group's batches become rows of the tables of their
//! signal (`tables.rs`: spans, log records and metric data points, each with their encoder in
//! `rows/`), inserted table by table in `Table::ALL` order, so a payload row never exists
//! without the row that points to it.
//!
//! Failures:
//! - transient (network, timeout, server busy, unknown table…): the same insert is retried with
//!   exponential backoff until it succeeds; the group is not acknowledged meanwhile, so the
//!   writer upstream stops taking more (bounded memory). Only shutdown ends the retries (the
//!   group then fails and is not acknowledged).
//! - ClickHouse rejects the data as malformed: every batch of that insert is retried alone
//!   (token `<group id>#<n>.<batch index>`), and the batches rejected alone go to the
//!   dead-letter archive (`<data_dir>/clickhouse-dead-letter`, same object format as the
//!   archive) and are counted in `tracegate_clickhouse_dead_letter_batches_total`. A batch whose
//!   OTLP bytes cannot be read goes there too. Then the group succeeds: one bad batch never
//!   blocks the rest.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use clickhouse::Compression;
use futures_util::future::BoxFuture;
use tokio_util::sync::CancellationToken;
use tracegate_proto::v1::{Batch, Signal};

use super::cluster::insert_table;
use super::config::{ClickHouseConfig, InsertCompression};
use super::endpoints::Endpoints;
use super::rows::{EncodeOptions, Encoded, Encoder, LogEncoder, MetricEncoder};
use super::schema;
use super::tables::{Table, TABLES};
use crate::metrics as m;
use tracegate_archive::store::ArchiveStore;
use tracegate_pipeline::{Sink, WriteGroup};

/// ClickHouse error codes that mean "this data is malformed": retrying it cannot help.
const REJECT_CODES: &[u32] = &[
    6,   // CANNOT_PARSE_TEXT
    26,  // CANNOT_PARSE_QUOTED_STRING
    27,  // CANNOT_PARSE_INPUT_ASSERTION_FAILED
    32,  // ATTEMPT_TO_READ_AFTER_EOF
    33,  // CANNOT_READ_ALL_DATA
    38,  // CANNOT_PARSE_DATE
    41,  // CANNOT_PARSE_DATETIME
    53,  // TYPE_MISMATCH
    69,  // ARGUMENT_OUT_OF_BOUND
    70,  // CANNOT_CONVERT_TYPE
    72,  // CANNOT_PARSE_NUMBER
    117, // INCORRECT_DATA
    128, // TOO_LARGE_ARRAY_SIZE
    131, // TOO_LARGE_STRING_SIZE
    469, // VIOLATED_CONSTRAINT
];

/// The ClickHouse error code in a `clickhouse` crate error (`Code: N. DB::Exception: …`).
pub fn error_code(e: &clickhouse::error::Error) -> Option<u32> {
    let clickhouse::error::Error::BadResponse(reason) = e else {
        return None;
    };
    let rest = &reason[reason.find("Code: ")? + 6..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// True when ClickHouse refused the data itself (not the connection, the server or the schema).
pub fn is_rejection(e: &clickhouse::error::Error) -> bool {
    error_code(e).is_some_and(|c| REJECT_CODES.contains(&c))
}

/// One insert's worth of rows per table: consecutive batches of the group.
struct Chunk {
    index: usize,
    data: [Bytes; TABLES],
    rows: [usize; TABLES],
    /// Per batch: (global batch index, its byte range in each table's data).
    parts: Vec<(usize, [Range<usize>; TABLES])>,
}

impl Chunk {
    fn data(&self, t: Table) -> (&Bytes, usize) {
        (&self.data[t.index()], self.rows[t.index()])
    }
}

struct Encoding {
    chunks: Vec<Chunk>,
    /// Batches whose OTLP bytes could not be read: (index, error).
    undecodable: Vec<(usize, String)>,
}

/// The three signals' encoders.
struct Encoders {
    traces: Encoder,
    logs: LogEncoder,
    metrics: MetricEncoder,
}

impl Encoders {
    fn new(opts: EncodeOptions) -> Self {
        Self {
            traces: Encoder::new(opts),
            logs: LogEncoder::new(opts),
            metrics: MetricEncoder::new(),
        }
    }

    fn encode(&mut self, b: &Batch, out: &mut Encoded) -> Result<(), super::pb::PbError> {
        match b.signal() {
            Signal::Traces => self.traces.encode_batch(b, out),
            Signal::Logs => self.logs.encode_batch(b, out),
            Signal::Metrics => self.metrics.encode_batch(b, out),
        }
    }
}

/// Encodes a group into insert chunks. Deterministic: same group, same chunks.
fn encode_group(
    batches: &[Batch],
    opts: EncodeOptions,
    max_rows: usize,
    max_bytes: usize,
) -> Encoding {
    let mut enc = Encoders::new(opts);
    let mut chunks = Vec::new();
    let mut undecodable = Vec::new();
    let mut cur = Encoded::default();
    let mut parts = Vec::new();
    let flush = |cur: &mut Encoded, parts: &mut Vec<_>, chunks: &mut Vec<Chunk>| {
        if parts.is_empty() {
            return;
        }
        let e = std::mem::take(cur);
        chunks.push(Chunk {
            index: chunks.len(),
            data: e.data.map(Bytes::from),
            rows: e.rows,
            parts: std::mem::take(parts),
        });
    };
    for (i, b) in batches.iter().enumerate() {
        let (before, _) = cur.mark();
        match enc.encode(b, &mut cur) {
            Ok(()) => {
                let (after, _) = cur.mark();
                parts.push((i, std::array::from_fn(|t| before[t]..after[t])));
            }
            Err(e) => undecodable.push((i, e.to_string())),
        }
        if cur.primary_rows() >= max_rows || cur.total_bytes() >= max_bytes {
            flush(&mut cur, &mut parts, &mut chunks);
        }
    }
    flush(&mut cur, &mut parts, &mut chunks);
    Encoding {
        chunks,
        undecodable,
    }
}

/// The clients inserts go through, one per endpoint: the body is already in native compressed
/// blocks (`blocks.rs`), so the crate must send it as it is (no compression of its own) and
/// only ask ClickHouse to decompress it.
fn insert_endpoints(cfg: &ClickHouseConfig) -> Result<Endpoints> {
    Endpoints::new(&cfg.urls(), |url| {
        Ok(cfg
            .client_for(url)?
            .with_compression(Compression::None)
            .with_setting("decompress", "1"))
    })
}

/// The configured codec in the `clickhouse` crate's terms.
pub fn codec(cfg: &ClickHouseConfig) -> Compression {
    match cfg.compression {
        InsertCompression::Zstd => Compression::Zstd(cfg.zstd_level),
        InsertCompression::Lz4 => Compression::Lz4,
    }
}

enum InsertError {
    /// ClickHouse refused the data.
    Rejected(clickhouse::error::Error),
    /// Gave up retrying because the process is stopping.
    Stopped(clickhouse::error::Error),
}

struct Inner {
    cfg: ClickHouseConfig,
    endpoints: Arc<Endpoints>,
    /// Per table, its INSERT statement.
    sql: [String; TABLES],
    dead_letter: Arc<ArchiveStore>,
    stopping: CancellationToken,
    opts: EncodeOptions,
}

pub struct ClickHouseSink {
    inner: Arc<Inner>,
}

impl ClickHouseSink {
    /// `dead_letter` is the archive's dead-letter area ([`ArchiveStore::open_dead_letters`]):
    /// batches ClickHouse refuses are kept there, encrypted like every archive object.
    /// Must run inside a tokio runtime (the endpoints' checks).
    pub fn new(cfg: &ClickHouseConfig, dead_letter: Arc<ArchiveStore>) -> Result<Self> {
        let endpoints = Arc::new(insert_endpoints(cfg)?);
        let stopping = CancellationToken::new();
        endpoints.clone().spawn_checks(stopping.clone());
        Ok(Self {
            inner: Arc::new(Inner {
                // On a cluster, the replica's own `_local` tables (cluster.rs).
                sql: Table::ALL.map(|t| {
                    schema::insert_sql(
                        &cfg.database,
                        &insert_table(t.name(), cfg.cluster.as_deref()),
                        &t.columns(),
                    )
                }),
                dead_letter,
                stopping,
                opts: EncodeOptions {
                    payload_threshold_bytes: cfg.payload_threshold_bytes,
                    payload_preview_bytes: cfg.payload_preview_bytes,
                },
                cfg: cfg.clone(),
                endpoints,
            }),
        })
    }

    /// From now on a failed insert is not retried (the group fails, unacknowledged). Inserts
    /// that succeed still do, so a drain while ClickHouse is up writes everything.
    pub fn stop_retrying(&self) {
        self.inner.stopping.cancel();
    }

    /// A handle that calls `stop_retrying` when cancelled.
    pub fn stop_token(&self) -> CancellationToken {
        self.inner.stopping.clone()
    }
}

/// At start-up, for an `https://` URL: one round trip, so a TLS setting that can never work
/// (wrong CA, wrong server name, a client certificate the server refuses) stops the process
/// with the reason, instead of every insert retrying forever. ClickHouse merely being down is
/// not a configuration error: that is logged, and inserts retry as always.
pub async fn check_at_startup(cfg: &ClickHouseConfig) -> Result<()> {
    for url in cfg.urls() {
        if !url.starts_with("https://") {
            continue;
        }
        let client = cfg.client_for(url)?;
        let probe = client.query("SELECT 1").execute();
        match tokio::time::timeout(Duration::from_secs(10), probe).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => match super::tls::tls_failure(&e) {
                Some(reason) => anyhow::bail!(
                    "clickhouse.url: TLS with {url} failed: {reason} (check clickhouse.tls.ca_file, \
                     server_name, cert_file)"
                ),
                None => {
                    tracing::warn!(error = %e, "ClickHouse is not reachable at start-up; inserts will retry")
                }
            },
            Err(_) => {
                tracing::warn!("ClickHouse did not answer within 10 s at start-up; inserts will retry")
            }
        }
    }
    tokio::spawn(warn_if_schema_is_behind(cfg.clone()));
    Ok(())
}

/// Says so at start-up when the schema is older than this build's: writers rolled out before
/// `tracegate migrate` (docs/clickhouse.md, "Order on upgrade") retry inserts into tables the
/// schema lacks until the migration runs. In the background: start-up never waits for it.
async fn warn_if_schema_is_behind(cfg: ClickHouseConfig) {
    let want = schema::MIGRATIONS.last().map_or(0, |m| m.version);
    match tokio::time::timeout(Duration::from_secs(10), schema::applied_version(&cfg)).await {
        Ok(Ok(v)) if v >= want => {}
        Ok(Ok(v)) => tracing::error!(
            "ClickHouse schema is at version {v}, this writer needs {want}: run `tracegate migrate`; \
             inserts into what the schema lacks are retried until then"
        ),
        Ok(Err(e)) => tracing::warn!(
            error = %format!("{e:#}"),
            "could not read the ClickHouse schema version at start-up (`tracegate migrate` creates it)"
        ),
        Err(_) => {}
    }
}

/// The sink for `config.clickhouse`, if configured, with the token that stops its retries at
/// shutdown (cancel it after the sources have drained, before the writer's last flush). Dead
/// letters go to the dead-letter area of `config.archive`.
pub fn from_config(
    config: &crate::config::Config,
) -> Result<Option<(Arc<dyn Sink>, CancellationToken)>> {
    let Some(ch) = config.clickhouse.as_ref() else {
        return Ok(None);
    };
    let dead_letter = Arc::new(ArchiveStore::open_dead_letters(
        &config.archive_settings(),
        true,
    )?);
    let sink = ClickHouseSink::new(ch, dead_letter)?;
    let stop = sink.stop_token();
    Ok(Some((Arc::new(sink), stop)))
}

impl Sink for ClickHouseSink {
    fn name(&self) -> &'static str {
        "clickhouse"
    }

    fn write(&self, group: Arc<WriteGroup>) -> BoxFuture<'static, Result<()>> {
        let inner = self.inner.clone();
        Box::pin(async move { inner.write(group).await })
    }
}

impl Inner {
    fn backoff(&self, attempt: u32) -> Duration {
        // ±25 % jitter: many writers share one ClickHouse and must not retry in step.
        tracegate_pipeline::Backoff {
            initial: Duration::from_millis(self.cfg.retry_initial_ms),
            max: Duration::from_millis(self.cfg.retry_max_ms),
            jitter: 0.25,
        }
        .delay(attempt)
    }

    async fn write(self: Arc<Self>, group: Arc<WriteGroup>) -> Result<()> {
        let started = Instant::now();
        let (opts, rows, bytes) = (
            self.opts,
            self.cfg.max_insert_rows,
            self.cfg.max_insert_bytes,
        );
        let g = group.clone();
        let encoding =
            tokio::task::spawn_blocking(move || encode_group(&g.batches, opts, rows, bytes))
                .await
                .context("row encoding task")?;
        metrics::histogram!(m::CLICKHOUSE_ENCODE_DURATION).record(started.elapsed().as_secs_f64());

        // Batch index -> reason it goes to the dead-letter archive.
        let mut dead: BTreeMap<usize, &'static str> = BTreeMap::new();
        for (i, err) in &encoding.undecodable {
            tracing::error!(group = %group.id, batch = i, error = %err, "batch is not a readable OTLP request; dead-lettered");
            dead.insert(*i, "undecodable");
        }
        for chunk in &encoding.chunks {
            // In `Table::ALL` order: a payload row never exists without its row.
            for table in Table::ALL {
                let (data, n) = chunk.data(table);
                if n == 0 {
                    continue;
                }
                let token = format!("{}#{}", group.id, chunk.index);
                match self.insert(table, &token, data.clone(), n).await {
                    Ok(()) => {}
                    Err(InsertError::Stopped(e)) => {
                        return Err(anyhow::Error::new(e).context(format!(
                            "ClickHouse insert into {} failed and the writer is stopping",
                            table.name()
                        )))
                    }
                    Err(InsertError::Rejected(e)) => {
                        tracing::warn!(group = %group.id, table = table.name(), error = %e, "ClickHouse rejected an insert as malformed; retrying its batches one by one");
                        for (bi, ranges) in &chunk.parts {
                            let range = ranges[table.index()].clone();
                            if range.is_empty() {
                                continue;
                            }
                            let rows = count_rows(&group.batches[*bi]);
                            let token = format!("{}#{}.{}", group.id, chunk.index, bi);
                            match self.insert(table, &token, data.slice(range), rows).await {
                                Ok(()) => {}
                                Err(InsertError::Stopped(e)) => {
                                    return Err(anyhow::Error::new(e).context(
                                        "ClickHouse insert failed and the writer is stopping",
                                    ))
                                }
                                Err(InsertError::Rejected(e)) => {
                                    tracing::error!(group = %group.id, batch = bi, table = table.name(), error = %e, "ClickHouse rejected a batch; dead-lettered");
                                    dead.insert(*bi, "rejected");
                                }
                            }
                        }
                    }
                }
            }
        }
        if !dead.is_empty() {
            self.dead_letter(&group, &dead).await?;
        }
        metrics::histogram!(m::CLICKHOUSE_WRITE_DURATION).record(started.elapsed().as_secs_f64());
        Ok(())
    }

    /// Writes the dead batches once per group (the archive never replaces an object, so a
    /// group written again adds nothing), then counts them.
    async fn dead_letter(
        &self,
        group: &WriteGroup,
        dead: &BTreeMap<usize, &'static str>,
    ) -> Result<()> {
        let batches: Vec<Batch> = dead.keys().map(|i| group.batches[*i].clone()).collect();
        let dead_group = WriteGroup {
            id: group.id.clone(),
            batches,
            class: group.class,
        };
        self.dead_letter
            .write_group(Arc::new(dead_group))
            .await
            .context("writing the ClickHouse dead-letter archive")?;
        for reason in dead.values() {
            metrics::counter!(m::CLICKHOUSE_DEAD_LETTER_BATCHES, "reason" => *reason).increment(1);
        }
        Ok(())
    }

    /// One insert, retried on transient errors until it succeeds, is rejected, or the writer
    /// stops.
    async fn insert(
        &self,
        table: Table,
        token: &str,
        data: Bytes,
        rows: usize,
    ) -> Result<(), InsertError> {
        let mut attempt = 0u32;
        loop {
            let started = Instant::now();
            let (endpoint, client) = self.endpoints.pick();
            let r = self.insert_once(client, table, token, data.clone()).await;
            let t = table.name();
            match r {
                Ok(()) => {
                    metrics::counter!(m::CLICKHOUSE_INSERTS, "table" => t, "result" => "ok")
                        .increment(1);
                    metrics::counter!(m::CLICKHOUSE_ROWS, "table" => t).increment(rows as u64);
                    metrics::histogram!(m::CLICKHOUSE_INSERT_DURATION, "table" => t)
                        .record(started.elapsed().as_secs_f64());
                    if attempt > 0 {
                        tracing::info!(
                            token,
                            table = t,
                            attempt,
                            "ClickHouse insert succeeded after retries"
                        );
                    }
                    return Ok(());
                }
                Err(e) if is_rejection(&e) => {
                    metrics::counter!(m::CLICKHOUSE_INSERTS, "table" => t, "result" => "rejected")
                        .increment(1);
                    return Err(InsertError::Rejected(e));
                }
                Err(e) => {
                    metrics::counter!(m::CLICKHOUSE_INSERTS, "table" => t, "result" => "error")
                        .increment(1);
                    if self.stopping.is_cancelled() {
                        return Err(InsertError::Stopped(e));
                    }
                    // Another endpoint is up: the same insert (same token) goes there now.
                    if self.endpoints.failed(endpoint, &e) {
                        attempt += 1;
                        continue;
                    }
                    let wait = self.backoff(attempt);
                    // Log the first failures, then every 10th, so an outage does not flood.
                    if attempt < 3 || attempt.is_multiple_of(10) {
                        tracing::warn!(token, table = t, attempt, error = %e, retry_in_ms = wait.as_millis() as u64, "ClickHouse insert failed; retrying the same insert");
                    }
                    attempt += 1;
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = self.stopping.cancelled() => return Err(InsertError::Stopped(e)),
                    }
                }
            }
        }
    }

    async fn insert_once(
        &self,
        client: &clickhouse::Client,
        table: Table,
        token: &str,
        data: Bytes,
    ) -> Result<(), clickhouse::error::Error> {
        let codec = codec(&self.cfg);
        let frames = tokio::task::spawn_blocking(move || super::blocks::native(&data, codec))
            .await
            .map_err(|e| clickhouse::error::Error::Custom(e.to_string()))?
            .map_err(|e| clickhouse::error::Error::Custom(format!("{e:#}")))?;
        let sql = &self.sql[table.index()];
        let timeout = Duration::from_millis(self.cfg.insert_timeout_ms);
        let mut ins = client
            .insert_formatted_with(sql.clone())
            .with_timeouts(Some(timeout), Some(timeout))
            // Synchronous inserts: the answer means the rows are in a part on disk.
            .with_setting("async_insert", "0");
        ins = if self.cfg.insert_deduplication {
            ins.with_setting("insert_deduplicate", "1")
                .with_setting("insert_deduplication_token", token)
        } else {
            // Every attempt is a new insert. A unique token is needed as well: a MergeTree with
            // a deduplication window also drops a block whose *content hash* it has seen, and
            // chdb (ClickHouse 26.9) does so even with insert_deduplicate=0.
            let unique = format!("{token}@{:016x}", rand::random::<u64>());
            ins.with_setting("insert_deduplicate", "0")
                .with_setting("insert_deduplication_token", unique)
        };
        let all = async {
            for f in frames {
                ins.send(f).await?;
            }
            ins.end().await
        };
        match tokio::time::timeout(timeout + Duration::from_secs(5), all).await {
            Ok(r) => r,
            Err(_) => Err(clickhouse::error::Error::TimedOut),
        }
    }
}

/// Spans in a batch (for metrics of per-batch retries).
fn count_rows(b: &Batch) -> usize {
    b.span_count as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_are_parsed_and_classified() {
        let e = clickhouse::error::Error::BadResponse(
            "Code: 27. DB::Exception: Cannot parse input. (CANNOT_PARSE_INPUT_ASSERTION_FAILED)"
                .into(),
        );
        assert_eq!(error_code(&e), Some(27));
        assert!(is_rejection(&e));
        let e = clickhouse::error::Error::BadResponse(
            "Code: 60. DB::Exception: Unknown table. (UNKNOWN_TABLE)".into(),
        );
        assert!(!is_rejection(&e));
        assert!(!is_rejection(&clickhouse::error::Error::TimedOut));
        let e = clickhouse::error::Error::BadResponse("503 Service Unavailable".into());
        assert_eq!(error_code(&e), None);
    }

    #[test]
    fn chunks_are_cut_at_batch_boundaries_deterministically() {
        use tracegate_proto::otlp::collector::trace::v1::ExportTraceServiceRequest;
        use tracegate_proto::otlp::trace::v1::{ResourceSpans, ScopeSpans, Span};
        let batch = |n: u64| {
            let spans = (0..n)
                .map(|i| Span {
                    trace_id: vec![1; 16],
                    span_id: (i + 1).to_be_bytes().to_vec(),
                    ..Default::default()
                })
                .collect();
            let req = ExportTraceServiceRequest {
                resource_spans: vec![ResourceSpans {
                    scope_spans: vec![ScopeSpans {
                        spans,
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            };
            Batch {
                span_count: n as u32,
                otlp_request: prost::Message::encode_to_vec(&req).into(),
                ..Default::default()
            }
        };
        let mut batches: Vec<Batch> = (0..5).map(|_| batch(3)).collect();
        batches.insert(
            2,
            Batch {
                span_count: 1,
                otlp_request: vec![0x0a, 0x05, 1].into(),
                ..Default::default()
            },
        );
        let e = encode_group(&batches, EncodeOptions::default(), 6, usize::MAX);
        assert_eq!(e.undecodable.len(), 1);
        assert_eq!(e.undecodable[0].0, 2);
        let rows: Vec<usize> = e.chunks.iter().map(|c| c.rows[0]).collect();
        assert_eq!(rows, vec![6, 6, 3]);
        let again = encode_group(&batches, EncodeOptions::default(), 6, usize::MAX);
        for (a, b) in e.chunks.iter().zip(&again.chunks) {
            assert_eq!(a.data, b.data);
        }
    }

    /// One group of all three signals: each batch's rows go to its signal's tables, the cut is
    /// the same every time, and an unreadable log batch is set aside alone.
    #[test]
    fn a_mixed_group_fills_each_signals_tables() {
        use tracegate_proto::v1::Signal;
        let with = |signal: Signal, bytes: Vec<u8>, n: u32| {
            let mut b = Batch {
                batch_id: vec![9; 16].into(),
                span_count: n,
                otlp_request: bytes.into(),
                ..Default::default()
            };
            b.set_signal(signal);
            b
        };
        let spans = prost::Message::encode_to_vec(&tracegate_spangen::realistic_request(6, 1));
        let logs = prost::Message::encode_to_vec(&tracegate_spangen::realistic_logs(6, 0, 1));
        let points = prost::Message::encode_to_vec(&tracegate_spangen::realistic_metrics(6, 1));
        let group = vec![
            with(Signal::Logs, logs.clone(), 6),
            with(Signal::Traces, spans, 6),
            with(Signal::Metrics, points, 6),
            with(Signal::Logs, vec![0x0a, 0x05, 1], 1),
            with(Signal::Logs, logs, 6),
        ];
        let e = encode_group(&group, EncodeOptions::default(), 1000, usize::MAX);
        let bad: Vec<usize> = e.undecodable.iter().map(|(i, _)| *i).collect();
        assert_eq!(bad, vec![3]);
        assert_eq!(e.chunks.len(), 1);
        let rows = |t: Table| e.chunks[0].rows[t.index()];
        assert_eq!(rows(Table::Spans), 6);
        assert_eq!(rows(Table::Logs), 12);
        // A third each of sums, histograms and gauges (`tracegate_spangen::metrics_request`).
        assert_eq!(
            (rows(Table::Sum), rows(Table::Histogram), rows(Table::Gauge)),
            (2, 2, 2)
        );
        assert_eq!(rows(Table::Payloads) + rows(Table::LogPayloads), 0);
        // Each batch's byte ranges are in its own signal's tables only.
        let (_, ranges) = &e.chunks[0].parts[0];
        assert!(!ranges[Table::Logs.index()].is_empty() && ranges[Table::Spans.index()].is_empty());
        let again = encode_group(&group, EncodeOptions::default(), 1000, usize::MAX);
        assert_eq!(again.chunks[0].data, e.chunks[0].data);
    }

    #[test]
    fn compressed_payloads_encode_like_plain_ones() {
        use std::io::Write;
        use tracegate_proto::otlp::collector::trace::v1::ExportTraceServiceRequest;
        use tracegate_proto::otlp::trace::v1::{ResourceSpans, ScopeSpans, Span};
        use tracegate_proto::v1::PayloadEncoding;
        let req = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: (0..4u64)
                        .map(|i| Span {
                            trace_id: vec![2; 16],
                            span_id: (i + 1).to_be_bytes().to_vec(),
                            name: "n".repeat(3000),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let plain = prost::Message::encode_to_vec(&req);
        let id = Batch {
            schema_version: 1,
            span_count: 4,
            otlp_request: plain.clone().into(),
            ..Default::default()
        };
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&plain).unwrap();
        let with = |enc: PayloadEncoding, body: Vec<u8>, len: usize| Batch {
            schema_version: 2,
            otlp_request: body.into(),
            otlp_request_encoding: enc as i32,
            otlp_request_plain_len: len as u64,
            ..id.clone()
        };
        let z = with(
            PayloadEncoding::Zstd,
            zstd::encode_all(&plain[..], 3).unwrap(),
            plain.len(),
        );
        let g = with(PayloadEncoding::Gzip, gz.finish().unwrap(), plain.len());
        let want = encode_group(
            std::slice::from_ref(&id),
            EncodeOptions::default(),
            100,
            usize::MAX,
        );
        for b in [z.clone(), g] {
            assert!(b.otlp_request.len() < plain.len() / 10);
            let e = encode_group(&[b], EncodeOptions::default(), 100, usize::MAX);
            assert!(e.undecodable.is_empty());
            assert_eq!(e.chunks.len(), 1);
            assert_eq!(e.chunks[0].data, want.chunks[0].data);
            assert_eq!(e.chunks[0].rows[0], 4);
        }
        // A wrong declared length or an unknown encoding: dead-lettered, never rows of garbage.
        let mut short = z.clone();
        short.otlp_request_plain_len -= 1;
        let mut future = z;
        future.otlp_request_encoding = 9;
        let e = encode_group(
            &[short, id, future],
            EncodeOptions::default(),
            100,
            usize::MAX,
        );
        let bad: Vec<usize> = e.undecodable.iter().map(|(i, _)| *i).collect();
        assert_eq!(bad, vec![0, 2]);
        assert_eq!(e.chunks[0].rows[0], 4);
    }
}
