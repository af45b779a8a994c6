//! Several ClickHouse endpoints (issue 23, item 2): `clickhouse.url` lists two fronts of one
//! engine (TCP forwarders before the chdb front, as two replicas behind their own addresses).
//! Both lose 30 % of their insert answers after the engine committed them, then the first is
//! cut mid-load; every failed insert goes to the other endpoint with the same deduplication
//! token.
//! Every acknowledged span must be in ClickHouse exactly once, and the writer must have moved
//! between endpoints. A negative control without tokens shows that the moved inserts did carry
//! committed blocks (duplicates), so the check can fail.

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::{counts, send_sequenced, ChFront, Gateway, SwitchProxy};

/// Runs the load through two endpoints and returns (acked, count, uniq, failovers).
fn run(db: &str, dedup: bool) -> (u64, u64, u64, f64) {
    let front = ChFront::start(&[]);
    let mut env = common::clickhouse_env(&front, db);
    common::migrate(&env);
    let target = format!("127.0.0.1:{}", front.port).parse().unwrap();
    let (a, b) = (SwitchProxy::start(target), SwitchProxy::start(target));
    for (k, v) in env.iter_mut() {
        if k == "TRACEGATE_CLICKHOUSE__URL" {
            *v = format!("{},{}", a.url(), b.url());
        }
    }
    env.push((
        "TRACEGATE_CLICKHOUSE__INSERT_DEDUPLICATION".into(),
        dedup.to_string(),
    ));
    let gw = Gateway::start(&common::env_refs(&env));
    let project = common::unique_project(db);
    let key = gw.create_key(&project);
    // Answers lost after the commit, on both: each loss sends the insert to the other endpoint
    // (the stream stays where it is until a failure), which already holds the block.
    a.set_answer_loss(0.3);
    b.set_answer_loss(0.3);
    let load = {
        let gw = &gw;
        let key = key.as_str();
        thread::scope(|s| {
            let h = s.spawn(move || {
                send_sequenced(
                    gw,
                    key,
                    "failover",
                    200,
                    100,
                    4,
                    Instant::now() + Duration::from_secs(240),
                )
            });
            // Mid-load, the first endpoint goes away for good (open connections cut).
            let deadline = Instant::now() + Duration::from_secs(60);
            while counts(&front, db, &project).0 < 5_000 && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(100));
            }
            a.set_down(true);
            b.set_answer_loss(0.0);
            h.join().expect("load thread")
        })
    };
    let (acked, _) = load;
    assert_eq!(acked, 20_000);
    let deadline = Instant::now() + Duration::from_secs(90);
    while counts(&front, db, &project).1 < acked && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(200));
    }
    // Let late retries land before counting duplicates.
    thread::sleep(Duration::from_secs(1));
    let (count, uniq) = counts(&front, db, &project);
    let m = gw.metrics();
    let failovers = common::metric_value(&m, "tracegate_clickhouse_failovers_total");
    let up0 = m
        .lines()
        .find(|l| l.starts_with("tracegate_clickhouse_endpoint_up{endpoint=\"0\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
    assert_eq!(up0, Some(0.0), "the cut endpoint is reported down");
    eprintln!(
        "dedup={dedup}: acked {acked}, count {count}, uniq {uniq}, failovers {failovers}, answers cut {}",
        a.cut.load(std::sync::atomic::Ordering::Relaxed) + b.cut.load(std::sync::atomic::Ordering::Relaxed)
    );
    (acked, count, uniq, failovers)
}

#[test]
fn two_endpoints_one_losing_answers_then_cut_nothing_lost_nothing_doubled() {
    let (acked, count, uniq, failovers) = run("failover", true);
    assert!(
        failovers >= 2.0,
        "the writer never moved: the test proves nothing"
    );
    assert_eq!(uniq, acked, "every acknowledged span is in ClickHouse");
    assert_eq!(count, acked, "no span twice");

    // Negative control: the same without deduplication tokens doubles spans.
    let (acked, count, uniq, _) = run("failover_nodedup", false);
    assert_eq!(uniq, acked);
    assert!(
        count > uniq,
        "without tokens the moved inserts must duplicate, or the check above proves nothing"
    );
}
