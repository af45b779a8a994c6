//! `loadtest compare`: the same load against two or more OTLP endpoints, back to back in one
//! invocation, with their figures side by side.
//!
//! Why a mode of its own: on a shared machine absolute throughput drifts by tens of percent
//! between runs minutes apart, while a ratio taken within one run holds (issue 21). Rounds
//! alternate the order (A B, then B A, ...) so a drift over the run falls on every target
//! alike, and the summary takes each target's median over its rounds. Any OTLP endpoint works
//! (another collector the user runs: Rotel, the OTel Collector); `pid=` names the process whose
//! CPU time gives the per-core figures, which are the ones to compare.

use serde::Serialize;

use crate::report::Report;

/// One endpoint to load: `LABEL=URL[,pid=PID][,key=KEY][,key-file=FILE]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    pub label: String,
    pub endpoint: String,
    pub pid: Option<u32>,
    pub key: Option<String>,
    pub key_file: Option<std::path::PathBuf>,
}

/// Parses `--target`. The URL ends at the first comma (URLs of OTLP endpoints have none).
pub fn parse_target(s: &str) -> Result<Target, String> {
    let (label, rest) = s
        .split_once('=')
        .ok_or_else(|| format!("--target {s:?}: expected LABEL=URL[,pid=PID][,key=KEY]"))?;
    let label = label.trim();
    if label.is_empty() || label.contains(char::is_whitespace) {
        return Err(format!("--target {s:?}: the label must be one word"));
    }
    let mut parts = rest.split(',');
    let endpoint = parts.next().unwrap_or_default().trim().to_string();
    if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
        return Err(format!(
            "--target {label}: {endpoint:?} is not an http:// or https:// URL"
        ));
    }
    let mut t = Target {
        label: label.into(),
        endpoint,
        pid: None,
        key: None,
        key_file: None,
    };
    for p in parts {
        match p.split_once('=') {
            Some(("pid", v)) => {
                t.pid = Some(
                    v.parse()
                        .map_err(|_| format!("--target {label}: pid={v:?} is not a process id"))?,
                )
            }
            Some(("key", v)) => t.key = Some(v.into()),
            Some(("key-file", v)) => t.key_file = Some(v.into()),
            _ => {
                return Err(format!(
                    "--target {label}: unknown option {:?} (pid=, key=, key-file=)",
                    p.split('=').next().unwrap_or(p)
                ))
            }
        }
    }
    Ok(t)
}

/// The order of the targets in round `round`: forwards in even rounds, backwards in odd ones.
pub fn order(targets: usize, round: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (0..targets).collect();
    if round % 2 == 1 {
        v.reverse();
    }
    v
}

/// One target's figures in one round.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub label: String,
    pub round: usize,
    pub spans_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Acked spans per CPU-second of the target's process (`pid=`).
    pub spans_per_cpu_sec: Option<f64>,
    /// Uncompressed OTLP bytes per CPU-second of the target's process: what cost-follows-bytes
    /// compares across shapes.
    pub bytes_per_cpu_sec: Option<f64>,
    pub rss_max_kib: Option<u64>,
    /// Requests refused or unanswered (a target that refuses load is not faster).
    pub requests_failed: u64,
}

impl Row {
    pub fn from_report(label: &str, round: usize, r: &Report) -> Row {
        let w = r.watched.first();
        let per_span_bytes = r.request_bytes as f64 / r.spans_per_request.max(1) as f64;
        let cpu = w.map(|w| w.acked_spans_per_cpu_sec).filter(|v| *v > 0.0);
        Row {
            label: label.into(),
            round,
            spans_per_sec: r.acked_spans_per_sec,
            p50_ms: r.latency.p50_ms,
            p99_ms: r.latency.p99_ms,
            spans_per_cpu_sec: cpu,
            bytes_per_cpu_sec: cpu.map(|c| c * per_span_bytes),
            rss_max_kib: w.map(|w| w.rss_max_kib),
            requests_failed: r.requests.refused + r.requests.unknown,
        }
    }
}

/// A target's medians over its rounds.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub label: String,
    pub rounds: usize,
    pub spans_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub spans_per_cpu_sec: Option<f64>,
    pub bytes_per_cpu_sec: Option<f64>,
    pub requests_failed: u64,
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Each label's medians, in the order the labels first appear.
pub fn summarise(rows: &[Row]) -> Vec<Summary> {
    let mut labels: Vec<&str> = Vec::new();
    for r in rows {
        if !labels.contains(&r.label.as_str()) {
            labels.push(&r.label);
        }
    }
    labels
        .into_iter()
        .map(|l| {
            let mine: Vec<&Row> = rows.iter().filter(|r| r.label == l).collect();
            let opt = |f: fn(&Row) -> Option<f64>| {
                let v: Vec<f64> = mine.iter().filter_map(|r| f(r)).collect();
                (v.len() == mine.len()).then(|| median(v))
            };
            Summary {
                label: l.into(),
                rounds: mine.len(),
                spans_per_sec: median(mine.iter().map(|r| r.spans_per_sec).collect()),
                p50_ms: median(mine.iter().map(|r| r.p50_ms).collect()),
                p99_ms: median(mine.iter().map(|r| r.p99_ms).collect()),
                spans_per_cpu_sec: opt(|r| r.spans_per_cpu_sec),
                bytes_per_cpu_sec: opt(|r| r.bytes_per_cpu_sec),
                requests_failed: mine.iter().map(|r| r.requests_failed).sum(),
            }
        })
        .collect()
}

fn num(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.0}"))
}

/// The side-by-side table: one line per round and target, then the medians, each with its
/// ratio to the first target.
pub fn table(rows: &[Row], sums: &[Summary]) -> String {
    let mut out = format!(
        "{:<12} {:>5} {:>12} {:>9} {:>9} {:>14} {:>12} {:>7}\n",
        "target", "round", "spans/s", "p50_ms", "p99_ms", "spans/cpu-s", "MB/cpu-s", "failed"
    );
    let mb = |v: Option<f64>| v.map(|b| b / 1e6);
    for r in rows {
        out += &format!(
            "{:<12} {:>5} {:>12.0} {:>9.1} {:>9.1} {:>14} {:>12} {:>7}\n",
            r.label,
            r.round + 1,
            r.spans_per_sec,
            r.p50_ms,
            r.p99_ms,
            num(r.spans_per_cpu_sec),
            mb(r.bytes_per_cpu_sec).map_or("-".into(), |v| format!("{v:.1}")),
            r.requests_failed
        );
    }
    let base = sums.first();
    for s in sums {
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
            _ => "-".into(),
        };
        out += &format!(
            "{:<12} {:>5} {:>12.0} {:>9.1} {:>9.1} {:>14} {:>12} {:>7}   vs {}: spans/s {}, per cpu-s {}\n",
            s.label,
            "med",
            s.spans_per_sec,
            s.p50_ms,
            s.p99_ms,
            num(s.spans_per_cpu_sec),
            mb(s.bytes_per_cpu_sec).map_or("-".into(), |v| format!("{v:.1}")),
            s.requests_failed,
            base.map_or("-", |b| b.label.as_str()),
            ratio(Some(s.spans_per_sec), base.map(|b| b.spans_per_sec)),
            ratio(s.spans_per_cpu_sec, base.and_then(|b| b.spans_per_cpu_sec)),
        );
    }
    out
}

/// One stable line per target for scripts.
pub fn summary_line(s: &Summary) -> String {
    format!(
        "loadtest compare target={} rounds={} spans_per_sec={:.0} spans_per_cpu_sec={} \
         bytes_per_cpu_sec={} p50_ms={:.1} p99_ms={:.1} requests_failed={}",
        s.label,
        s.rounds,
        s.spans_per_sec,
        num(s.spans_per_cpu_sec),
        num(s.bytes_per_cpu_sec),
        s.p50_ms,
        s.p99_ms,
        s.requests_failed
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_with_options_and_bad_ones_are_named() {
        let t = parse_target("rotel=http://127.0.0.1:4318,pid=42").unwrap();
        assert_eq!(t.label, "rotel");
        assert_eq!(t.endpoint, "http://127.0.0.1:4318");
        assert_eq!(t.pid, Some(42));
        assert_eq!(t.key, None);
        let t = parse_target("tg=https://[::1]:4318,key=tg_x,key-file=/k").unwrap();
        assert_eq!(t.key.as_deref(), Some("tg_x"));
        assert_eq!(t.key_file.as_deref(), Some(std::path::Path::new("/k")));
        for (bad, says) in [
            ("http://x:1", "LABEL=URL"),
            ("a=ftp://x", "not an http"),
            ("a=http://x,pid=me", "not a process id"),
            ("a=http://x,colour=red", "unknown option \"colour\""),
            (" =http://x", "one word"),
        ] {
            let e = parse_target(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn rounds_alternate_the_order() {
        assert_eq!(order(2, 0), vec![0, 1]);
        assert_eq!(order(2, 1), vec![1, 0]);
        assert_eq!(order(3, 3), vec![2, 1, 0]);
    }

    fn row(label: &str, round: usize, sps: f64, cpu: Option<f64>) -> Row {
        Row {
            label: label.into(),
            round,
            spans_per_sec: sps,
            p50_ms: 1.0,
            p99_ms: 2.0 + round as f64,
            spans_per_cpu_sec: cpu,
            bytes_per_cpu_sec: cpu.map(|c| c * 1000.0),
            rss_max_kib: None,
            requests_failed: round as u64,
        }
    }

    #[test]
    fn medians_per_target_and_ratios_to_the_first() {
        let rows = vec![
            row("a", 0, 100.0, Some(10.0)),
            row("b", 0, 50.0, None),
            row("b", 1, 70.0, Some(4.0)),
            row("a", 1, 300.0, Some(30.0)),
            row("a", 2, 200.0, Some(20.0)),
        ];
        let s = summarise(&rows);
        assert_eq!(s.len(), 2);
        assert_eq!((s[0].label.as_str(), s[0].rounds), ("a", 3));
        assert_eq!(s[0].spans_per_sec, 200.0);
        assert_eq!(s[0].spans_per_cpu_sec, Some(20.0));
        assert_eq!(s[0].bytes_per_cpu_sec, Some(20_000.0));
        assert_eq!(s[0].p99_ms, 3.0);
        assert_eq!(s[0].requests_failed, 3);
        assert_eq!(
            s[1].spans_per_sec, 60.0,
            "even count: mean of the middle two"
        );
        assert_eq!(
            s[1].spans_per_cpu_sec, None,
            "a round without the pid figure"
        );
        let t = table(&rows, &s);
        assert!(t.contains("vs a: spans/s 0.30x, per cpu-s -"), "{t}");
        assert!(t.contains("vs a: spans/s 1.00x, per cpu-s 1.00x"), "{t}");
        assert_eq!(t.lines().count(), 1 + 5 + 2);
        let line = summary_line(&s[0]);
        assert!(line.starts_with("loadtest compare target=a rounds=3 spans_per_sec=200 "));
        assert!(
            line.contains("spans_per_cpu_sec=20 bytes_per_cpu_sec=20000"),
            "{line}"
        );
    }
}
