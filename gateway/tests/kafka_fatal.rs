//! A fatal producer error is recovered without a restart: the test broker answers a Produce
//! request with OUT_OF_ORDER_SEQUENCE_NUMBER, which librdkafka's idempotent producer cannot
//! get past (it fails fatally). The gateway answers the affected requests with a retryable
//! 503, replaces its producers, and takes requests again; every span that got a 200 (clients
//! retrying their refused requests as an exporter does) is archived exactly once.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{Gateway, TestBroker, Writer};

const TOPIC: &str = "tracegate-fatal";

/// Sends request `r` until it gets a 200 (within `by`); returns the statuses it saw.
fn send_until_acked(gw: &Gateway, key: &str, r: u64, by: Instant) -> Vec<u16> {
    let body = common::encode(&common::request_n("fatal", r * 10, 10));
    let client = common::http_client_with_timeout(Duration::from_secs(30));
    let mut seen = Vec::new();
    loop {
        assert!(
            Instant::now() < by,
            "request {r} not acknowledged: {seen:?}"
        );
        let status = common::try_post(
            &client,
            &gw.traces_url(),
            &[
                ("content-type", "application/x-protobuf"),
                ("authorization", &format!("Bearer {key}")),
            ],
            body.clone(),
        )
        .map(|r| r.0)
        .unwrap_or(0);
        seen.push(status);
        if status == 200 {
            return seen;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_fatal_producer_error_is_recovered_without_a_restart_and_loses_nothing() {
    let mut broker = TestBroker::start(&[(TOPIC, 2)]);
    let wr_dir = tempfile::tempdir().unwrap();
    let mut env = broker.env(TOPIC);
    // One producer, so the injected error surely reaches the one that serves the next request.
    env.push(("TRACEGATE_KAFKA__PRODUCERS".into(), "1".into()));
    let env_refs = common::env_refs(&env);
    let mut gw = Gateway::start(&env_refs);
    let mut writer = Writer::start(wr_dir.path(), None, &env_refs);
    let key = gw.create_key("fatal");
    let by = Instant::now() + Duration::from_secs(120);

    // Until the gateway has found the broker, it refuses (503): retried like the rest.
    for r in 0..5 {
        send_until_acked(&gw, &key, r, by);
    }
    broker.cmd("produce-error out_of_order_sequence_number");
    let mut statuses: HashMap<u16, usize> = HashMap::new();
    for r in 5..40 {
        for s in send_until_acked(&gw, &key, r, by) {
            *statuses.entry(s).or_default() += 1;
        }
    }
    // The request that met the error was refused, retryably; after the replacement every
    // request went through.
    assert!(
        statuses.get(&503).copied().unwrap_or(0) >= 1,
        "{statuses:?}"
    );
    assert!(
        statuses.keys().all(|s| *s == 200 || *s == 503),
        "{statuses:?}"
    );
    let m = gw.metrics();
    assert_eq!(
        common::metric_value(&m, "tracegate_kafka_producer_rebuilds_total"),
        1.0,
        "{m}"
    );
    assert!(
        common::metric_value(&m, "tracegate_kafka_delivery_failures_total") >= 1.0,
        "{m}"
    );

    let want: Vec<String> = (0..400).map(|i| format!("fatal-{i}")).collect();
    let (missing, records) =
        common::wait_for_spans(wr_dir.path(), "fatal", &want, Duration::from_secs(90));
    assert!(
        missing.is_empty(),
        "missing: {:?}",
        &missing[..missing.len().min(5)]
    );
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for r in &records {
        *counts
            .entry(r["span"]["name"].as_str().unwrap_or(""))
            .or_default() += 1;
    }
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "archived more than once: {twice:?}");
    assert_eq!(records.len(), 400);

    assert!(gw.terminate().success());
    assert!(writer.terminate().success());
}
