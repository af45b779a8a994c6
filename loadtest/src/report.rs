//! The run's report (`--report FILE`, JSON) and its one summary line on stdout: what was sent,
//! acked, refused and unknown (by request, span and id range), the answers, latencies and the
//! watched processes.

use serde::{Deserialize, Serialize};

use crate::config::RunConfig;
use crate::ids;
use crate::procstat::Watched;
use crate::stats::{percentiles, span_ranges, Percentiles, SecondPoint, Stats};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RequestCounts {
    /// Requests started (each possibly retried).
    pub sent: u64,
    pub acked: u64,
    /// Refused in the end: a final refusal, or retryable refusals until the retries ran out.
    pub refused: u64,
    /// Errors and timeouts, and requests still unanswered at the drain deadline.
    pub unknown: u64,
    /// Attempts (first sends + retries).
    pub attempts: u64,
    pub retries: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SpanCounts {
    pub sent: u64,
    /// In acked requests, minus `partial_success.rejected_spans`.
    pub acked: u64,
    pub rejected_in_partial_success: u64,
    pub refused: u64,
    pub unknown: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Refusals {
    /// Attempts answered with a retryable refusal (429/502/503/504, gRPC UNAVAILABLE or
    /// RESOURCE_EXHAUSTED with RetryInfo).
    pub retryable: u64,
    /// Of those, how many carried Retry-After / RetryInfo.
    pub retryable_with_retry_after: u64,
    /// Requests refused finally (not retryable: 400, 401, 403, 413, ...), by answer.
    pub final_by_status: std::collections::BTreeMap<String, u64>,
    /// Requests whose retries ran out on retryable refusals, by last answer.
    pub gave_up_by_status: std::collections::BTreeMap<String, u64>,
    pub errors_by_kind: std::collections::BTreeMap<String, u64>,
    /// Latency of refusals (send → refusal), per attempt.
    pub refusal_latency: Percentiles,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub tool: String,
    pub version: String,
    pub run_id: String,
    pub started_at: String,
    pub config: serde_json::Value,
    /// The template request: encoded bytes before and after compression (HTTP), spans.
    pub request_bytes: u64,
    pub request_body_bytes: u64,
    pub elapsed_secs: f64,
    pub requests: RequestCounts,
    pub spans: SpanCounts,
    /// Every attempt's answer by label (`http_200`, `http_503`, `grpc_ok`, ...).
    pub responses: std::collections::BTreeMap<String, u64>,
    pub refusals: Refusals,
    pub acked_spans_per_sec: f64,
    pub offered_spans_per_sec: Option<f64>,
    /// Latency of acked requests, from the intended send time (open loop) or the send (closed
    /// loop) to the 200, retries included.
    pub latency: Percentiles,
    pub max_send_lag_ms: f64,
    /// Open loop: requests that fell due before the end but were never sent, because
    /// `--concurrency` requests were still in flight (the offered load was not delivered).
    pub due_not_sent: u64,
    pub load_generator: Option<crate::procstat::Watched>,
    pub watched: Vec<crate::procstat::Watched>,
    pub series: Vec<SecondPoint>,
    /// False with --body-pool (ids repeat): `verify` refuses such a report.
    pub ids_unique: bool,
    pub spans_per_request: u64,
    pub id_layout: String,
    /// Inclusive span sequence ranges of acked / refused / unknown requests.
    pub acked_ranges: Vec<[u64; 2]>,
    pub refused_ranges: Vec<[u64; 2]>,
    pub unknown_ranges: Vec<[u64; 2]>,
}

pub const ID_LAYOUT: &str =
    "trace_id = run_id (u64 BE) || seq of the trace's first span (u64 BE); \
span_id = span seq (u64 BE, from 1); parent_span_id = seq - 1 within a trace of 8; request r of n \
spans carries seqs r*n+1 ..= r*n+n";

/// The run's facts that are not in [`Stats`].
pub struct Run<'a> {
    pub cfg: &'a RunConfig,
    pub run_id: u64,
    pub started_at: String,
    /// The template request's encoded size, before and after compression.
    pub sizes: (u64, u64),
    pub elapsed: f64,
    /// Requests started.
    pub sent: u64,
}

/// The report from the run's statistics (which it takes the id lists and series from).
pub fn assemble(
    st: &mut Stats,
    run: Run<'_>,
    mut watched: Vec<Watched>,
    mut me: Watched,
) -> anyhow::Result<Report> {
    let Run {
        cfg,
        run_id,
        started_at,
        sizes: (request_bytes, request_body_bytes),
        elapsed,
        sent,
    } = run;
    let n = cfg.spans_per_request;
    let acked_ids = std::mem::take(&mut st.acked_ids);
    let refused_ids = std::mem::take(&mut st.refused_ids);
    let mut known = vec![false; sent as usize];
    for &r in acked_ids.iter().chain(refused_ids.iter()) {
        if let Some(k) = known.get_mut(r as usize) {
            *k = true;
        }
    }
    let unknown_ids: Vec<u64> = (0..sent).filter(|&r| !known[r as usize]).collect();
    let ids_unique = cfg.body_pool == 0;
    let acked_spans_per_sec = st.acked_spans as f64 / elapsed.max(1e-9);
    for w in watched.iter_mut().chain(std::iter::once(&mut me)) {
        w.acked_spans_per_cpu_sec = if w.cpu_secs > 0.0 {
            st.acked_spans as f64 / w.cpu_secs
        } else {
            0.0
        };
    }
    let attempts: u64 = st.responses.values().sum();
    let report = Report {
        tool: "loadtest".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        run_id: ids::run_id_hex(run_id),
        started_at,
        config: serde_json::to_value(cfg)?,
        request_bytes,
        request_body_bytes,
        elapsed_secs: elapsed,
        requests: RequestCounts {
            sent,
            acked: st.acked_requests,
            refused: refused_ids.len() as u64,
            unknown: unknown_ids.len() as u64,
            attempts,
            retries: st.retries,
        },
        spans: SpanCounts {
            sent: sent * n,
            acked: st.acked_spans,
            rejected_in_partial_success: st.rejected_spans,
            refused: refused_ids.len() as u64 * n,
            unknown: unknown_ids.len() as u64 * n,
        },
        responses: st.responses.clone(),
        refusals: Refusals {
            retryable: st.retryable_refusals,
            retryable_with_retry_after: st.retryable_with_retry_after,
            final_by_status: st.final_refused.clone(),
            gave_up_by_status: st.gave_up.clone(),
            errors_by_kind: st.errors.clone(),
            refusal_latency: percentiles(&st.refusal_latency),
        },
        acked_spans_per_sec,
        offered_spans_per_sec: cfg.rate,
        latency: percentiles(&st.latency),
        max_send_lag_ms: st.max_send_lag.as_secs_f64() * 1000.0,
        due_not_sent: st.due_not_sent,
        load_generator: Some(me),
        watched,
        series: std::mem::take(&mut st.series),
        ids_unique,
        spans_per_request: n,
        id_layout: ID_LAYOUT.into(),
        acked_ranges: if ids_unique {
            span_ranges(acked_ids, n)
        } else {
            vec![]
        },
        refused_ranges: if ids_unique {
            span_ranges(refused_ids, n)
        } else {
            vec![]
        },
        unknown_ranges: if ids_unique {
            span_ranges(unknown_ids, n)
        } else {
            vec![]
        },
    };
    Ok(report)
}

/// The one summary line on stdout (stable keys; scripts parse it).
pub fn summary_line(r: &Report) -> String {
    let failures = r
        .responses
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "ok"))
        .map(|(k, v)| format!("{k}:{v}"))
        .collect::<Vec<_>>()
        .join(",");
    format!(
        "loadtest run_id={} protocol={} seconds={:.1} requests_ok={} requests_refused={} \
         requests_unknown={} retries={} spans_ok={} spans_per_sec={:.0} p50_ms={:.1} \
         p99_ms={:.1} p999_ms={:.1} max_ms={:.1} retryable_refusals={} due_not_sent={} failures={}",
        r.run_id,
        r.config["protocol"].as_str().unwrap_or("?"),
        r.elapsed_secs,
        r.requests.acked,
        r.requests.refused,
        r.requests.unknown,
        r.requests.retries,
        r.spans.acked,
        r.acked_spans_per_sec,
        r.latency.p50_ms,
        r.latency.p99_ms,
        r.latency.p999_ms,
        r.latency.max_ms,
        r.refusals.retryable,
        r.due_not_sent,
        if failures.is_empty() {
            "-".into()
        } else {
            failures
        },
    )
}
