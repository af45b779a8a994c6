//! The alert rules (deploy/prometheus/) and the Grafana dashboards (deploy/grafana/) only name
//! metrics that the real processes export. An alert on a misspelt or renamed metric never fires
//! and a dashboard panel on one stays empty, silently; this test makes that a failure.
//!
//! It starts every kind of process a deployment runs, each on its real code path:
//! - `tracegate serve` with `[kafka]` (the test broker) and TLS on the OTLP listeners
//!   (producer, receiver and certificate metrics),
//! - `tracegate serve` on embedded defaults (the embedded queue and archive writer),
//! - `tracegate write` with `[kafka]` and `[clickhouse]` (consumer, writer, archive and
//!   ClickHouse sink metrics; nothing is sent, so ClickHouse is never contacted),
//!
//! scrapes each admin `/metrics`, and asserts that every `tracegate_*` name found in those
//! files is among the exported series names. No data is sent: every series a rule needs must
//! exist from start-up (gateway/src/metrics.rs `register`), as absent series make alerts blind.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Gateway, TestBroker, Writer};

const TOPIC: &str = "tracegate-deploy-metrics";

/// Metric names referenced in a rules or dashboard file: every token `tracegate_[a-z0-9_]+`
/// that is not part of a longer identifier (a job name like `tracegate-gateway` or a recording
/// rule `tracegate:…` is not a metric of ours). The whole text is scanned, annotations and
/// descriptions included, so a name in a runbook hint is held to the same rule.
fn referenced_names(text: &str) -> BTreeSet<String> {
    const PREFIX: &str = "tracegate_";
    let bytes = text.as_bytes();
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
    let mut out = BTreeSet::new();
    let mut i = 0;
    while let Some(pos) = text[i..].find(PREFIX) {
        let start = i + pos;
        let mut end = start + PREFIX.len();
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        let standalone = start == 0 || !ident(bytes[start - 1]);
        let followed_by_colon = end < bytes.len() && bytes[end] == b':';
        if standalone && !followed_by_colon && end > start + PREFIX.len() {
            out.insert(text[start..end].to_string());
        }
        i = end;
    }
    out
}

/// Series names in a Prometheus text exposition (`name{labels} value` or `name value`).
fn exported_names(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

fn missing(referenced: &BTreeSet<String>, exported: &BTreeSet<String>) -> Vec<String> {
    referenced.difference(exported).cloned().collect()
}

fn deploy_dir() -> PathBuf {
    common::manifest_dir().join("../deploy")
}

/// Every rules file and dashboard: deploy/prometheus/*.y*ml and deploy/grafana/*.json.
fn monitoring_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for (dir, exts) in [
        ("prometheus", &["yaml", "yml"][..]),
        ("grafana", &["json"][..]),
    ] {
        let d = deploy_dir().join(dir);
        for e in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let p = e.unwrap().path();
            if p.extension()
                .and_then(|x| x.to_str())
                .is_some_and(|x| exts.contains(&x))
            {
                files.push(p);
            }
        }
    }
    files.sort();
    files
}

#[test]
fn extractor_finds_names_and_a_bogus_one_is_reported_missing() {
    let rules = r#"
groups:
  - name: g
    rules:
      - alert: A
        expr: sum(rate(tracegate_requests_total{status="unavailable"}[5m])) > 0
      - alert: B
        expr: histogram_quantile(0.99, sum by (le) (rate(tracegate_request_duration_seconds_bucket[5m])))
      - alert: C
        expr: up{job="tracegate-gateway"} == 0 and tracegate:recorded:rate5m > 1
        annotations: {summary: "see tracegate_bogus_metric_total", runbook: docs/operations.md#tracegatec}
"#;
    let dashboard = r#"{"targets":[{"expr":"sum(tracegate_spans_accepted_total)"}],"uid":"tracegate-overview"}"#;
    let mut refs = referenced_names(rules);
    refs.extend(referenced_names(dashboard));
    let want: BTreeSet<String> = [
        "tracegate_bogus_metric_total",
        "tracegate_request_duration_seconds_bucket",
        "tracegate_requests_total",
        "tracegate_spans_accepted_total",
    ]
    .map(String::from)
    .into();
    assert_eq!(refs, want);

    let exposition = "\
# HELP tracegate_requests_total Export requests by transport and status
# TYPE tracegate_requests_total counter
tracegate_requests_total{transport=\"http\",status=\"ok\"} 0
tracegate_request_duration_seconds_bucket{transport=\"http\",le=\"0.5\"} 0
tracegate_request_duration_seconds_sum{transport=\"http\"} 0
tracegate_spans_accepted_total 0
";
    let exported = exported_names(exposition);
    assert!(exported.contains("tracegate_spans_accepted_total"));
    assert!(!exported.contains("tracegate_request_duration_seconds"));
    assert_eq!(
        missing(&refs, &exported),
        vec!["tracegate_bogus_metric_total".to_string()]
    );
}

#[test]
fn every_metric_in_deploy_rules_and_dashboards_is_exported() {
    let files = monitoring_files();
    let mut referenced = BTreeSet::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let names = referenced_names(&text);
        assert!(
            !names.is_empty(),
            "{} names no tracegate_ metric; is it a rules file or dashboard?",
            f.display()
        );
        referenced.extend(names);
    }
    assert!(
        files.iter().any(|f| f.ends_with("prometheus/alerts.yaml"))
            && files.iter().any(|f| f.ends_with("grafana/tracegate.json")),
        "expected the alert rules and the dashboard among {files:?}"
    );
    // The rules and dashboard use dozens of metrics; a handful means the scan is broken.
    assert!(
        referenced.len() >= 30,
        "only {} names found: {referenced:?}",
        referenced.len()
    );

    // TLS on the Kafka gateway's OTLP listeners, for the certificate expiry gauge.
    let tls_dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
    params.not_after = rcgen::date_time_ymd(2049, 9, 10); // 2514844800 (Unix seconds)
    let cert = params.self_signed(&key).unwrap();
    let cert_file = tls_dir.path().join("tls.crt");
    let key_file = tls_dir.path().join("tls.key");
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();

    let broker = TestBroker::start(&[(TOPIC, 2)]);
    let mut env = broker.env(TOPIC);
    env.push((
        "TRACEGATE_TLS__CERT_FILE".into(),
        cert_file.display().to_string(),
    ));
    env.push((
        "TRACEGATE_TLS__KEY_FILE".into(),
        key_file.display().to_string(),
    ));
    let kafka_gw = Gateway::start(&common::env_refs(&env));
    let embedded_gw = Gateway::start(&[]);

    let wr_dir = tempfile::tempdir().unwrap();
    let cfg = wr_dir.path().join("writer.toml");
    std::fs::write(
        &cfg,
        format!(
            "[kafka]\nbrokers = \"{}\"\ntopic = \"{TOPIC}\"\ngroup_id = \"deploy-metrics\"\n\
             session_timeout_ms = 6000\n\
             [clickhouse]\nurl = \"http://127.0.0.1:9\"\n",
            broker.bootstrap
        ),
    )
    .unwrap();
    let writer = Writer::start(&wr_dir.path().join("data"), Some(&cfg), &[]);

    // Series registered at start-up are there at once; librdkafka's statistics (brokers up,
    // RTT) arrive every kafka.statistics_interval_ms (1 s). Wait for those, bounded.
    let mut exported = BTreeSet::new();
    let mut left = Vec::new();
    let ok = common::wait_until(Duration::from_secs(30), || {
        exported = exported_names(&kafka_gw.metrics());
        exported.extend(exported_names(&embedded_gw.metrics()));
        exported.extend(exported_names(&writer.metrics().unwrap_or_default()));
        left = missing(&referenced, &exported);
        left.is_empty()
    });
    assert!(
        ok,
        "metrics used in {files:?} but not exported by the gateway (Kafka, embedded) or the \
         writer: {left:?}\n(exported: {exported:?})"
    );

    // Latencies are histograms, which add up across brokers, windows and instances; no family
    // is a precomputed quantile (a p99 of p99s means nothing).
    let quantile_gauges: Vec<&String> = exported
        .iter()
        .filter(|n| {
            n.split('_').any(|w| {
                w.len() > 1 && w.starts_with('p') && w[1..].bytes().all(|b| b.is_ascii_digit())
            })
        })
        .collect();
    assert!(
        quantile_gauges.is_empty(),
        "quantile gauges: {quantile_gauges:?}"
    );
    // librdkafka's round-trip windows reach the histogram: each client talks to the broker
    // (metadata, produce, group coordination) within a few statistics intervals.
    let rtt_count = |text: &str, client: &str| {
        common::metric_value(
            text,
            &format!("tracegate_kafka_broker_rtt_seconds_count{{client=\"{client}\"}}"),
        )
    };
    assert!(
        common::wait_until(Duration::from_secs(30), || {
            rtt_count(&kafka_gw.metrics(), "producer") > 0.0
                && rtt_count(&writer.metrics().unwrap_or_default(), "consumer") > 0.0
        }),
        "no broker round trips recorded:\n{}",
        kafka_gw.metrics()
    );

    // The certificate expiry alert reads the served certificate's real notAfter, per listener.
    let text = kafka_gw.metrics();
    for listener in ["otlp_http", "otlp_grpc"] {
        let series =
            format!("tracegate_tls_cert_not_after_timestamp_seconds{{listener=\"{listener}\"}}");
        let value = text
            .lines()
            .find_map(|l| l.strip_prefix(&series))
            .and_then(|v| v.trim().parse::<f64>().ok());
        assert_eq!(value, Some(2_514_844_800.0), "{series} in:\n{text}");
    }
}

/// Every tracegate config shipped in deploy/ (Kubernetes base and overlays, compose) is read by
/// the real config types and passes `Config::validate`: an unknown or misspelt key, a bad value
/// or a broken relation between keys fails here, not at a customer's start-up. (Secret files
/// are not read: they exist only where the Secrets are mounted.)
#[test]
fn deploy_configs_load_with_the_real_config_code() {
    fn tomls(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                tomls(&p, out);
            } else if p.extension().is_some_and(|x| x == "toml")
                && p.file_name().is_some_and(|n| n != "Cargo.toml")
            {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    tomls(&deploy_dir(), &mut files);
    files.sort();
    assert!(
        files.len() >= 5,
        "expected the base, overlay and compose configs, found {files:?}"
    );
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let cfg: tracegate::config::Config = toml::from_str(&text).unwrap_or_else(|e| {
            panic!("{}: does not parse as a tracegate config: {e}", f.display())
        });
        cfg.validate()
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
    }
    // The check is live: a misspelt key in one of them would be refused.
    let text = std::fs::read_to_string(&files[0]).unwrap();
    assert!(text.contains("\ndata_dir = "), "{}", files[0].display());
    let bad = text.replacen("\ndata_dir = ", "\ndata_dirr = ", 1);
    let err = toml::from_str::<tracegate::config::Config>(&bad).unwrap_err();
    assert!(err.to_string().contains("data_dirr"), "{err}");
}
