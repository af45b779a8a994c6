//! Counting and the report: HdrHistogram latencies (whole run and per second), outcomes by
//! status, the ids of acked / refused requests (for `verify`), and the per-second series the
//! plot draws.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Latencies are recorded in µs, 1 µs .. 10 min, 3 significant digits.
const MAX_US: u64 = 600_000_000;

pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_US, 3).expect("static histogram bounds")
}

fn record(h: &mut Histogram<u64>, d: Duration) {
    let us = (d.as_micros() as u64).clamp(1, MAX_US);
    // Cannot fail: the value is clamped into the histogram's range.
    let _ = h.record(us);
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

pub fn percentiles(h: &Histogram<u64>) -> Percentiles {
    if h.is_empty() {
        return Percentiles::default();
    }
    let ms = |v: u64| v as f64 / 1000.0;
    Percentiles {
        count: h.len(),
        mean_ms: h.mean() / 1000.0,
        p50_ms: ms(h.value_at_quantile(0.50)),
        p90_ms: ms(h.value_at_quantile(0.90)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        p999_ms: ms(h.value_at_quantile(0.999)),
        max_ms: ms(h.max()),
    }
}

/// How one attempt (one HTTP request / gRPC call) ended.
#[derive(Clone, Debug)]
pub enum Attempt {
    /// 200 / OK; spans the gateway reported as rejected in `partial_success`.
    Ok { rejected_spans: u64 },
    /// 429/502/503/504, gRPC UNAVAILABLE, or RESOURCE_EXHAUSTED with RetryInfo.
    Retryable {
        label: String,
        retry_after: Option<Duration>,
    },
    /// Every other refusal (400, 401, 413, ...): not retried, the spans are not stored.
    Final { label: String },
    /// Transport error or timeout: the outcome is unknown (the spans may be stored).
    Error { label: String },
}

/// How one request ended, after its retries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Acked,
    /// Refused (finally, or retryably with retries exhausted): the gateway said no.
    Refused,
    /// Error / timeout: may or may not be stored.
    Unknown,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SecondPoint {
    /// Seconds since the start (end of this one-second bucket).
    pub t: u64,
    /// Spans whose requests were scheduled in this second (open loop: the offered load).
    pub offered_spans: u64,
    pub acked_spans: u64,
    pub acked_requests: u64,
    /// Retryable refusals (every attempt) answered in this second.
    pub retryable_refusals: u64,
    pub final_refusals: u64,
    pub errors: u64,
    /// Latency of the requests acked in this second (from their intended send time).
    pub latency: Percentiles,
    /// RSS (KiB) of each watched process at the end of the second.
    pub rss_kib: Vec<u64>,
    /// CPU seconds each watched process used in this second.
    pub cpu_secs: Vec<f64>,
}

#[derive(Default)]
struct SecondAcc {
    offered_spans: u64,
    acked_spans: u64,
    acked_requests: u64,
    retryable_refusals: u64,
    final_refusals: u64,
    errors: u64,
}

pub struct Stats {
    pub latency: Histogram<u64>,
    /// Time from an attempt's send to its refusal (retryable or final).
    pub refusal_latency: Histogram<u64>,
    sec_hist: Histogram<u64>,
    sec: SecondAcc,
    pub series: Vec<SecondPoint>,
    /// Every attempt's answer by label (`http_200`, `http_503`, `grpc_unavailable`, ...).
    pub responses: BTreeMap<String, u64>,
    pub retryable_refusals: u64,
    pub retryable_with_retry_after: u64,
    pub retries: u64,
    /// Requests refused in the end, by the last answer's label.
    pub final_refused: BTreeMap<String, u64>,
    /// Requests that got only retryable refusals until their retries ran out.
    pub gave_up: BTreeMap<String, u64>,
    pub errors: BTreeMap<String, u64>,
    pub rejected_spans: u64,
    pub acked_requests: u64,
    pub acked_spans: u64,
    pub acked_ids: Vec<u64>,
    pub refused_ids: Vec<u64>,
    /// Requests scheduled (open loop) or started (closed loop).
    pub started_requests: u64,
    /// Largest delay between a request's intended and actual send time (open loop).
    pub max_send_lag: Duration,
    pub due_not_sent: u64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            latency: new_hist(),
            refusal_latency: new_hist(),
            sec_hist: new_hist(),
            sec: SecondAcc::default(),
            series: vec![],
            responses: BTreeMap::new(),
            retryable_refusals: 0,
            retryable_with_retry_after: 0,
            retries: 0,
            final_refused: BTreeMap::new(),
            gave_up: BTreeMap::new(),
            errors: BTreeMap::new(),
            rejected_spans: 0,
            acked_requests: 0,
            acked_spans: 0,
            acked_ids: vec![],
            refused_ids: vec![],
            started_requests: 0,
            max_send_lag: Duration::ZERO,
            due_not_sent: 0,
        }
    }
}

fn label_of(a: &Attempt) -> &str {
    match a {
        Attempt::Ok { .. } => "ok",
        Attempt::Retryable { label, .. } | Attempt::Final { label } | Attempt::Error { label } => {
            label
        }
    }
}

impl Stats {
    pub fn offered(&mut self, spans: u64, lag: Duration) {
        self.started_requests += 1;
        self.sec.offered_spans += spans;
        self.max_send_lag = self.max_send_lag.max(lag);
    }

    /// One attempt's answer (`rtt`: its own round trip).
    pub fn attempt(&mut self, a: &Attempt, rtt: Duration) {
        *self.responses.entry(label_of(a).to_string()).or_default() += 1;
        match a {
            Attempt::Retryable { retry_after, .. } => {
                self.retryable_refusals += 1;
                self.sec.retryable_refusals += 1;
                if retry_after.is_some() {
                    self.retryable_with_retry_after += 1;
                }
                record(&mut self.refusal_latency, rtt);
            }
            Attempt::Final { .. } => record(&mut self.refusal_latency, rtt),
            Attempt::Ok { .. } | Attempt::Error { .. } => {}
        }
    }

    /// A request's end: its last attempt, latency from its intended send time.
    pub fn finished(&mut self, id: u64, spans: u64, last: &Attempt, latency: Duration) -> Outcome {
        match last {
            Attempt::Ok { rejected_spans } => {
                self.acked_requests += 1;
                self.acked_spans += spans.saturating_sub(*rejected_spans);
                self.rejected_spans += rejected_spans;
                self.acked_ids.push(id);
                self.sec.acked_requests += 1;
                self.sec.acked_spans += spans.saturating_sub(*rejected_spans);
                record(&mut self.latency, latency);
                record(&mut self.sec_hist, latency);
                Outcome::Acked
            }
            Attempt::Retryable { label, .. } => {
                *self.gave_up.entry(label.clone()).or_default() += 1;
                self.refused_ids.push(id);
                Outcome::Refused
            }
            Attempt::Final { label } => {
                *self.final_refused.entry(label.clone()).or_default() += 1;
                self.refused_ids.push(id);
                self.sec.final_refusals += 1;
                Outcome::Refused
            }
            Attempt::Error { label } => {
                *self.errors.entry(label.clone()).or_default() += 1;
                self.sec.errors += 1;
                Outcome::Unknown
            }
        }
    }

    /// Closes the current one-second bucket.
    pub fn roll(&mut self, t: u64, rss_kib: Vec<u64>, cpu_secs: Vec<f64>) {
        let s = std::mem::take(&mut self.sec);
        self.series.push(SecondPoint {
            t,
            offered_spans: s.offered_spans,
            acked_spans: s.acked_spans,
            acked_requests: s.acked_requests,
            retryable_refusals: s.retryable_refusals,
            final_refusals: s.final_refusals,
            errors: s.errors,
            latency: percentiles(&self.sec_hist),
            rss_kib,
            cpu_secs,
        });
        self.sec_hist.reset();
    }
}

/// Sorted request ids → merged inclusive span sequence ranges.
pub fn span_ranges(mut req_ids: Vec<u64>, spans_per_request: u64) -> Vec<[u64; 2]> {
    req_ids.sort_unstable();
    req_ids.dedup();
    let mut out: Vec<[u64; 2]> = vec![];
    for r in req_ids {
        let a = crate::ids::first_seq(r, spans_per_request);
        let b = a + spans_per_request - 1;
        match out.last_mut() {
            Some(last) if last[1] + 1 == a => last[1] = b,
            _ => out.push([a, b]),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_adjacent_requests() {
        assert_eq!(
            span_ranges(vec![3, 0, 1, 5], 10),
            vec![[1, 20], [31, 40], [51, 60]]
        );
        assert!(span_ranges(vec![], 10).is_empty());
    }

    #[test]
    fn outcomes_are_counted_apart() {
        let mut s = Stats::default();
        let r503 = Attempt::Retryable {
            label: "http_503".into(),
            retry_after: Some(Duration::from_secs(1)),
        };
        s.attempt(&r503, Duration::from_millis(1));
        s.attempt(&Attempt::Ok { rejected_spans: 0 }, Duration::from_millis(5));
        assert_eq!(
            s.finished(
                0,
                10,
                &Attempt::Ok { rejected_spans: 0 },
                Duration::from_millis(7)
            ),
            Outcome::Acked
        );
        let r400 = Attempt::Final {
            label: "http_400".into(),
        };
        s.attempt(&r400, Duration::from_millis(1));
        assert_eq!(
            s.finished(1, 10, &r400, Duration::from_millis(1)),
            Outcome::Refused
        );
        assert_eq!(s.retryable_refusals, 1);
        assert_eq!(s.retryable_with_retry_after, 1);
        assert_eq!(s.final_refused["http_400"], 1);
        assert_eq!(s.acked_spans, 10);
        let p = percentiles(&s.latency);
        assert!(p.p50_ms >= 6.9 && p.p50_ms <= 7.1, "{p:?}");
        s.roll(1, vec![], vec![]);
        assert_eq!(s.series[0].acked_spans, 10);
        assert_eq!(s.series[0].final_refusals, 1);
    }
}
