//! The gateway with `[kafka]` is killed with SIGKILL ten times under load from retrying OTLP/HTTP
//! clients and restarted on the same ports each time; the writer keeps running. Every span that
//! ever got a 200 must reach the archive (duplicates are allowed at this layer: a request whose
//! answer was lost in a kill is sent again).

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{Gateway, Load, TestBroker, Writer};

const TOPIC: &str = "tracegate-gwkill";
const KILLS: usize = 10;

#[test]
fn gateway_kill9_ten_times_under_load_loses_no_acknowledged_span() {
    let broker = TestBroker::start(&[(TOPIC, 2)]);
    let gw_dir = common::temp_dir("tg-kgk-gw-");
    let wr_dir = common::temp_dir("tg-kgk-wr-");
    let mut env = broker.env(TOPIC);
    env.extend([
        (
            "TRACEGATE_KAFKA__SESSION_TIMEOUT_MS".to_string(),
            "6000".to_string(),
        ),
        (
            "TRACEGATE_KAFKA__BATCH_MAX_AGE_MS".to_string(),
            "200".to_string(),
        ),
        // Spread the projects' batches over both partitions.
        (
            "TRACEGATE_KAFKA__PARTITION_KEY".to_string(),
            "batch".to_string(),
        ),
    ]);
    let env = common::env_refs(&env);
    let mut gw = Gateway::start_in(gw_dir.path(), &env);
    let mut writer = Writer::start(wr_dir.path(), None, &env);
    let project = common::unique_project("kafka-gwkill");
    let key = gw.create_key(&project);
    let (http, grpc) = (gw.http.to_string(), gw.grpc.to_string());
    let ready = || {
        common::http_client_with_timeout(Duration::from_secs(2))
            .get(format!("{}/readyz", gw.admin_url()))
            .send()
            .map(|r| r.status().as_u16() == 200)
            .unwrap_or(false)
    };
    assert!(
        common::wait_until(Duration::from_secs(20), ready),
        "gateway never ready"
    );

    let started = Instant::now();
    let mut load = Load::start(
        &gw.traces_url(),
        &key,
        "gwkill",
        4,
        20,
        Duration::from_millis(5),
        Duration::from_millis(50),
    );
    let mut acked_between = Vec::new();
    for k in 0..KILLS {
        let before = load.acked();
        let progressed =
            common::wait_until(Duration::from_secs(30), || load.acked() >= before + 10);
        assert!(
            progressed,
            "kill {k}: the load made no progress ({before} acked)"
        );
        std::thread::sleep(Duration::from_millis(300));
        gw.kill9();
        acked_between.push(load.acked() - before);
        std::thread::sleep(Duration::from_millis(100));
        gw = Gateway::start_with_addrs(gw_dir.path(), &http, &grpc, &env);
        assert_eq!(gw.http.to_string(), http, "restarted on another port");
    }
    let before = load.acked();
    assert!(
        common::wait_until(Duration::from_secs(30), || load.acked() >= before + 20),
        "no progress after the last restart"
    );
    load.stop();
    let (acked, failures, retried) = {
        let l = load.log.lock().unwrap();
        (l.acked.len(), l.failures.len(), l.retried)
    };
    eprintln!(
        "[gwkill] {KILLS} kills in {:?}: {acked} requests acked, {failures} failed attempts, \
         {retried} requests retried; acked between kills: {acked_between:?}",
        started.elapsed()
    );
    assert!(
        failures > 0,
        "no request failed across {KILLS} SIGKILLs: the test proved nothing"
    );

    let want = load.acked_span_names();
    let (missing, records) =
        common::wait_for_spans(wr_dir.path(), &project, &want, Duration::from_secs(90));
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged spans missing from the archive ({} records); first: {:?}",
        missing.len(),
        want.len(),
        records.len(),
        &missing[..missing.len().min(5)]
    );
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for r in &records {
        assert_eq!(r["project_id"].as_str(), Some(project.as_str()), "{r}");
        *counts
            .entry(r["span"]["name"].as_str().unwrap())
            .or_default() += 1;
    }
    let dupes = counts.values().filter(|n| **n > 1).count();
    eprintln!(
        "[gwkill] archive: {} records, {} distinct spans, {dupes} spans more than once",
        records.len(),
        counts.len()
    );
    let s = writer.terminate();
    assert!(s.success(), "writer exit {s}");
    let s = gw.terminate();
    assert!(s.success(), "gateway exit {s}");
}
