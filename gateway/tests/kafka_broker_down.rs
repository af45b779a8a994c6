//! Broker trouble under load, every hop a real process (gateway with `[kafka]`, test broker,
//! `tracegate write`), with retrying OTLP/HTTP clients:
//!
//! 1. Slow broker (`rtt 1 1000`) with a 256 KiB producer queue: some requests are refused with 503
//!    "queue is full" instead of queueing without bound; the queue never exceeds its bound.
//! 2. Broker down (`down 1`) for `TG_TEST_KAFKA_DOWN_SECS` (default 30, as the issue asks)
//!    under load: clients get 503 + Retry-After (OTLP/HTTP) and UNAVAILABLE + RetryInfo
//!    (OTLP/gRPC), nothing is acknowledged, `/readyz` says 503, the gateway's memory stays within
//!    its bounds; after `up 1` it is ready again and every span that ever got a 200 is archived.

mod common;

use std::time::{Duration, Instant};

use common::{Gateway, Load, TestBroker, Writer};

const TOPIC: &str = "tracegate-down";
const QUEUE_MAX_BYTES: u64 = 256 * 1024;
const MAX_INFLIGHT_BYTES: u64 = 32 * 1024 * 1024;

fn down_secs() -> u64 {
    std::env::var("TG_TEST_KAFKA_DOWN_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30)
}

fn readyz(gw: &Gateway) -> u16 {
    common::http_client_with_timeout(Duration::from_secs(5))
        .get(format!("{}/readyz", gw.admin_url()))
        .send()
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

#[test]
fn slow_then_down_broker_under_load_refuses_with_503_stays_bounded_and_loses_nothing() {
    let down = Duration::from_secs(down_secs());
    let mut broker = TestBroker::start(&[(TOPIC, 2)]);
    let gw_dir = common::temp_dir("tg-kdown-gw-");
    let wr_dir = common::temp_dir("tg-kdown-wr-");
    let mut env = broker.env(TOPIC);
    env.extend([
        (
            "TRACEGATE_KAFKA__QUEUE_MAX_BYTES".to_string(),
            QUEUE_MAX_BYTES.to_string(),
        ),
        (
            "TRACEGATE_KAFKA__MESSAGE_MAX_BYTES".to_string(),
            "65536".to_string(),
        ),
        (
            "TRACEGATE_LIMITS__MAX_REQUEST_BYTES".to_string(),
            "4194304".to_string(),
        ),
        (
            "TRACEGATE_LIMITS__MAX_INFLIGHT_BYTES".to_string(),
            MAX_INFLIGHT_BYTES.to_string(),
        ),
        (
            "TRACEGATE_KAFKA__SESSION_TIMEOUT_MS".to_string(),
            "6000".to_string(),
        ),
        // Requests in flight when the broker goes down wait this long, then get their 503.
        (
            "TRACEGATE_KAFKA__DELIVERY_TIMEOUT_MS".to_string(),
            "3000".to_string(),
        ),
        (
            "TRACEGATE_KAFKA__BATCH_MAX_AGE_MS".to_string(),
            "200".to_string(),
        ),
        // Plain payloads, so the producer queue holds ~60 KB per request as the load below
        // counts on (with "payload_zstd" its similar spans would shrink ~20x).
        (
            "TRACEGATE_KAFKA__COMPRESSION".to_string(),
            "zstd".to_string(),
        ),
    ]);
    let env = common::env_refs(&env);
    let mut gw = Gateway::start_in(gw_dir.path(), &env);
    let mut writer = Writer::start(wr_dir.path(), None, &env);
    let project = common::unique_project("kafka-down");
    let key = gw.create_key(&project);
    assert!(
        common::wait_until(Duration::from_secs(20), || readyz(&gw) == 200),
        "gateway never ready"
    );
    let url = gw.traces_url();
    let queue_metric =
        |gw: &Gateway| common::metric_value(&gw.metrics(), "tracegate_kafka_producer_queue_bytes");

    // --- 1. slow broker: the producer queue bound holds and refuses -------------------------
    broker.cmd("rtt 1 1000");
    let mut blast = Load::start(
        &url,
        &key,
        "slow",
        8,
        600, // ~60 KB per request: 8 in flight exceed the 256 KiB queue
        Duration::ZERO,
        Duration::from_millis(100),
    );
    let mut max_queue = 0.0f64;
    let slow_until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < slow_until {
        max_queue = max_queue.max(queue_metric(&gw));
        std::thread::sleep(Duration::from_millis(100));
    }
    broker.cmd("rtt 1 0");
    common::wait_until(Duration::from_secs(20), || blast.acked() >= 10);
    blast.stop();
    let slow_503 = blast
        .log
        .lock()
        .unwrap()
        .failures
        .iter()
        .filter(|(_, s)| *s == 503)
        .count();
    eprintln!(
        "[kafka-down] slow broker: {} acked, {slow_503} refused with 503, max queue {max_queue} bytes",
        blast.acked()
    );
    assert!(
        slow_503 > 0,
        "a slow broker with a full producer queue must cause 503s"
    );
    assert!(
        max_queue <= QUEUE_MAX_BYTES as f64,
        "producer queue {max_queue} > bound"
    );
    assert!(
        blast.acked() > 0,
        "nothing acknowledged while the broker was slow"
    );

    // --- 2. broker down under load -----------------------------------------------------------
    let mut load = Load::start(
        &url,
        &key,
        "down",
        3,
        20,
        Duration::from_millis(20),
        Duration::from_millis(100),
    );
    assert!(
        common::wait_until(Duration::from_secs(30), || load.acked() >= 30),
        "load made no progress before the outage"
    );
    let rss_before = common::rss_bytes(gw.pid()).expect("gateway RSS");
    let down_at = Instant::now();
    broker.cmd("down 1");
    eprintln!("[kafka-down] broker down for {down:?}");
    let mut max_rss = rss_before;
    let mut saw_not_ready = false;
    let mut grpc_checked = None;
    while down_at.elapsed() < down {
        max_rss = max_rss.max(common::rss_bytes(gw.pid()).unwrap_or(0));
        max_queue = max_queue.max(queue_metric(&gw));
        if readyz(&gw) == 503 {
            saw_not_ready = true;
        }
        if grpc_checked.is_none() && down_at.elapsed() > Duration::from_secs(2) {
            grpc_checked = Some(common::grpc_export(
                &gw,
                &key,
                common::request_n("grpc-while-down", 0, 5),
            ));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let up_at = Instant::now();
    broker.cmd("up 1");
    let ready_again = common::wait_until(Duration::from_secs(20), || readyz(&gw) == 200);
    eprintln!(
        "[kafka-down] broker up; ready again after {:?}",
        up_at.elapsed()
    );
    let acked_at_up = load.acked();
    let progressed =
        common::wait_until(Duration::from_secs(30), || load.acked() >= acked_at_up + 30);
    load.stop();

    let log = load.log.lock().unwrap();
    let quiet_from = down_at + Duration::from_secs(1);
    let acked_while_down = log
        .acked
        .iter()
        .filter(|(_, t)| *t > quiet_from && *t < up_at)
        .count();
    let fails_while_down: Vec<u16> = log
        .failures
        .iter()
        .filter(|(t, _)| *t > quiet_from && *t < up_at)
        .map(|(_, s)| *s)
        .collect();
    let non_503: Vec<_> = fails_while_down
        .iter()
        .filter(|s| **s != 503)
        .take(5)
        .collect();
    eprintln!(
        "[kafka-down] {} acked in total, {} refusals while down, RSS {} → max {} bytes",
        log.acked.len(),
        fails_while_down.len(),
        rss_before,
        max_rss
    );
    drop(log);
    assert!(
        saw_not_ready,
        "/readyz never reported 503 while no broker was reachable"
    );
    assert!(
        ready_again,
        "/readyz did not become 200 again after the broker came back"
    );
    assert!(
        progressed,
        "no request was acknowledged after the broker came back"
    );
    assert!(
        !fails_while_down.is_empty(),
        "no request was refused while the broker was down"
    );
    assert!(
        non_503.is_empty(),
        "while down, answers other than 503: {non_503:?}"
    );
    assert_eq!(
        acked_while_down, 0,
        "requests were acknowledged while the broker was down"
    );
    let (code, retry_info) = grpc_checked.expect("gRPC export while down");
    assert_eq!(code, tonic::Code::Unavailable, "gRPC while down");
    assert!(retry_info, "gRPC UNAVAILABLE without RetryInfo");
    let bound = rss_before + QUEUE_MAX_BYTES + MAX_INFLIGHT_BYTES + 64 * 1024 * 1024;
    assert!(
        max_rss <= bound,
        "gateway RSS {max_rss} exceeded {bound} while the broker was down"
    );
    assert!(max_queue <= QUEUE_MAX_BYTES as f64);

    // Every span that got a 200, before, during or after the trouble, reaches the archive.
    let mut want = blast.acked_span_names();
    want.extend(load.acked_span_names());
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
    let s = writer.terminate();
    assert!(s.success(), "writer exit {s}");
    let s = gw.terminate();
    assert!(s.success(), "gateway exit {s}");
}
